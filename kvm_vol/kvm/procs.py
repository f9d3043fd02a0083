"""Processes and threads (``struct proc *``, ``struct thread *``), libkvm style.

:func:`iter_procs` walks ``allproc`` (modern kernels keep zombies there too;
``zombproc`` is gone) and :func:`iter_threads` a process's ``p_threads``, as
Volatility objects, for plugins that need the objects themselves.

:class:`ProcRecord` / :class:`ThreadRecord` are the kinfo_proc-like records
that :class:`kvm_vol.kvm.kvm.KVM` fills the way the kernel's
``fill_kinfo_proc()`` / ``fill_kinfo_thread()`` do (``sys/kern/kern_proc.c``),
not libkvm's reduced dead-kernel version: the command name is whole (libkvm
cuts it to 18 characters), and start time and controlling terminal are
filled whenever the dump holds them (libkvm leaves them empty on dumps).
"""

import logging
from dataclasses import dataclass, field, fields
from typing import Iterator, List, Optional

from volatility3.framework import exceptions, interfaces, renderers

from kvm_vol import freebsd as F
from kvm_vol.core.amd64 import canonical
from kvm_vol.kvm import queue

vollog = logging.getLogger(__name__)

__all__ = ["ThreadRecord", "ProcRecord", "iter_procs", "iter_threads", "proc_record", "thread_stat",
           "value_or_na"]


@dataclass(slots=True)
class ThreadRecord:
    """A ``struct thread`` as fill_kinfo_thread() sees it."""

    offset: int
    tid: int
    name: str
    state: int  # enum td_states
    inhibitors: int
    oncpu: int
    lastcpu: Optional[int] = None
    stat: int = 0  # ki_stat of this thread (SRUN ... SLOCK)
    priority: Optional[int] = None  # ki_pri.pri_level = td_priority
    wchan: int = 0
    wmesg: Optional[str] = None
    kstack_pages: int = 0


@dataclass(slots=True)
class ProcRecord:
    """A ``struct proc`` with its credentials, job control and memory, as kinfo_proc reports it.

    ``None`` marks a field whose data the dump does not hold (or that the
    kernel leaves empty, e.g. ``tdev`` without a controlling terminal is
    ``None`` where the kernel reports NODEV).
    """

    offset: int
    pid: int
    ppid: int
    comm: str
    p_state: int
    stat: int  # ki_stat: SIDL ... SLOCK, from the first thread
    flags: int
    ruid: Optional[int] = None
    uid: Optional[int] = None  # effective
    svuid: Optional[int] = None
    rgid: Optional[int] = None
    gid: Optional[int] = None  # effective
    svgid: Optional[int] = None
    groups: List[int] = field(default_factory=list)
    threads: List[ThreadRecord] = field(default_factory=list)
    numthreads: int = 0  # p_numthreads
    # job control (p_pgrp, pg_session, s_ttyp)
    pgid: Optional[int] = None
    sid: Optional[int] = None
    login: Optional[str] = None
    tty: Optional[str] = None  # the controlling terminal's device name (si_name), e.g. "pts/0"
    tdev: Optional[int] = None  # ki_tdev: dev2udev(t_dev)
    tpgid: Optional[int] = None  # foreground process group of the terminal (NO_PID if none)
    tsid: Optional[int] = None
    kiflag: int = 0  # KI_CTTY | KI_SLEADER
    # scheduling
    nice: Optional[int] = None
    # times: ki_start = boottime + p_stats->p_start (seconds since the epoch)
    start: Optional[float] = None
    # memory (ki_size bytes, ki_rssize pages)
    vsize: Optional[int] = None
    rssize: Optional[int] = None
    emul: Optional[str] = None  # ki_emul: p_sysent->sv_name
    # pointers kept for getargv/getenvv
    args_ptr: int = 0  # p_args
    vmspace_ptr: int = 0
    sysent_ptr: int = 0
    # the thread this record describes (first thread, or each one with INC_THREAD)
    thread: Optional[ThreadRecord] = None

    def for_thread(self, td: ThreadRecord) -> "ProcRecord":
        """This process's record as seen through thread ``td`` (one KERN_PROC_INC_THREAD row).

        A shallow copy like ``dataclasses.replace(self, thread=td, stat=td.stat)``,
        at a tenth of its cost: fill_kinfo_thread() is per thread, the rest is shared.
        """
        new = _copy_proc(self)
        new.thread = td
        new.stat = td.stat
        return new

    @property
    def stat_name(self) -> str:
        return F.KI_STAT_NAMES.get(self.stat, str(self.stat))

    @property
    def tid(self) -> Optional[int]:
        return self.thread.tid if self.thread else None

    @property
    def wmesg(self) -> Optional[str]:
        return self.thread.wmesg if self.thread else None

    @property
    def wchan(self) -> Optional[int]:
        return self.thread.wchan if self.thread else None

    @property
    def priority(self) -> Optional[int]:
        return self.thread.priority if self.thread else None


