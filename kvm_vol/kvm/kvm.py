"""``KVM``: libkvm's process API over a Volatility kernel layer.

:meth:`KVM.getprocs` is ``kvm_getprocs(3)`` with the kernel's own semantics
(``sysctl_kern_proc()`` / ``fill_kinfo_proc()`` in ``sys/kern/kern_proc.c``):
the ops KERN_PROC_ALL, PID, PGRP, SESSION, TTY, UID, RUID, RGID, GID and PROC,
with KERN_PROC_INC_THREAD giving one record per thread (KERN_PROC_ALL always
does, as in the kernel).  Processes in state PRS_NEW are skipped, as both the
kernel (``proc_iterate()``) and libkvm skip them.

:meth:`KVM.getargv` / :meth:`KVM.getenvv` re-implement what
``sysctl_kern_proc_args()`` / ``get_ps_strings()`` do, because libkvm refuses
them on dumps: the cached ``p_args`` first, then the process's user stack
through its own page tables.  When the data is not there (minidumps hold no
user pages; kernel processes have no user space) they return ``None`` and
:meth:`KVM.geterr` says exactly why, like ``kvm_geterr()``.

Reads go through :mod:`kvm_vol.kvm.kmem` (whole structs, cached pages), which
is what makes ~10^5 processes per second possible in Python.
"""

import functools
import gc
import logging
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces

from kvm_vol import freebsd as F
from kvm_vol.core import amd64 as A
from kvm_vol.kvm import queue
from kvm_vol.core.amd64 import canonical
from kvm_vol.kvm.kmem import KernelMemory, StructReader
from kvm_vol.kvm.procs import ProcRecord, ThreadRecord, thread_stat
from kvm_vol.kvm.sysapi import SystemAPI

vollog = logging.getLogger(__name__)

__all__ = ["KVM", "ArgsResult"]

#: Largest pidhash (mask) walked; PID_MAX is 99999, hashinit() sizes to maxproc.
_PIDHASH_LIMIT = 1 << 22
#: Most threads walked per process (kern.threads.max_threads_per_proc defaults to 1500).
_THREADS_LIMIT = 1 << 17

_PROC_FIELDS = {
    "next": "p_list.le_next", "hash_next": "p_hash.le_next", "threads": "p_threads.tqh_first",
    "ucred": "p_ucred", "pptr": "p_pptr", "oppid": "p_oppid", "pid": "p_pid", "comm": "p_comm",
    "state": "p_state", "flag": "p_flag", "nice": "p_nice", "pgrp": "p_pgrp", "stats": "p_stats",
    "args": "p_args", "vmspace": "p_vmspace", "sysent": "p_sysent", "numthreads": "p_numthreads",
}
_THREAD_FIELDS = {
    "tid": "td_tid", "next": "td_plist.tqe_next", "name": "td_name", "state": "td_state",
    "inhibitors": "td_inhibitors", "oncpu": "td_oncpu", "lastcpu": "td_lastcpu", "wchan": "td_wchan",
    "wmesg": "td_wmesg", "priority": "td_priority", "kstack_pages": "td_kstack_pages",
}
_UCRED_FIELDS = {
    "uid": "cr_uid", "ruid": "cr_ruid", "svuid": "cr_svuid", "rgid": "cr_rgid", "svgid": "cr_svgid",
    "gid": "cr_gid", "ngroups": "cr_ngroups", "agroups": "cr_agroups", "groups": "cr_groups",
}
_PGRP_FIELDS = {"id": "pg_id", "session": "pg_session"}
_SESSION_FIELDS = {"sid": "s_sid", "leader": "s_leader", "ttyvp": "s_ttyvp", "ttyp": "s_ttyp",
                   "login": "s_login"}
_TTY_FIELDS = {"pgrp": "t_pgrp", "session": "t_session", "dev": "t_dev"}
_VMSPACE_FIELDS = {
    "size": "vm_map.size", "resident": "vm_pmap.pm_stats.resident_count", "stacktop": "vm_stacktop",
}  # the page-table root of vm_pmap is the architecture's business (kvm_vol.arch: vmspace_fields)
_SYSENT_FIELDS = {"name": "sv_name", "flags": "sv_flags", "psstrings": "sv_psstrings",
                  "psstringssz": "sv_psstringssz"}
_PSTATS_FIELDS = {"sec": "p_start.tv_sec", "usec": "p_start.tv_usec"}
#: struct codes of unsigned integers by size (pointers: the kernel's sizeof(void *)).
_UINT_CODES = {4: "I", 8: "Q"}
_PS_STRINGS_FIELDS = {"argv": "ps_argvstr", "nargv": "ps_nargvstr", "envv": "ps_envstr", "nenv": "ps_nenvstr"}

_OPS = {F.KERN_PROC_ALL, F.KERN_PROC_PID, F.KERN_PROC_PGRP, F.KERN_PROC_SESSION, F.KERN_PROC_TTY,
        F.KERN_PROC_UID, F.KERN_PROC_RUID, F.KERN_PROC_PROC, F.KERN_PROC_RGID, F.KERN_PROC_GID}


