"""The kernel module a reader works on: a Volatility module name or the module itself.

Plugins hold the module's *name* (``self.config["kernel"]``); the process
API (:class:`kvm_vol.kvm.kvm.KVM`) holds a layer and a symbol table and
makes an unregistered module from them.  The readers in this package accept
either.
"""

from typing import Union

from volatility3.framework import interfaces

KernelRef = Union[str, interfaces.context.ModuleInterface]


def kernel_module(context: interfaces.context.ContextInterface, kernel: KernelRef) -> interfaces.context.ModuleInterface:
    return context.modules[kernel] if isinstance(kernel, str) else kernel
