"""Kernel globals, processes, threads and credentials of a synthetic FreeBSD.

Everything here mirrors what the real kernel does at boot and on fork:

* ``proc0``/``thread0_st`` are statics in the image, pid 0 "kernel", with
  kernel threads added by ``kthread_add()`` (tids from THREAD0_TID = 100000);
* ``allproc`` is a ``LIST_HEAD`` whose ``LIST_INSERT_HEAD`` on fork puts the
  newest process first and proc0 last;
* ``pidhashtbl``/``pidhash`` hash every process by ``pid & pidhash``;
* ``p_children``/``p_sibling`` link each parent to its children;
* credentials keep their groups in ``cr_smallgroups`` with ``cr_groups``
  pointing there (14.x: ``cr_gid`` is ``cr_groups[0]``; 15.0 has its own
  ``cr_gid`` field);
* each thread has a KSTACK_PAGES kernel stack in KVA behind a guard page,
  ``td_pcb`` near its top, exactly as the architecture's
  ``cpu_thread_alloc()`` computes it (:meth:`Machine.pcb_address`);
* queue links and pointer tables are pointer-sized for the release's layout
  (4 bytes on i386), never assumed to be 8;
* the self-describing offsets (``proc_off_p_pid`` ...) are ``const int``
  globals holding the layout's offsets, as kern_proc.c defines them.

The ground truth each process produces is recorded in the manifest from the
*specification*, never read back through kvm-vol's own readers.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from kvm_vol import freebsd as F
from kvm_vol.forge.machine import Machine
from kvm_vol.forge.userland import Userland

THREAD0_TID = 100000  # NO_PID: the first thread id
NOCPU = -1  # td_oncpu of a thread that is not running
PIDHASH_SIZE = 256  # hashinit() rounds to a power of two; pidhash is size - 1

# td_state / td_inhibitors for each thread state a spec can name, and the
# ki_stat fill_kinfo_proc() derives from it for a PRS_NORMAL process.
THREAD_STATES = {
    "running": (F.TDS_RUNNING, 0, F.SRUN),
    "runq": (F.TDS_RUNQ, 0, F.SRUN),
    "can_run": (F.TDS_CAN_RUN, 0, F.SRUN),
    "sleeping": (F.TDS_INHIBITED, F.TDI_SLEEPING, F.SSLEEP),
    "lock": (F.TDS_INHIBITED, F.TDI_LOCK, F.SLOCK),
    "iwait": (F.TDS_INHIBITED, F.TDI_IWAIT, F.SWAIT),
    "suspended": (F.TDS_INHIBITED, F.TDI_SUSPENDED, F.SWAIT),
    "inactive": (F.TDS_INACTIVE, 0, F.SWAIT),
}


@dataclass
class ThreadSpec:
    name: str
    state: str = "sleeping"
    oncpu: int = NOCPU
    wmesg: Optional[str] = None
    tid: Optional[int] = None  # assigned in creation order when None


@dataclass
class ProcSpec:
    pid: int
    comm: str
    ppid: int
    uid: int = 0
    ruid: Optional[int] = None
    svuid: Optional[int] = None
    gid: int = 0
    rgid: Optional[int] = None
    svgid: Optional[int] = None
    groups: Sequence[int] = ()
    state: str = "NORMAL"  # enum p_states without the PRS_ prefix
    flags: int = F.P_INMEM | F.P_EXEC
    stopped: bool = False  # P_STOPPED_SIG
    threads: List[ThreadSpec] = field(default_factory=list)
    # Job control, times and exec image (kvm_vol.forge.userland).
    setsid: bool = False  # setsid(): new session and process group named by the pid
    setpgid: bool = False  # setpgid(0, 0): new process group in the parent's session
    ctty: Optional[str] = None  # terminal a setsid leader acquires (userland.TTY_DEVS)
    foreground: bool = False  # its process group becomes the terminal's foreground (t_pgrp)
    login: Optional[str] = None  # setlogin() of a new session (default: the parent session's)
    start: Optional[float] = None  # p_stats->p_start, seconds after boot
    nice: int = 0
    argv: Optional[Sequence[str]] = None  # exec'd arguments (default [comm]; none for kernel processes)
    env: Sequence[str] = ()
    pargs: Optional[bool] = None  # False: not cached in p_args even if small enough
    abi32: bool = False  # a freebsd32 (ia32) process
    exec_image: bool = True  # forge the user address space (page tables, stack with ps_strings)


def expected_stat(spec: ProcSpec) -> int:
    """ki_stat as fill_kinfo_proc() computes it from the first thread."""
    if spec.state == "ZOMBIE":
        return F.SZOMB
    if spec.state == "NEW":
        return F.SIDL
    state, _inhib, stat = THREAD_STATES[spec.threads[0].state]
    if stat == F.SRUN:
        return F.SRUN
    if spec.stopped:
        return F.SSTOP
    return stat


class Kernel:
    """Writes a FreeBSD kernel's globals and process table into a :class:`Machine`."""

    def __init__(self, machine: Machine, release: str, osreldate: int, banner: str,
                 symbol_types: Optional[Dict[str, Dict[str, Any]]] = None):
        self.m = machine
        self.L = machine.layout
        self.release = release
        self.osreldate = osreldate
        self.banner = banner
        self._types = symbol_types or {}
        self._next_tid = THREAD0_TID
        self.procs: Dict[int, int] = {}  # pid -> struct proc VA
        self.manifest_procs: List[Dict[str, Any]] = []
        self._allproc_order: List[int] = []  # struct proc VAs, newest first
        self._globals()
        self.userland = Userland(self)

    # ------------------------------------------------------------------
    def _type(self, name: str, fallback: Dict[str, Any]) -> Dict[str, Any]:
        """A global's type from the type pack, else the given C type."""
        desc = self._types.get(name, {}).get("type")
        return desc or fallback

    def _base(self, name: str) -> Dict[str, Any]:
        return {"kind": "base", "name": name}

    def global_var(self, name: str, fallback: Dict[str, Any], value: Any = None, **kw) -> int:
        """A kernel global whose type the type pack knows (else ``fallback``): ``Machine.kernel_var``."""
        return self.m.kernel_var(name, self._type(name, fallback), value, **kw)

    def _globals(self) -> None:
        m, L = self.m, self.L
        m.write_kernel_elf_header()
        text = self.banner.encode()
        char = self._base("char")
        m.kernel_var("version", {"kind": "array", "count": len(text) + 1, "subtype": char}, text)
        m.kernel_var("ostype", {"kind": "array", "count": 8, "subtype": char}, b"FreeBSD")
        osrelease = self.banner.split()[1].encode()
        m.kernel_var("osrelease", {"kind": "array", "count": 32, "subtype": char}, osrelease)
        m.kernel_var("osreldate", self._base("int"), self.osreldate)
        m.kernel_globals(self)  # the page-table root(s): KPML4phys on amd64, IdlePTD ... on i386
        from kvm_vol.symbols.layoutcheck import SELF_DESCRIBING  # the one list of these symbols

        for name, (struct, member) in SELF_DESCRIBING.items():
            if member is not None:
                m.kernel_var(name, self._base("int"), L.offsetof(struct, member), rodata=True)
            elif struct in L.user_types:  # pcb_size = sizeof(struct pcb)
                m.kernel_var(name, self._base("int"), L.sizeof(struct), rodata=True)

        self.allproc = m.kernel_var("allproc", {"kind": "struct", "name": "proclist"}
                                    if "proclist" in L.user_types else {"kind": "pointer", "subtype": {"kind": "struct", "name": "proc"}})
        self.nprocs = m.kernel_var("nprocs", self._base("int"), 0)
        self.pidhashtbl_va = m.uma_alloc(PIDHASH_SIZE * m.ptr_size)
        m.kernel_var("pidhashtbl", {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}, self.pidhashtbl_va)
        m.kernel_var("pidhash", self._base("unsigned long"), PIDHASH_SIZE - 1)
        self.proc0 = m.kernel_var("proc0", {"kind": "struct", "name": "proc"}, align=64)
        self.thread0 = m.kernel_var("thread0_st", {"kind": "struct", "name": "thread"}, align=64)
        self._msgbuf()
        # vm/vm_phys.c: vm_paddr_t dump_avail[PHYS_AVAIL_COUNT], the RAM a dump covers, as
        # [start, end) pairs ended by a 0 end; live readers take /dev/mem's ranges from it.
        avail = [x for pair in m.dump_avail() for x in pair]
        desc = self._type("dump_avail", {"kind": "array", "count": m.PHYS_AVAIL_COUNT,
                                         "subtype": self._base("unsigned long")})
        m.kernel_var("dump_avail", desc, avail + [0] * (desc["count"] - len(avail)))

    def _msgbuf(self) -> None:
        """The message buffer at the top of RAM, header after the data (msgbufinit())."""
        m, L = self.m, self.L
        if "msgbuf" not in L.user_types:
            return
        hdr_size = L.sizeof("msgbuf")
        data_size = m.msgbuf_size - hdr_size
        data_va = m.msgbuf_va()  # the direct map on amd64, a KVA mapping where there is none
        hdr_va = data_va + data_size
        for i in range(0, m.msgbuf_size, 4096):
            m.mem.touch((m.msgbuf_pa + i) >> 12)
        text = (f"---<<BOOT>>---\nCopyright (c) 1992-2024 The FreeBSD Project.\n{self.banner}"
                "CPU: QEMU Virtual CPU (2400.00-MHz K8-class CPU)\nreal memory  = "
                f"{m.ram_size} ({m.ram_size >> 20} MB)\n").encode()
        m.write_kva(data_va, text)
        values = {"msg_ptr": data_va, "msg_magic": 0x063062, "msg_size": data_size,
                  "msg_wseq": len(text), "msg_rseq": 0}
        m.set_fields(hdr_va, "msgbuf", {k: v for k, v in values.items() if L.has_field("msgbuf", k)})
        m.kernel_var("msgbufp", {"kind": "pointer", "subtype": {"kind": "struct", "name": "msgbuf"}}, hdr_va)
        self.msgbuf_text = text
        self._msgbuf_ring = (data_va, data_size)

    def msgbuf_bytes(self) -> bytes:
        """The ring buffer as a minidump's msgbuf section holds it (msg_ptr, msg_size)."""
        ring = getattr(self, "_msgbuf_ring", None)
        if ring is None:
            return b""
        return self.m.read_kva(*ring)

    # ------------------------------------------------------------------
    def _ucred(self, spec: ProcSpec) -> int:
        L, m = self.L, self.m
        groups = [spec.gid] + [g for g in spec.groups]
        va = m.uma_alloc(L.sizeof("ucred"))
        values: Dict[str, Any] = {
            "cr_ref": 1, "cr_users": 1, "cr_uid": spec.uid,
            "cr_ruid": spec.uid if spec.ruid is None else spec.ruid,
            "cr_svuid": spec.uid if spec.svuid is None else spec.svuid,
            "cr_rgid": spec.gid if spec.rgid is None else spec.rgid,
            "cr_svgid": spec.gid if spec.svgid is None else spec.svgid,
        }
        small_off, small_desc = L.field("ucred", "cr_smallgroups")
        values["cr_agroups"] = small_desc["count"]
        values["cr_groups"] = va + small_off
        if L.has_field("ucred", "cr_gid"):
            # 15.0: effective gid has its own field; cr_groups holds only
            # supplementary groups and cr_ngroups counts those.
            values["cr_gid"] = spec.gid
            stored = list(spec.groups)
        else:
            # 14.x: cr_gid is cr_groups[0]; cr_ngroups includes it.
            stored = groups
        values["cr_ngroups"] = len(stored)
        values["cr_smallgroups"] = stored
        m.set_fields(va, "ucred", values)
        return va

    def _thread(self, proc_va: int, t: ThreadSpec, cred: int, va: Optional[int] = None) -> Dict[str, Any]:
        L, m = self.L, self.m
        if va is None:
            va = m.alloc_struct("thread")
        tid = t.tid if t.tid is not None else self._next_tid
        self._next_tid = max(self._next_tid, tid + 1)
        kstack = m.kmem_alloc(m.KSTACK_PAGES * m.PAGE_SIZE, guard_pages=1)
        pcb_size = L.sizeof("pcb") if "pcb" in L.user_types else 0x340
        pcb = m.pcb_address(kstack, pcb_size)
        td_state, inhib, _stat = THREAD_STATES[t.state]
        values: Dict[str, Any] = {
            "td_proc": proc_va, "td_tid": tid, "td_name": t.name, "td_state": td_state,
            "td_inhibitors": inhib, "td_oncpu": t.oncpu, "td_lastcpu": max(t.oncpu, 0),
            "td_kstack": kstack, "td_kstack_pages": m.KSTACK_PAGES, "td_pcb": pcb,
            "td_ucred": cred,
        }
        if t.wmesg:
            values["td_wmesg"] = m.place_rodata(t.wmesg.encode() + b"\0")
        m.set_fields(va, "thread", {k: v for k, v in values.items() if L.has_field("thread", k)})
        return {"tid": tid, "name": t.name, "state": t.state, "oncpu": t.oncpu, "offset": va}

    def add_process(self, spec: ProcSpec) -> int:
        """fork1() + exec: a struct proc with its threads, credentials and links."""
        L, m = self.L, self.m
        if spec.pid in self.procs:
            raise ValueError(f"pid {spec.pid} twice")
        if not spec.threads:
            raise ValueError(f"pid {spec.pid}: a process has at least one thread")
        va = self.proc0 if spec.pid == 0 else m.alloc_struct("proc")
        cred = self._ucred(spec)
        pstate = L.field_enum_value("proc", "p_state", f"PRS_{spec.state}")
        flags = spec.flags | (F.P_STOPPED_SIG if spec.stopped else 0)
        if len(spec.threads) > 1:
            flags |= F.P_HADTHREADS
        m.set_fields(va, "proc", {
            "p_pid": spec.pid, "p_comm": spec.comm.encode()[:F.MAXCOMLEN], "p_state": pstate,
            "p_flag": flags, "p_ucred": cred, "p_numthreads": len(spec.threads), "p_magic": F.P_MAGIC,
        })

        # threads: TAILQ in creation order
        tq_off = L.offsetof("proc", "p_threads")
        plist_off = L.offsetof("thread", "td_plist")
        threads = []
        prev_next_field = va + tq_off  # &p_threads.tqh_first
        for i, t in enumerate(spec.threads):
            td_va = self.thread0 if (spec.pid == 0 and i == 0) else None
            rec = self._thread(va, t, cred, td_va)
            td = rec["offset"]
            m.write_ptr(prev_next_field, td)
            m.write_ptr(td + plist_off + m.ptr_size, prev_next_field)  # tqe_prev
            prev_next_field = td + plist_off  # &td_plist.tqe_next
            threads.append(rec)
        m.write_ptr(va + tq_off + m.ptr_size, prev_next_field)  # tqh_last

        # parent / children
        parent = self.procs.get(spec.ppid) if spec.pid != 0 else None
        if spec.pid == 0:
            parent = va  # proc0 has no parent; the kernel leaves p_pptr NULL
            m.set_fields(va, "proc", {"p_pptr": 0})
        elif parent is None:
            raise ValueError(f"pid {spec.pid}: parent {spec.ppid} not created yet")
        else:
            m.set_fields(va, "proc", {"p_pptr": parent})
            self._list_insert_head(parent + L.offsetof("proc", "p_children"), va, L.offsetof("proc", "p_sibling"))

        # allproc and the pid hash
        self._list_insert_head(self.allproc, va, L.offsetof("proc", "p_list"))
        bucket = self.pidhashtbl_va + m.ptr_size * (spec.pid & (PIDHASH_SIZE - 1))
        self._list_insert_head(bucket, va, L.offsetof("proc", "p_hash"))
        self.procs[spec.pid] = va
        self._allproc_order.insert(0, va)
        count = int.from_bytes(m.read_kva(self.nprocs, 4), "little") + 1
        m.write_kva(self.nprocs, count.to_bytes(4, "little"))

        groups = [spec.gid] + list(spec.groups)
        self.manifest_procs.insert(0, {
            "offset": va, "pid": spec.pid, "ppid": spec.ppid if spec.pid != 0 else 0,
            "comm": spec.comm[:F.MAXCOMLEN], "p_state": f"PRS_{spec.state}",
            "stat": F.KI_STAT_NAMES[expected_stat(spec)],
            "uid": spec.uid, "ruid": spec.uid if spec.ruid is None else spec.ruid,
            "svuid": spec.uid if spec.svuid is None else spec.svuid,
            "gid": spec.gid, "rgid": spec.gid if spec.rgid is None else spec.rgid,
            "svgid": spec.gid if spec.svgid is None else spec.svgid, "groups": groups,
            "flags": flags, "threads": threads,
        })
        self.userland.process(va, spec, threads, flags, self.manifest_procs[0])
        return va

    def _list_insert_head(self, head: int, elm: int, entry_off: int) -> None:
        """LIST_INSERT_HEAD(head, elm, field) on raw memory (le_next, le_prev)."""
        m = self.m
        ptr = m.ptr_size  # le_prev follows le_next
        first = m.read_ptr(head)
        m.write_ptr(elm + entry_off, first)
        if first:
            m.write_ptr(first + entry_off + ptr, elm + entry_off)
        m.write_ptr(head, elm)
        m.write_ptr(elm + entry_off + ptr, head)

    def manifest(self) -> Dict[str, Any]:
        m = self.m
        return {
            "release": self.release,
            "osreldate": self.osreldate,
            "banner": self.banner,
            **m.manifest_fields(),  # arch, kernbase, the page-table root(s), the direct map
            "dump_avail": [list(r) for r in m.dump_avail()],
            "ram_size": m.ram_size,
            "symbols": dict(sorted(m.symbols.items())),
            "nprocs": len(self.manifest_procs),
            "processes": self.manifest_procs,
        }