@dataclass
class ArgsResult:
    """What getargv/getenvv found: the strings, where from, or why nothing."""

    values: Optional[List[str]]
    source: Optional[str] = None  # "p_args" or "ps_strings"
    reason: Optional[str] = None  # why values is None


@functools.lru_cache(maxsize=64)
def _gid_array(n: int) -> struct.Struct:
    """``gid_t[n]`` (gid_t is a 32-bit unsigned int on every FreeBSD architecture)."""
    return struct.Struct(f"<{n}I")


def _text(raw: Optional[bytes]) -> Optional[str]:
    """A C string (a char array cut at its first NUL) as text."""
    return None if raw is None else raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


class KVM(SystemAPI):  # getloadavg, getcptime, getswapinfo, getfiles, getmsgbuf (kvm_vol.kvm.sysapi)
    """A libkvm-like handle on one FreeBSD kernel in a Volatility context."""

    _instances: Dict[Tuple[int, str, str], "KVM"] = {}

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module_name: str):
        module = context.modules[kernel_module_name]
        self._setup(context, module.layer_name, module.symbol_table_name)

    @classmethod
    def for_layer(cls, context, layer_name: str, symbol_table: str) -> "KVM":
        """A (cached) handle for a kernel layer and its symbol table."""
        key = (id(context), layer_name, symbol_table)
        kvm = cls._instances.get(key)
        if kvm is None:
            kvm = cls.__new__(cls)
            kvm._setup(context, layer_name, symbol_table)
            cls._instances[key] = kvm
        return kvm

    @classmethod
    def from_handle(cls, handle) -> "KVM":
        """The process API on a :func:`kvm_vol.kvm.open` handle (its context and kernel module)."""
        return cls(handle.context, handle.module_name)

    @classmethod
    def open(cls, path: str) -> "KVM":
        """Open a dump file the way ``vol -f`` does (Volatility's automagic) and return a handle."""
        import os
        from urllib.request import pathname2url

        import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
        from volatility3.framework import automagic, contexts, plugins
        from volatility3.framework.automagic import stacker
        from volatility3.plugins.freebsd.pslist import PsList

        context = contexts.Context()
        context.config["automagic.LayerStacker.single_location"] = "file:" + pathname2url(os.path.abspath(path))
        # As `vol` does: only the stackers that do not exclude FreeBSD plugins.  Without this
        # the Mac stacker (which skips only Intel layers) scans a whole AArch64 kernel space.
        context.config["automagic.LayerStacker.stackers"] = stacker.choose_os_stackers(PsList)
        chosen = automagic.choose_automagic(automagic.available(context), PsList)
        plugin = plugins.construct_plugin(context, chosen, PsList, "plugins", None, None)
        return cls(context, plugin.config["kernel"])

    def _setup(self, context, layer_name: str, symbol_table: str) -> None:
        self.context = context
        self.layer_name = layer_name
        self.symbol_table = symbol_table
        self.table = context.symbol_space[symbol_table]
        self._types = set(self.table.types)
        self._symbols = set(self.table.symbols)
        self.mem = KernelMemory(context, layer_name, ptr_size=self.table.get_type("pointer").size)
        self._err = ""
        self._readers: Dict[str, StructReader] = {}
        self._cache: Dict[Tuple[str, int], object] = {}
        self._proc_layers: Dict[tuple, str] = {}  # the arch's layer config overrides -> layer name
        self._boottime: Optional[float] = None
        self._boottime_known = False
        self._cdev_priv = None  # (offset of cdp_c, offset of cdp_inode) when the ISF has it
        if self._has_type("cdev_priv"):
            members = self.table.get_type("cdev_priv").vol.members
            if "cdp_c" in members and "cdp_inode" in members:
                self._cdev_priv = (members["cdp_c"][0], members["cdp_inode"][0])

    def _has_type(self, name: str) -> bool:
        return name in self._types

    # ------------------------------------------------------------------
    def geterr(self) -> str:
        """Why the last getargv/getenvv returned nothing (kvm_geterr())."""
        return self._err

    # -- kvm_nlist, kvm_read_zpcpu, kvm_counter_u64_fetch (kvm_vol.kvm.nlist) --
    def _nlister(self):
        nl = getattr(self, "_nl", None)
        if nl is None:
            from kvm_vol.kvm.nlist import KernelNlist

            nl = self._nl = KernelNlist(self.context, self.layer_name, self.symbol_table)
        return nl

    def nlist(self, names) -> list:
        """``kvm_nlist``: one ``NlistEntry(name, symbol, value, relocation)`` per name (vnet/dpcpu relocated)."""
        return self._nlister().nlist(list(names))

    def read_zpcpu(self, base: int, size: int, cpu: int) -> Optional[bytes]:
        """``kvm_read_zpcpu``: CPU ``cpu``'s copy of a UMA per-CPU allocation (None if unreadable)."""
        return self._nlister().read_zpcpu(base, size, cpu)

    def counter_u64_fetch(self, base: int) -> Optional[int]:
        """``kvm_counter_u64_fetch``: a counter(9) summed over CPUs (None, not 0, if unreadable)."""
        return self._nlister().counter_u64_fetch(base)

    def _reader(self, type_name: str, fields: Dict[str, str]) -> StructReader:
        reader = self._readers.get(type_name)
        if reader is None:
            reader = self._readers[type_name] = StructReader(self.context, self.symbol_table, type_name, fields)
        return reader

    def _symbol(self, name: str) -> Optional[int]:
        if name not in self._symbols:
            return None
        return canonical(self.table.get_symbol(name).address)

    def _c_int(self, va: int, type_name: str, signed: bool) -> int:
        """The C integer of base type ``type_name`` (``long``, ``int`` ...) at ``va``, sized by the symbol table.

        ``long`` is 4 bytes on i386 and 8 on LP64 kernels; the table says which.
        """
        size = self.table.get_type(type_name).size
        return int.from_bytes(self.mem.read(va, size), "little", signed=signed)

    def _arg_max(self) -> int:
        """The kernel's ARG_MAX: 512 KiB, or 256 KiB on an ILP32 kernel (i386), whatever the process's ABI."""
        return F.ARG_MAX_ILP32 if self.mem.ptr_size == 4 else F.ARG_MAX_LP64

    def _time_t(self, va: int) -> int:
        """A ``time_t`` global: the size of ``timeval.tv_sec`` (4 bytes on i386, the one 32-bit time_t)."""
        if self._has_type("timeval"):
            size = self.table.get_type("timeval").vol.members["tv_sec"][1].size
        else:  # time_t is a long wherever it is not i386's int
            size = self.table.get_type("long").size
        return int.from_bytes(self.mem.read(va, size), "little", signed=True)

    def _read_cached(self, kind: str, va: int, fields: Dict[str, str]):
        """A struct shared by many processes (ucred, pgrp, session ...), read once."""
        key = (kind, va)
        found = self._cache.get(key)
        if found is None:
            found = self._reader(kind, fields).read(self.mem, va)
            self._cache[key] = found
        return found

    # ------------------------------------------------------------------
    def boottime(self) -> Optional[float]:
        """The boot time (seconds since the epoch) that ki_start is relative to.

        Modern kernels have no ``boottime`` variable: getboottime() reads
        ``timehands->th_boottime`` (a bintime; kern_tc.c).  With DWARF for
        kern_tc.c that is read directly; otherwise ``time_second -
        time_uptime`` gives it to within a second, which is what type packs
        (which cannot describe kern_tc.c's private struct timehands) allow.
        """
        if self._boottime_known:
            return self._boottime
        self._boottime_known = True
        try:
            th = self._symbol("timehands")
            if th is not None and self._has_type("timehands"):
                bt = self._reader("timehands", {"sec": "th_boottime.sec", "frac": "th_boottime.frac"})
                fields = bt.read(self.mem, self.mem.ptr(th))
                if fields.sec is not None:
                    self._boottime = fields.sec + (fields.frac or 0) / 2.0 ** 64
                    return self._boottime
            second, uptime = self._symbol("time_second"), self._symbol("time_uptime")
            if second is not None and uptime is not None:
                now, up = self._time_t(second), self._time_t(uptime)
                if now > 0 and 0 <= up <= now:
                    self._boottime = float(now - up)
        except exceptions.InvalidAddressException:
            self._boottime = None
        return self._boottime

    # ------------------------------------------------------------------
    def _load_proc(self, va: int):
        fields = self._reader("proc", _PROC_FIELDS).read(self.mem, va)
        return fields, fields.next or 0

    def iter_proc_addresses(self) -> Iterator[Tuple[int, dict]]:
        """``(address, proc fields)`` along allproc, bounded and cycle-safe."""
        head = self._symbol("allproc")
        if head is None:
            self._err = "allproc: no such symbol"
            return
        try:
            first = canonical(self.mem.ptr(head))
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"allproc head unreadable: {exc}")
            return
        for va, (fields, _next) in queue.walk_addresses(self._load_proc, first, name="allproc"):
            yield va, fields

    def _wmesg(self, ptr: int) -> Optional[str]:
        """The string td_wmesg points to (a literal in the kernel image: cached by address)."""
        key = ("wmesg", ptr)
        if key not in self._cache:
            try:
                self._cache[key] = _text(self.mem.cstring(ptr, 64))
            except exceptions.InvalidAddressException:
                self._cache[key] = None
        return self._cache[key]

    def _threads(self, pva: int, first: int, p_state: int, p_flag: int) -> List[ThreadRecord]:
        """The records of p_threads, each with its ki_stat.

        The common one- or two-thread list is read without the generator of
        :func:`queue.walk_addresses` (same bounds, same cycle check, same
        warnings: the walk takes over as soon as the list is longer).
        """
        read = self._reader("thread", _THREAD_FIELDS).read
        mem = self.mem
        out = []
        va = first
        try:
            while va and len(out) < 2:
                t = read(mem, va)
                out.append(ThreadRecord(va, t.tid, _text(t.name), t.state, t.inhibitors, t.oncpu,
                                        t.lastcpu, thread_stat(p_state, p_flag, t.state, t.inhibitors),
                                        t.priority, t.wchan or 0,
                                        self._wmesg(t.wmesg) if t.wmesg else None, t.kstack_pages or 0))
                va = t.next or 0
                if va == first or (va and va == out[0].offset):
                    vollog.warning(f"p_threads of proc {pva:#x}: cycle back to {va:#x} after {len(out)} elements; "
                                   "stopped there")
                    return out
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"p_threads of proc {pva:#x}: element at {va:#x} is unreadable ({exc}); list cut short")
            return out
        if not va:
            return out

        def load(tva):
            fields = read(mem, tva)
            return fields, fields.next or 0

        seen = {td.offset for td in out}
        name = f"p_threads of proc {pva:#x}"
        for tva, (t, _next) in queue.walk_addresses(load, va, name=name, limit=_THREADS_LIMIT - len(out)):
            if tva in seen:
                vollog.warning(f"{name}: cycle back to {tva:#x} after {len(out)} elements; stopped there")
                break
            out.append(ThreadRecord(tva, t.tid, _text(t.name), t.state, t.inhibitors, t.oncpu,
                                    t.lastcpu, thread_stat(p_state, p_flag, t.state, t.inhibitors),
                                    t.priority, t.wchan or 0,
                                    self._wmesg(t.wmesg) if t.wmesg else None, t.kstack_pages or 0))
        return out

    def proc(self, va: int) -> Optional[ProcRecord]:
        """The record of the ``struct proc`` at ``va`` (None if it cannot be read)."""
        try:
            fields = self._load_proc(canonical(va))[0]
        except exceptions.InvalidAddressException:
            return None
        return self._record(canonical(va), fields)

    def _record(self, va: int, p: dict) -> ProcRecord:
        """fill_kinfo_proc_only() + fill_kinfo_thread(FIRST_THREAD_IN_PROC) + aggregate.

        This runs once per process of a getprocs() (10^5 of them on a big
        server), so the per-struct readers are bound once and every value is
        computed into locals before the record is built.
        """
        mem = self.mem
        pptr = p.pptr or 0
        ppid = 0
        if pptr:
            # The kernel reports p_oppid (the real parent, also while traced);
            # kernels before 12 set p_oppid only when traced: then p_pptr's pid.
            ppid = p.oppid or 0
            if not ppid:
                try:
                    ppid = self._read_cached("proc", pptr, _PROC_FIELDS).pid
                except exceptions.InvalidAddressException:
                    ppid = -1
        p_state, flags = p.state, p.flag & 0xFFFFFFFF
        threads = self._threads(va, p.threads or 0, p_state, flags)
        thread = threads[0] if threads else None
        rec = ProcRecord(offset=va, pid=p.pid, ppid=ppid, comm=_text(p.comm), p_state=p_state,
                         stat=thread.stat if thread else thread_stat(p_state, flags), flags=flags,
                         threads=threads, thread=thread, numthreads=p.numthreads or 0, nice=p.nice,
                         args_ptr=p.args or 0, vmspace_ptr=p.vmspace or 0, sysent_ptr=p.sysent or 0)
        if p.ucred:
            self._credentials(rec, p.ucred)
        if p.pgrp:
            self._job_control(rec, p.pgrp)
        read_pstats, read_vmspace = self._hot_readers
        if p.stats:
            try:
                ps = read_pstats(mem, p.stats)
                boot = self._boottime if self._boottime_known else self.boottime()
                if boot is not None and ps.sec is not None:
                    rec.start = boot + ps.sec + ps.usec / 1e6
            except exceptions.InvalidAddressException:
                pass
        if p.vmspace and p_state != F.PRS_NEW and p_state != F.PRS_ZOMBIE:
            try:
                vm = read_vmspace(mem, p.vmspace)
                rec.vsize = vm.size
                if vm.resident is not None:
                    rec.rssize = vm.resident + sum(td.kstack_pages for td in threads
                                                      if not td.inhibitors & F.TDI_SWAPPED)
            except exceptions.InvalidAddressException:
                pass
        if p.sysent:
            rec.emul = self._emul(p.sysent)
        return rec

    @property
    def _hot_readers(self):
        """The pstats and vmspace readers, bound once per handle."""
        hot = self.__dict__.get("_hot")
        if hot is None:
            hot = self.__dict__["_hot"] = (self._reader("pstats", _PSTATS_FIELDS).read,
                                           self._reader("vmspace", _VMSPACE_FIELDS).read)
        return hot

    def _emul(self, sysent: int) -> Optional[str]:
        """ki_emul: the name of the sysentvec at ``sysent`` (cached by address)."""
        key = ("emul", sysent)
        cache = self._cache
        if key in cache:
            return cache[key]
        emul = None
        try:
            sv = self._read_cached("sysentvec", sysent, _SYSENT_FIELDS)
            if sv.name:
                emul = _text(self.mem.cstring(canonical(sv.name), 32))
        except exceptions.InvalidAddressException:
            pass
        cache[key] = emul
        return emul

    def _credentials(self, rec: ProcRecord, ucred: int) -> None:
        """ucred fields; 14.x keeps the effective gid in cr_groups[0], 15.0 in cr_gid."""
        if not ucred:
            return
        key = ("ucred+groups", ucred)
        cred = self._cache.get(key)
        if cred is None:
            try:
                c = self._reader("ucred", _UCRED_FIELDS).read(self.mem, ucred)
                ngroups = max(0, min(c.ngroups, c.agroups or c.ngroups, 65536))
                groups = list(self._gids(canonical(c.groups), ngroups)) if ngroups and c.groups else []
            except exceptions.InvalidAddressException:
                return
            if c.gid is not None:
                gid, allgroups = c.gid, [c.gid] + groups
            else:
                gid, allgroups = (groups[0] if groups else None), groups
            cred = (c.uid, c.ruid, c.svuid, gid, c.rgid, c.svgid, allgroups)
            self._cache[key] = cred
        rec.uid, rec.ruid, rec.svuid, rec.gid, rec.rgid, rec.svgid, groups = cred
        rec.groups = list(groups)

    def _gids(self, va: int, n: int) -> tuple:
        """``gid_t[n]`` at ``va``, unpacked in place when it lies in one page (cr_smallgroups, inside the ucred)."""
        if (va & 0xFFF) + 4 * n <= 0x1000:
            buf, off = self.mem.locate(va)
            return _gid_array(n).unpack_from(buf, off)
        return _gid_array(n).unpack(self.mem.read(va, 4 * n))

    def _job_control(self, rec: ProcRecord, pgrp: int) -> None:
        """ki_pgid, ki_sid, ki_login, ki_kiflag, and the terminal when P_CONTROLT.

        Everything but KI_SLEADER depends on the process group alone, and
        thousands of processes share one: it is worked out once per pgrp.
        """
        key = ("job", pgrp)
        job = self._cache.get(key)
        if job is None:
            job = self._cache[key] = self._pgrp_job(pgrp)
        pgid, sid, login, ctty, leader, ttyp = job
        rec.pgid, rec.sid, rec.login = pgid, sid, login
        if ctty:
            rec.kiflag |= F.KI_CTTY
        if leader == rec.offset:
            rec.kiflag |= F.KI_SLEADER
        if ttyp and rec.flags & F.P_CONTROLT:
            try:
                rec.tty, rec.tdev, rec.tpgid, rec.tsid = self._tty(ttyp)
            except exceptions.InvalidAddressException:
                pass

    def _pgrp_job(self, pgrp: int) -> tuple:
        """``(pgid, sid, login, has s_ttyvp, session leader, s_ttyp)`` of a process group (None: unreadable)."""
        try:
            pg = self._read_cached("pgrp", pgrp, _PGRP_FIELDS)
        except exceptions.InvalidAddressException:
            return None, None, None, False, None, 0
        if not pg.session:
            return pg.id, None, None, False, None, 0
        try:
            sess = self._read_cached("session", canonical(pg.session), _SESSION_FIELDS)
        except exceptions.InvalidAddressException:
            return pg.id, None, None, False, None, 0
        return (pg.id, sess.sid, _text(sess.login), bool(sess.ttyvp), canonical(sess.leader or 0),
                canonical(sess.ttyp) if sess.ttyp else 0)

    def _tty(self, tp: int):
        """(name, dev_t, foreground pgid, session id) of a struct tty (cached)."""
        key = ("tty-info", tp)
        found = self._cache.get(key)
        if found is None:
            t = self._read_cached("tty", tp, _TTY_FIELDS)
            name = tdev = tsid = None
            tpgid = F.NO_PID
            if t.pgrp:
                tpgid = self._read_cached("pgrp", canonical(t.pgrp), _PGRP_FIELDS).id
            if t.session:
                tsid = self._read_cached("session", canonical(t.session), _SESSION_FIELDS).sid
            if t.dev:
                cdev = canonical(t.dev)
                name = _text(self._reader("cdev", {"name": "si_name"}).read(self.mem, cdev).name)
                if self._cdev_priv is not None:  # dev2udev(): cdev2priv(dev)->cdp_inode
                    c_off, inode_off = self._cdev_priv
                    tdev = struct.unpack("<I", self.mem.read(cdev - c_off + inode_off, 4))[0]
            found = self._cache[key] = (name, tdev, tpgid, tsid)
        return found

    # ------------------------------------------------------------------
    def iter_getprocs(self, op: int = F.KERN_PROC_ALL, arg=0) -> Iterator[ProcRecord]:
        """:meth:`getprocs` as a generator (records are produced while allproc is walked)."""
        base = op & ~F.KERN_PROC_INC_THREAD
        if base not in _OPS:
            raise ValueError(f"kvm_getprocs: unknown op {op:#x}")
        per_thread = base == F.KERN_PROC_ALL or bool(op & F.KERN_PROC_INC_THREAD)
        self._cache.clear()
        for va, p in self.iter_proc_addresses():
            if p.state == F.PRS_NEW:
                continue
            if base == F.KERN_PROC_PID and p.pid != arg:
                continue
            rec = self._record(va, p)
            if not self.matches(rec, base, arg):
                continue
            if not per_thread or len(rec.threads) <= 1:
                yield rec
                continue
            yield rec  # its thread is the first one already
            for td in rec.threads[1:]:
                yield rec.for_thread(td)

    def getprocs(self, op: int = F.KERN_PROC_ALL, arg=0) -> List[ProcRecord]:
        """kvm_getprocs(kd, op, arg): kinfo_proc-like records of the matching processes.

        The cyclic garbage collector is paused while the list is built: the
        records hold no reference cycles, and with 10^5 live records its full
        collections would otherwise cost as much as reading them.
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return list(self.iter_getprocs(op, arg))
        finally:
            if enabled:
                gc.enable()

    @staticmethod
    def matches(rec: ProcRecord, base: int, arg) -> bool:
        """Whether a record passes the filter of KERN_PROC op ``base`` (sysctl_kern_proc_iterate())."""
        if base in (F.KERN_PROC_ALL, F.KERN_PROC_PROC, F.KERN_PROC_PID):
            return True
        if base == F.KERN_PROC_PGRP:
            return rec.pgid == arg
        if base == F.KERN_PROC_SESSION:
            return rec.sid == arg
        if base == F.KERN_PROC_TTY:
            # The kernel compares tty_udev(); a device name ("pts/0",
            # "/dev/pts/0") is accepted too, for ISFs without cdev_priv.
            if rec.tty is None:
                return False
            if isinstance(arg, str):
                return rec.tty == arg[5:] if arg.startswith("/dev/") else rec.tty == arg
            return rec.tdev == arg
        if base == F.KERN_PROC_UID:
            return rec.uid == arg
        if base == F.KERN_PROC_RUID:
            return rec.ruid == arg
        if base == F.KERN_PROC_RGID:
            return rec.rgid == arg
        if base == F.KERN_PROC_GID:
            return rec.gid == arg
        return False

    # ------------------------------------------------------------------
    def pidhash_check(self) -> Dict[str, object]:
        """Compare allproc with the pid hash (``pidhashtbl[pid & pidhash]`` chains on ``p_hash``).

        A process on one but not the other was unlinked by someone (a rootkit
        hides from ``ps`` by leaving allproc); both lists hold every non-NEW process.
        """
        on_allproc = {va: p.pid for va, p in self.iter_proc_addresses()}
        on_hash: Dict[int, int] = {}
        tbl, mask = self._symbol("pidhashtbl"), self._symbol("pidhash")
        if tbl is None or mask is None:
            return {"error": "pidhashtbl/pidhash: no such symbol"}
        try:
            base = canonical(self.mem.ptr(tbl))
            size = self._c_int(mask, "long", signed=False) + 1  # u_long pidhash
        except exceptions.InvalidAddressException as exc:
            return {"error": f"pid hash unreadable: {exc}"}
        if not 0 < size <= _PIDHASH_LIMIT or size & (size - 1):
            return {"error": f"pidhash {size - 1:#x} is not a hashinit() mask"}
        reader = self._reader("proc", _PROC_FIELDS)

        def load(va):
            fields = reader.read(self.mem, va)
            return fields, canonical(fields.hash_next or 0)

        try:
            ptr = self.mem.ptr_size
            buckets = struct.unpack(f"<{size}{_UINT_CODES[ptr]}", self.mem.read(base, ptr * size))
        except exceptions.InvalidAddressException as exc:
            return {"error": f"pidhashtbl unreadable: {exc}"}
        for i, first in enumerate(buckets):
            for va, (fields, _n) in queue.walk_addresses(load, canonical(first), name=f"pidhashtbl[{i}]"):
                on_hash[va] = fields.pid
        return {
            "allproc": len(on_allproc),
            "pidhash": len(on_hash),
            "only_in_allproc": sorted((pid, va) for va, pid in on_allproc.items() if va not in on_hash),
            "only_in_pidhash": sorted((pid, va) for va, pid in on_hash.items() if va not in on_allproc),
        }

    # ------------------------------------------------------------------
    def getargv(self, proc, nchr: int = 0) -> Optional[List[str]]:
        """kvm_getargv(): the process's arguments, or None (see :meth:`geterr`)."""
        return self.args(proc, nchr).values

    def getenvv(self, proc, nchr: int = 0) -> Optional[List[str]]:
        """kvm_getenvv(): the process's environment, or None (see :meth:`geterr`)."""
        return self.env(proc, nchr).values

    def _as_record(self, proc) -> Optional[ProcRecord]:
        if isinstance(proc, ProcRecord):
            return proc
        for va, p in self.iter_proc_addresses():
            if p.pid == proc and p.state != F.PRS_NEW:
                return self._record(va, p)
        return None

    def _fail(self, reason: str) -> ArgsResult:
        self._err = reason
        return ArgsResult(None, None, reason)

    def args(self, proc, nchr: int = 0) -> ArgsResult:
        """sysctl_kern_proc_args(): p_args, else (not exiting, not a kernel process) the user stack."""
        rec = self._as_record(proc)
        if rec is None:
            return self._fail(f"no process {proc}")
        if rec.args_ptr and self._has_type("pargs"):
            try:
                length = struct.unpack("<I", self.mem.read(rec.args_ptr + self._pargs_offsets()[0], 4))[0]
                if length <= self._arg_max():
                    data = self.mem.read(rec.args_ptr + self._pargs_offsets()[1], length)
                    return ArgsResult(_split(data, nchr), "p_args")
                reason = f"p_args at {rec.args_ptr:#x}: ar_length {length} exceeds ARG_MAX"
            except exceptions.InvalidAddressException as exc:
                reason = f"p_args at {rec.args_ptr:#x} is not in the dump ({exc})"
            # A p_args that cannot be what kern_exec cached is damage worth a line (the fuzzer's
            # `pargs` mutation); the user stack may still hold the arguments.
            vollog.warning(f"pid {rec.pid}: {reason}; trying the user stack")
        if rec.flags & (F.P_WEXIT | F.P_SYSTEM):
            what = "a kernel process (P_SYSTEM)" if rec.flags & F.P_SYSTEM else "exiting (P_WEXIT)"
            return self._fail(f"pid {rec.pid} is {what} and has no cached arguments (p_args)")
        return self._user_vector(rec, "argv", nchr)

    def env(self, proc, nchr: int = 0) -> ArgsResult:
        """sysctl_kern_proc_env(): nothing for kernel processes, else the user stack."""
        rec = self._as_record(proc)
        if rec is None:
            return self._fail(f"no process {proc}")
        if rec.flags & F.P_SYSTEM:
            return self._fail(f"pid {rec.pid} is a kernel process (P_SYSTEM): no environment")
        return self._user_vector(rec, "envv", nchr)

    def _user_vector(self, rec: ProcRecord, which: str, nchr: int) -> ArgsResult:
        """:meth:`_ps_strings`, with any Volatility error (bad symbols, layers) as the reason."""
        try:
            return self._ps_strings(rec, which, nchr)
        except exceptions.VolatilityException as exc:
            return self._fail(f"pid {rec.pid}: {which} unreadable ({exc})")

    def _pargs_offsets(self) -> Tuple[int, int]:
        members = self.table.get_type("pargs").vol.members
        return members["ar_length"][0], members["ar_args"][0]

    def process_layer(self, rec: ProcRecord) -> Tuple[Optional[str], str]:
        """The name of a layer for the process's address space (its pmap), or (None, reason).

        Which ``vm_pmap`` fields hold the page-table root, and how a copy of
        the kernel layer is pointed at it, is the architecture's business
        (:mod:`kvm_vol.arch`: ``pm_cr3`` on amd64); the layer is made once
        per root and shared.
        """
        if not rec.vmspace_ptr:
            return None, f"pid {rec.pid} has no vmspace"
        kernel = self.context.layers[self.layer_name]
        arch = self.mem.arch
        reader = self._readers.get("vmspace@pmap")
        if reader is None:
            reader = self._readers["vmspace@pmap"] = StructReader(self.context, self.symbol_table, "vmspace",
                                                                  arch.vmspace_fields)
        try:
            overrides = arch.process_config(kernel, reader.read(self.mem, rec.vmspace_ptr))
        except exceptions.InvalidAddressException as exc:
            return None, f"pid {rec.pid}: vmspace at {rec.vmspace_ptr:#x} unreadable ({exc})"
        except ValueError as exc:
            return None, f"pid {rec.pid}: {exc}"
        key = tuple(sorted(overrides.items()))
        name = self._proc_layers.get(key)
        if name is None:
            name = self.context.layers.free_layer_name(f"{self.layer_name}_Process{rec.pid}")
            path = interfaces.configuration.path_join
            for ckey, value in kernel.config.items():
                if ckey not in overrides and not isinstance(value, dict):
                    self.context.config[path(name, ckey)] = value
            for ckey, value in overrides.items():
                self.context.config[path(name, ckey)] = value
            cls = arch.process_layer_class(kernel) if arch.process_layer_class else kernel.__class__
            layer = cls(self.context, name, name, metadata={"os": "FreeBSD"})
            self.context.add_layer(layer)
            self._proc_layers[key] = name
        return name, ""

    def _ps_strings(self, rec: ProcRecord, which: str, nchr: int) -> ArgsResult:
        """get_proc_vector() + get_ps_strings() on the process's user memory."""
        if rec.p_state == F.PRS_ZOMBIE:
            return self._fail(f"pid {rec.pid} is a zombie: its address space is gone (vmspace_exit)")
        layer_name, reason = self.process_layer(rec)
        if layer_name is None:
            return self._fail(reason)
        layer = self.context.layers[layer_name]
        try:
            sv = self._read_cached("sysentvec", rec.sysent_ptr, _SYSENT_FIELDS) if rec.sysent_ptr else None
            vm = self._reader("vmspace", _VMSPACE_FIELDS).read(self.mem, rec.vmspace_ptr)
        except exceptions.InvalidAddressException as exc:
            return self._fail(f"pid {rec.pid}: p_sysent/p_vmspace unreadable ({exc})")
        if sv is None:
            return self._fail(f"pid {rec.pid} has no p_sysent")
        ilp32 = bool((sv.flags or 0) & F.SV_ILP32)
        # A 32-bit process on an LP64 kernel has COMPAT_FREEBSD32's struct; on an
        # ILP32 kernel (i386) the native struct ps_strings is already the 32-bit one.
        pss_type = "freebsd32_ps_strings" if ilp32 and self.mem.ptr_size > 4 else "ps_strings"
        if not self._has_type(pss_type):
            return self._fail(f"the symbol table has no struct {pss_type}")
        if vm.stacktop and sv.psstringssz:
            where = vm.stacktop - sv.psstringssz  # PROC_PS_STRINGS(), FreeBSD 14+
        else:
            where = sv.psstrings or 0  # sv_psstrings, before stack randomisation
        if not where:
            return self._fail(f"pid {rec.pid}: no ps_strings address")
        reader = self._reader(pss_type, _PS_STRINGS_FIELDS)
        dump_kind = self._dump_kind()
        ptr_size = 4 if ilp32 else self.mem.ptr_size  # the process's user pointers
        page_mask = getattr(layer, "page_size", A.PAGE_SIZE) - 1

        def user_read(va: int, length: int, what: str) -> bytes:
            try:
                return layer.read(va, length)
            except exceptions.InvalidAddressException as exc:
                bad = getattr(exc, "invalid_address", va)
                if dump_kind == "minidump":
                    raise _Missing(f"{what}: user page {bad & ~page_mask:#x} of pid {rec.pid} is not in the "
                                   "dump (minidumps hold no user pages)")
                raise _Missing(f"{what}: user address {bad:#x} of pid {rec.pid} is unreadable ({exc})")

        try:
            pss = reader.unpack(user_read(where, reader.span, "ps_strings"))
            vptr, vsize = (pss.argv, pss.nargv) if which == "argv" else (pss.envv, pss.nenv)
            if vsize < 0 or vsize > self._arg_max():
                return self._fail(f"pid {rec.pid}: ps_strings count {vsize} exceeds ARG_MAX (ENOEXEC)")
            raw = user_read(vptr, vsize * ptr_size, f"{which} vector") if vsize else b""
            vector = struct.unpack(f"<{vsize}{_UINT_CODES[ptr_size]}", raw)
            limit = 2 * (F.PATH_MAX + self._arg_max())
            if nchr and 0 < nchr < limit:
                limit = nchr
            out: List[bytes] = []
            done = 0
            for ptr in vector:
                if ptr == 0 or done >= limit:  # programs may NULL out argv entries
                    break
                value = b""
                while True:
                    chunk = self._user_chunk(layer, ptr + len(value), user_read)
                    n = chunk.find(b"\0")
                    n = len(chunk) if n < 0 else n
                    if done + len(value) + n >= limit:
                        n = max(0, limit - done - len(value) - 1)
                    value += chunk[:n]
                    if n != F.GET_PS_STRINGS_CHUNK_SZ:
                        break
                out.append(value)
                done += len(value) + 1
        except _Missing as exc:
            return self._fail(str(exc))
        return ArgsResult([_text(v) for v in out], "ps_strings")

    @staticmethod
    def _user_chunk(layer, va: int, user_read) -> bytes:
        """proc_read_string(): up to 256 bytes, short at a page end whose next page is absent."""
        first = min(F.GET_PS_STRINGS_CHUNK_SZ, A.PAGE_SIZE - (va & A.PAGE_MASK))
        data = user_read(va, first, "string")
        if first < F.GET_PS_STRINGS_CHUNK_SZ and b"\0" not in data:
            try:
                data += layer.read(va + first, F.GET_PS_STRINGS_CHUNK_SZ - first)
            except exceptions.InvalidAddressException:
                pass
        return data

    def _dump_kind(self) -> Optional[str]:
        phys = self.mem.phys
        dump = getattr(phys, "dump", None)
        return getattr(dump, "kind", None)


class _Missing(Exception):
    """User memory that is not there; carries the reason for geterr()."""


def _split(data: bytes, nchr: int) -> List[str]:
    """The NUL-separated strings of a p_args block (trailing NUL optional), cut at ``nchr``."""
    if nchr and 0 < nchr < len(data):
        data = data[:nchr]
    if data.endswith(b"\0"):
        data = data[:-1]
    return [_text(s) for s in data.split(b"\0")] if data else []