def _slot_copier(cls):
    """A shallow-copy function for a slotted dataclass, generated the way dataclasses
    generates ``__init__`` (straight-line attribute copies: a fifth of the cost of a
    loop over the slots, and copy.copy() goes through __reduce_ex__)."""
    names = [f.name for f in fields(cls)]
    lines = [f"def copy(self, _new=object.__new__, _cls=_cls):", "    new = _new(_cls)"]
    lines += [f"    new.{name} = self.{name}" for name in names]
    lines.append("    return new")
    namespace = {"_cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from the dataclass's own field names
    return namespace["copy"]


# Records are slotted: 10^5 of them per getprocs(), and a slotted record is a
# third of the memory of one with a __dict__ (and quicker to build).
_copy_proc = _slot_copier(ProcRecord)


def iter_procs(context: interfaces.context.ContextInterface, kernel_module_name: str) -> Iterator:
    """Every ``struct proc`` on ``allproc``, newest first (the kernel's order), as objects."""
    kernel = context.modules[kernel_module_name]
    head = kernel.get_symbol("allproc").address
    # LIST_HEAD(proclist, proc) is one pointer: lh_first.  Read it as a
    # pointer to proc so ISFs without the proclist type work as well.
    try:
        first = kernel.object(object_type="pointer", offset=head, subtype=kernel.get_type("proc"))
    except exceptions.InvalidAddressException as exc:  # as swtailq's page was in the fuzzer's damaged bitmaps
        vollog.warning(f"allproc at {canonical(kernel.offset + head):#x} is unreadable ({exc}); no processes listed")
        return
    yield from queue.walk(first, "p_list", "LIST", name="allproc")


def iter_threads(proc) -> Iterator:
    """Every ``struct thread`` on ``p_threads``, in creation order, as objects."""
    yield from queue.walk(proc.p_threads.tqh_first, "td_plist", "TAILQ",
                          name=f"p_threads of proc {proc.vol.offset:#x}")


_RUNNABLE = frozenset((F.TDS_RUNQ, F.TDS_CAN_RUN, F.TDS_RUNNING))


def thread_stat(p_state: int, p_flag: int, td_state: Optional[int] = None, inhibitors: int = 0) -> int:
    """ki_stat as fill_kinfo_thread() derives it (P_SHOULDSTOP before sleeping).

    ``td_state``/``inhibitors`` are the thread's td_state and td_inhibitors;
    ``td_state=None`` means the process has no thread (ki_stat SIDL, as the
    kernel reports a process caught before its first thread exists).
    """
    if p_state == F.PRS_ZOMBIE:
        return F.SZOMB
    if p_state != F.PRS_NORMAL or td_state is None:
        return F.SIDL
    if td_state in _RUNNABLE:
        return F.SRUN
    if p_flag & F.P_STOPPED:
        return F.SSTOP
    if inhibitors & F.TDI_SLEEPING:
        return F.SSLEEP
    if inhibitors & F.TDI_LOCK:
        return F.SLOCK
    return F.SWAIT


def proc_record(proc) -> Optional[ProcRecord]:
    """The record of one ``struct proc`` object (see :meth:`kvm_vol.kvm.kvm.KVM.proc`)."""
    from kvm_vol.kvm.kvm import KVM

    kvm = KVM.for_layer(proc._context, proc.vol.layer_name, proc.vol.type_name.split("!")[0])
    return kvm.proc(proc.vol.offset)


def value_or_na(value):
    """A Volatility cell: the value, or NotAvailableValue for None."""
    return renderers.NotAvailableValue() if value is None else value
