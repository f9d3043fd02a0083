"""Processes and threads (``struct proc *``, ``struct thread *``), libkvm style.

:func:`iter_procs` walks ``allproc`` (modern kernels keep zombies there too;
``zombproc`` is gone), :func:`iter_threads` a process's ``p_threads``, and
:func:`proc_record` fills the kinfo_proc-like fields the way the kernel's
``fill_kinfo_proc()`` does (not libkvm's reduced dead-kernel version: the
command name is whole, not cut to 18 characters).
"""

from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from volatility3.framework import exceptions, interfaces, renderers

from kvm_vol import freebsd as F
from kvm_vol.kvm import queue

__all__ = ["ThreadRecord", "ProcRecord", "iter_procs", "iter_threads", "proc_record", "thread_stat"]


@dataclass
class ThreadRecord:
    """A ``struct thread`` as kinfo_proc's thread part sees it."""

    offset: int
    tid: int
    name: str
    state: int  # enum td_states
    inhibitors: int
    oncpu: int


@dataclass
class ProcRecord:
    """A ``struct proc`` with its credentials, as kvm_getprocs() reports it."""

    offset: int
    pid: int
    ppid: int
    comm: str
    p_state: int
    stat: int  # ki_stat: SIDL ... SLOCK
    flags: int
    ruid: Optional[int] = None
    uid: Optional[int] = None  # effective
    svuid: Optional[int] = None
    rgid: Optional[int] = None
    gid: Optional[int] = None  # effective
    svgid: Optional[int] = None
    groups: List[int] = field(default_factory=list)
    threads: List[ThreadRecord] = field(default_factory=list)

    @property
    def stat_name(self) -> str:
        return F.KI_STAT_NAMES.get(self.stat, str(self.stat))


def _string(obj, length: int) -> str:
    return obj.cast("string", max_length=length, errors="replace")


def iter_procs(context: interfaces.context.ContextInterface, kernel_module_name: str) -> Iterator:
    """Every ``struct proc`` on ``allproc``, newest first (the kernel's order)."""
    kernel = context.modules[kernel_module_name]
    head = kernel.get_symbol("allproc").address
    # LIST_HEAD(proclist, proc) is one pointer: lh_first.  Read it as a
    # pointer to proc so ISFs without the proclist type work as well.
    first = kernel.object(object_type="pointer", offset=head, subtype=kernel.get_type("proc"))
    yield from queue.walk(first, "p_list", "LIST", name="allproc")


def iter_threads(proc) -> Iterator:
    """Every ``struct thread`` on ``p_threads``, in creation order."""
    yield from queue.walk(proc.p_threads.tqh_first, "td_plist", "TAILQ",
                          name=f"p_threads of proc {proc.vol.offset:#x}")


def thread_record(td) -> ThreadRecord:
    return ThreadRecord(
        offset=td.vol.offset, tid=int(td.td_tid), name=_string(td.td_name, F.MAXCOMLEN + 1),
        state=int(td.td_state), inhibitors=int(td.td_inhibitors), oncpu=int(td.td_oncpu),
    )


def thread_stat(p_state: int, p_flag: int, td: Optional[ThreadRecord]) -> int:
    """ki_stat as fill_kinfo_proc()/fill_kinfo_thread() derive it."""
    if p_state == F.PRS_ZOMBIE:
        return F.SZOMB
    if p_state != F.PRS_NORMAL or td is None:
        return F.SIDL
    if td.state in (F.TDS_RUNQ, F.TDS_CAN_RUN, F.TDS_RUNNING):
        return F.SRUN
    if p_flag & F.P_STOPPED:
        return F.SSTOP
    if td.inhibitors & F.TDI_SLEEPING:
        return F.SSLEEP
    if td.inhibitors & F.TDI_LOCK:
        return F.SLOCK
    return F.SWAIT


def _credentials(rec: ProcRecord, proc) -> None:
    """ucred fields; 14.x keeps the effective gid in cr_groups[0], 15.0 in cr_gid."""
    try:
        cred = proc.p_ucred.dereference()
        rec.uid, rec.ruid, rec.svuid = int(cred.cr_uid), int(cred.cr_ruid), int(cred.cr_svuid)
        rec.rgid, rec.svgid = int(cred.cr_rgid), int(cred.cr_svgid)
        ngroups = max(0, min(int(cred.cr_ngroups), int(cred.cr_agroups), 65536))
        groups_ptr = cred.cr_groups
        groups = [int(g) for g in groups_ptr.dereference().cast(
            "array", count=ngroups, subtype=groups_ptr.vol.subtype)] if ngroups else []
        if cred.has_member("cr_gid"):
            rec.gid = int(cred.cr_gid)
            rec.groups = [rec.gid] + groups
        else:
            rec.gid = groups[0] if groups else None
            rec.groups = groups
    except exceptions.InvalidAddressException:
        pass


def proc_record(proc) -> ProcRecord:
    """The kinfo_proc-like record of one ``struct proc`` (missing parts left None)."""
    pptr = int(proc.p_pptr)
    ppid = 0
    if pptr:
        try:
            ppid = int(proc.p_pptr.dereference().p_pid)
        except exceptions.InvalidAddressException:
            ppid = -1
    rec = ProcRecord(
        offset=proc.vol.offset, pid=int(proc.p_pid), ppid=ppid,
        comm=_string(proc.p_comm, F.MAXCOMLEN + 1), p_state=int(proc.p_state), stat=0,
        flags=int(proc.p_flag) & 0xFFFFFFFF,
    )
    _credentials(rec, proc)
    rec.threads = [thread_record(td) for td in iter_threads(proc)]
    rec.stat = thread_stat(rec.p_state, rec.flags, rec.threads[0] if rec.threads else None)
    return rec


def value_or_na(value):
    """A Volatility cell: the value, or NotAvailableValue for None."""
    return renderers.NotAvailableValue() if value is None else value
