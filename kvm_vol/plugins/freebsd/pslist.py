"""``freebsd.pslist``: the processes on ``allproc``, like ``ps -ax`` on a dump."""

from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.kvm import procs
from kvm_vol.symbols.volsym import kvm_plugin


@kvm_plugin
class PsList(interfaces.plugins.PluginInterface):
    """Lists the processes of a FreeBSD kernel (allproc), with threads and credentials."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(name="kernel", description="FreeBSD kernel",
                                           architectures=["Intel64"]),
            requirements.ListRequirement(name="pid", element_type=int, optional=True,
                                         description="Process IDs to include (all others are excluded)"),
        ]

    @classmethod
    def list_processes(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                       pids=None) -> Iterator[procs.ProcRecord]:
        """ProcRecords of the processes on allproc, optionally only those in ``pids``."""
        wanted = set(pids or [])
        for proc in procs.iter_procs(context, kernel_module_name):
            rec = procs.proc_record(proc)
            if not wanted or rec.pid in wanted:
                yield rec

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        na = procs.value_or_na
        for rec in self.list_processes(self.context, self.config["kernel"], self.config.get("pid")):
            yield 0, (
                format_hints.Hex(rec.offset), rec.pid, rec.ppid, rec.comm, rec.stat_name,
                na(rec.ruid), na(rec.rgid), len(rec.threads),
            )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("OFFSET (V)", format_hints.Hex), ("PID", int), ("PPID", int), ("COMM", str),
             ("STATE", str), ("UID", int), ("GID", int), ("THREADS", int)],
            self._generator(),
        )
