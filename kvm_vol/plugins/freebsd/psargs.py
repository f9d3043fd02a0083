"""``freebsd.psargs``: each process's command line, as ``kern.proc.args`` would return it.

The kernel's algorithm (sysctl_kern_proc_args): the cached ``p_args`` first,
else, for a live user process, the argv its user stack's ``ps_strings``
points to.  libkvm cannot do this on dumps at all.  Minidumps hold no user
pages, so there only ``p_args`` (short command lines) is available; the
reason for every missing command line is logged (``-v``).
"""

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement, pid_requirement
from kvm_vol import freebsd as F
from kvm_vol.kvm.kvm import KVM
from volatility3.plugins.freebsd.pslist import PsList
from kvm_vol.symbols.volsym import kvm_plugin

vollog = logging.getLogger(__name__)


def missing(rec, result):
    """A cell for absent data: NotAvailable for kernel processes (they have none), else Unreadable."""
    vollog.info(f"pid {rec.pid} ({rec.comm}): {result.reason}")
    if rec.flags & F.P_SYSTEM:
        return renderers.NotAvailableValue()
    return renderers.UnreadableValue()


@kvm_plugin
class PsArgs(interfaces.plugins.PluginInterface):
    """Lists FreeBSD process command lines (p_args, else the user stack's ps_strings)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            requirements.VersionRequirement(name="pslist", component=PsList, version=(2, 0, 0)),
            pid_requirement(),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        kvm = KVM(self.context, self.config["kernel"])
        for rec in PsList.list_processes(self.context, self.config["kernel"], self.config.get("pid")):
            result = kvm.args(rec)
            if result.values is None:
                args, source = missing(rec, result), renderers.NotAvailableValue()
            else:
                args, source = " ".join(result.values), result.source
            yield 0, (rec.pid, rec.ppid, rec.comm, args, source)

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("PID", int), ("PPID", int), ("COMM", str), ("ARGS", str), ("SOURCE", str)],
            self._generator(),
        )
