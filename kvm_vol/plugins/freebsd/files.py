"""``freebsd.files``: every open file of every process, like ``procstat -f`` / ``fstat``."""

from typing import Dict, Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement, pid_requirement
from kvm_vol.kvm import files, procs
from kvm_vol.symbols.volsym import kvm_plugin


@kvm_plugin
class Files(interfaces.plugins.PluginInterface):
    """Open files (descriptors, trace, text, cwd, root, jail, ctty) with paths from the name cache.

    ``--mmap`` also lists memory-mapped files, like ``fstat -m``.
    """

    _required_framework_version = (2, 0, 0)
    _version = (1, 1, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            pid_requirement(),
            requirements.BooleanRequirement(
                name="mmap", default=False, optional=True,
                description="Also list memory-mapped files (vnode-backed vm_map entries, FD 'mmap'), like fstat -m"),
        ]

    @classmethod
    def list_files(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                   pids=None, mmapped: bool = False) -> Iterator[Tuple[procs.ProcRecord, List[files.FileRecord], Dict[int, tuple]]]:
        """(process, its files, pipe owners) for every process on allproc, or those in ``pids``.

        All processes are read even with ``pids``, because a pipe's other end
        is named by the (pid, fd) that holds it, wherever that is.
        ``mmapped`` adds each process's memory-mapped files after its descriptors.
        """
        reader = files.Reader(context, kernel_module_name)
        wanted = set(pids or [])
        table = []
        owners: Dict[int, tuple] = {}
        for proc in procs.iter_procs(context, kernel_module_name):
            rec = procs.proc_record(proc)
            recs = reader.getfiles(proc, mmapped)
            for f in recs:
                if f.type == "PIPE" and f.data and f.data not in owners:
                    owners[f.data] = (rec.pid, f.fd)
            table.append((rec, recs))
        for rec, recs in table:
            if not wanted or rec.pid in wanted:
                yield rec, recs, owners

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        na = renderers.NotApplicableValue
        for proc, recs, owners in self.list_files(self.context, self.config["kernel"], self.config.get("pid"),
                                                 bool(self.config.get("mmap"))):
            for f in recs:
                details = files.pipe_details(f, owners) if f.type == "PIPE" and f.data else f.details
                yield 0, (
                    proc.pid, proc.comm, f.fd, f.type, files.flag_string(f.flags),
                    na() if f.offset is None else f.offset,
                    na() if f.vtype is None else f.vtype,
                    renderers.NotAvailableValue() if f.path is None else f.path,
                    details,
                )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("PID", int), ("COMM", str), ("FD", str), ("TYPE", str), ("FLAGS", str), ("OFFSET", int),
             ("VTYPE", str), ("Path", str), ("DETAILS", str)],
            self._generator(),
        )
