"""``freebsd.psenv``: each process's environment, as ``kern.proc.env`` would return it.

The environment is only on the process's user stack (there is no kernel
copy), so minidumps never have it; a process without one gets a single row
whose KEY and VALUE say so (reason logged with ``-v``).
"""

from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement, pid_requirement
from kvm_vol.kvm.kvm import KVM
from volatility3.plugins.freebsd.psargs import missing
from volatility3.plugins.freebsd.pslist import PsList
from kvm_vol.symbols.volsym import kvm_plugin


@kvm_plugin
class PsEnv(interfaces.plugins.PluginInterface):
    """Lists FreeBSD process environment variables (from the user stack's ps_strings)."""

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
            result = kvm.env(rec)
            if result.values is None:
                cell = missing(rec, result)
                yield 0, (rec.pid, rec.ppid, rec.comm, cell, cell)
                continue
            for entry in result.values:
                key, sep, value = entry.partition("=")
                yield 0, (rec.pid, rec.ppid, rec.comm, key, value if sep else renderers.NotAvailableValue())

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("PID", int), ("PPID", int), ("COMM", str), ("KEY", str), ("VALUE", str)],
            self._generator(),
        )
