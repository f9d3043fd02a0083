"""``freebsd.pslist``: the processes on ``allproc``, like ``ps -axlww -M vmcore``, with kernel semantics."""

import datetime
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement, offset_mask, pid_requirement
from kvm_vol import freebsd as F
from kvm_vol.kvm import procs
from kvm_vol.kvm.kvm import KVM
from kvm_vol.symbols.volsym import kvm_plugin



def tty_argument(value: str):
    """``--tty`` takes a device name (``pts/0``, ``/dev/ttyv0``) or a dev_t number (``0x86``)."""
    try:
        return int(value, 0)
    except ValueError:
        return value


def creation_time(rec: procs.ProcRecord):
    """ki_start as an aware UTC datetime; NotAvailableValue if unknown, UnreadableValue if out of range."""
    if rec.start is None:
        return renderers.NotAvailableValue()
    when = F.utc_time(rec.start)
    return renderers.UnreadableValue() if when is None else when


@kvm_plugin
class PsList(interfaces.plugins.PluginInterface):
    """Lists the processes of a FreeBSD kernel (allproc) as kvm_getprocs() reports them."""

    _required_framework_version = (2, 0, 0)
    _version = (2, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            pid_requirement(),
            requirements.BooleanRequirement(name="threads", default=False, optional=True,
                                            description="One row per thread (KERN_PROC_INC_THREAD)"),
            requirements.IntRequirement(name="uid", optional=True,
                                        description="Only processes with this effective uid (KERN_PROC_UID)"),
            requirements.IntRequirement(name="ruid", optional=True,
                                        description="Only processes with this real uid (KERN_PROC_RUID)"),
            requirements.IntRequirement(name="pgrp", optional=True,
                                        description="Only processes in this process group (KERN_PROC_PGRP)"),
            requirements.IntRequirement(name="session", optional=True,
                                        description="Only processes in this session (KERN_PROC_SESSION)"),
            requirements.StringRequirement(name="tty", optional=True,
                                           description="Only processes with this controlling terminal, "
                                                       "a name (pts/0) or dev_t (KERN_PROC_TTY)"),
        ]

    @classmethod
    def filters(cls, config) -> List[Tuple[int, object]]:
        """The KERN_PROC ops (and arguments) the plugin options ask for; all must match."""
        wanted = []
        for key, op in (("uid", F.KERN_PROC_UID), ("ruid", F.KERN_PROC_RUID), ("pgrp", F.KERN_PROC_PGRP),
                        ("session", F.KERN_PROC_SESSION)):
            if config.get(key) is not None:
                wanted.append((op, config[key]))
        if config.get("tty"):
            wanted.append((F.KERN_PROC_TTY, tty_argument(config["tty"])))
        return wanted

    @classmethod
    def list_processes(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                       pids=None, threads: bool = False,
                       filters: Optional[List[Tuple[int, object]]] = None) -> Iterator[procs.ProcRecord]:
        """Records of the processes on allproc (one per thread with ``threads``), filtered."""
        kvm = KVM(context, kernel_module_name)
        wanted = set(pids or [])
        op = F.KERN_PROC_PROC | (F.KERN_PROC_INC_THREAD if threads else 0)
        for rec in kvm.iter_getprocs(op):
            if wanted and rec.pid not in wanted:
                continue
            if all(kvm.matches(rec, fop, arg) for fop, arg in (filters or [])):
                yield rec

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        na = procs.value_or_na
        threads = self.config.get("threads")
        mask = offset_mask(self.context, self.config["kernel"])
        for rec in self.list_processes(self.context, self.config["kernel"], self.config.get("pid"),
                                       threads, self.filters(self.config)):
            comm = rec.thread.name if threads and rec.thread else rec.comm
            yield 0, (
                format_hints.Hex(rec.offset & mask), rec.pid, na(rec.tid), rec.ppid, comm,
                na(rec.ruid), na(rec.rgid), na(rec.uid), na(rec.gid), creation_time(rec), rec.stat_name,
                len(rec.threads),
            )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("OFFSET (V)", format_hints.Hex), ("PID", int), ("TID", int), ("PPID", int), ("COMM", str),
             ("UID", int), ("GID", int), ("EUID", int), ("EGID", int), ("CREATION TIME", datetime.datetime),
             ("STATE", str), ("THREADS", int)],
            self._generator(),
        )
