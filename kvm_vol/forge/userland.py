"""The userland side of a synthetic FreeBSD process: job control, times, exec image.

:class:`Userland` is attached to a :class:`kvm_vol.forge.kernel.Kernel` and
completes every process ``add_process()`` creates, the way the kernel would
have left it:

* **job control** (``kern_proc.c``, ``tty.c``): proc0 is in ``pgrp0`` /
  ``session0``; a process inherits its parent's process group (fork), or
  starts its own (``setpgid``), or a session and group named by its pid
  (``setsid``).  A session leader may acquire a controlling terminal: a
  ``struct tty`` whose ``t_dev`` is a ``struct cdev`` inside a ``struct
  cdev_priv`` (``cdp_inode`` is the dev_t ``tty_udev()`` reports), with the
  session's ``s_ttyp``/``s_ttyvp`` set.  ``P_CONTROLT`` is set for exactly
  the processes of a session with a terminal (fork copies it; setsid clears
  it).  Groups link their members on ``pg_members``/``p_pglist``.
* **times**: ``time_second``/``time_uptime`` (there is no ``boottime``
  global; kern_tc.c keeps it in its timehands), and each process's
  ``p_stats->p_start`` in seconds since boot.
* **exec image** (``kern_exec.c``): ``p_sysent`` (``null_sysvec`` for kernel
  processes, ``elf64_freebsd_sysvec``, or ``ia32_freebsd_sysvec`` for 32-bit
  processes), ``p_args`` when the argument strings fit ``ps_arg_cache_limit``
  (PAGE_SIZE / 16), and a ``vmspace`` whose pmap has its own page-table root
  (:meth:`Machine.new_user_pmap`: on amd64 a PML4 with the kernel half
  copied, as ``pmap_pinit()`` does) mapping a user stack with
  ``ps_strings`` at ``vm_stacktop - sv_psstringssz`` above the argv/envp
  vectors and strings (``exec_copyout_strings()``), pointer-sized for the
  process's ABI (:class:`SysvecSpec`, from :meth:`Machine.sysvecs`).  User pages and user
  page-table pages come from the ordinary free pool, so minidumps (which
  dump kernel memory only) do not contain them; full dumps and raw images do.
* **zombies** keep ``p_args`` (freed only when reaped) but their
  ``p_vmspace`` is ``&vmspace0`` (``vmspace_exit()``).

The ground truth goes into each process's manifest entry.
"""

import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from kvm_vol import freebsd as F
from kvm_vol.core import amd64 as A

#: The amd64 machine's user stacks (kvm_vol.core.amd64; other machines' sysvecs() have their own).
USRSTACK = A.USRSTACK_LA48
FREEBSD32_USRSTACK = A.FREEBSD32_USRSTACK
AT_NULL = 0


@dataclass(frozen=True)
class SysvecSpec:
    """One ABI's ``struct sysentvec`` as the forge writes it (what :meth:`Machine.sysvecs` returns).

    ``symbol`` is the kernel global (``elf64_freebsd_sysvec`` ...), ``name``
    its ``sv_name`` (what ``ki_emul`` shows), ``flags`` its ``sv_flags``
    (SV_LP64 / SV_ILP32 ...), ``usrstack`` its ``sv_usrstack``,
    ``pss_type`` the ``struct ps_strings`` flavour the ABI's processes have
    and ``ptr_size`` the size of a user pointer (argv/envp vector entries).
    """

    symbol: str
    name: str
    flags: int
    usrstack: int
    pss_type: str
    ptr_size: int

#: The machine booted BOOT_EPOCH and was dumped UPTIME seconds later.
BOOT_EPOCH = 1_731_900_000
UPTIME = 3 * 86400 + 4242
#: td_priority by thread state name (sys/priority.h: timeshare 120-223, idle 224-255).
PRI_USER, PRI_KERN, PRI_IDLE = 120, 84, 255
#: Devfs inode numbers (cdp_inode, the dev_t userland sees) of the forge's terminals.
TTY_DEVS = {"console": 0x4C, "ttyv0": 0x5A, "ttyu0": 0x52, "pts/0": 0x86, "pts/1": 0x8A}


class Userland:
    """Job control, times and exec images for the processes of one forge kernel."""

    def __init__(self, kernel):
        self.k = kernel
        self.m = kernel.m
        self.L = kernel.L
        m, L = self.m, self.L
        long_t = {"kind": "base", "name": "long"}
        m.kernel_var("time_second", kernel._type("time_second", long_t), BOOT_EPOCH + UPTIME)
        m.kernel_var("time_uptime", kernel._type("time_uptime", long_t), UPTIME)
        self.boottime = BOOT_EPOCH
        #: ABI name ("null", "native", "compat32") -> (SysvecSpec or None, struct sysentvec VA)
        self.abis: Dict[str, Tuple[Any, int]] = {"null": (None, self._sysentvec("null_sysvec", "null", 0, 0))}
        for abi, sv in m.sysvecs().items():
            self.abis[abi] = (sv, self._sysentvec(sv.symbol, sv.name, sv.flags, sv.usrstack, L.sizeof(sv.pss_type)))
        # vmspace0 is the kernel's (and every kernel process's) address space.
        self.vmspace0 = m.kernel_var("vmspace0", {"kind": "struct", "name": "vmspace"})
        values = dict(m.kernel_pmap_fields(), vm_refcnt=1)
        m.set_fields(self.vmspace0, "vmspace", {k: v for k, v in values.items() if L.has_field("vmspace", k)})
        self.pgrp_of: Dict[int, int] = {}  # pid -> struct pgrp VA
        self.pgrps: Dict[int, Tuple[int, int]] = {}  # pgid -> (pgrp VA, session VA)
        self.sessions: Dict[int, Dict[str, Any]] = {}  # session VA -> {"sid", "tty", "login"}
        self.ttys: Dict[str, int] = {}  # name -> struct tty VA
        self._tty_members: Dict[str, List[Dict[str, Any]]] = {}  # name -> manifest entries on it

    # ------------------------------------------------------------------
    def _sysentvec(self, symbol: str, name: str, flags: int, usrstack: int, pss_size: int = 0) -> int:
        m = self.m
        va = m.kernel_var(symbol, {"kind": "struct", "name": "sysentvec"})
        values = {"sv_name": m.place_rodata(name.encode() + b"\0"), "sv_flags": flags}
        if usrstack:
            values.update({"sv_usrstack": usrstack, "sv_maxuser": usrstack + m.PAGE_SIZE,
                           "sv_psstrings": usrstack - pss_size, "sv_psstringssz": pss_size})
        m.set_fields(va, "sysentvec", {k: v for k, v in values.items() if self.L.has_field("sysentvec", k)})
        return va

    def _list_insert_head(self, head: int, elm: int, entry_off: int) -> None:
        self.k._list_insert_head(head, elm, entry_off)

    # ------------------------------------------------------------------
    def _new_session(self, leader_va: int, sid: int, login: str) -> int:
        va = self.m.alloc_struct("session", {"s_count": 1, "s_leader": leader_va, "s_sid": sid,
                                             "s_login": login.encode()})
        self.sessions[va] = {"sid": sid, "tty": None, "login": login}
        return va

    def _new_pgrp(self, pgid: int, session: int) -> int:
        va = self.m.alloc_struct("pgrp", {"pg_id": pgid, "pg_session": session})
        self.pgrps[pgid] = (va, session)
        return va

    def _acquire_tty(self, session: int, pgrp: int, name: str) -> int:
        """A session leader opens a terminal: tty + cdev_priv, s_ttyp/s_ttyvp, t_session/t_pgrp."""
        m = self.m
        if name in self.ttys:
            raise ValueError(f"forge: terminal {name} already controls a session")
        priv = m.alloc_struct("cdev_priv", {"cdp_inode": TTY_DEVS[name], "cdp_flags": 1})  # CDP_ACTIVE
        cdev = priv + self.L.offsetof("cdev_priv", "cdp_c")
        m.set_fields(cdev, "cdev", {"si_name": name.encode()})
        tp = m.alloc_struct("tty", {"t_dev": cdev, "t_session": session, "t_pgrp": pgrp, "t_sessioncnt": 1})
        m.set_fields(cdev, "cdev", {"si_drv1": tp})
        vnode = m.alloc_struct("vnode")
        m.set_fields(session, "session", {"s_ttyp": tp, "s_ttyvp": vnode})
        self.sessions[session]["tty"] = name
        self.ttys[name] = tp
        return tp

    def _job_control(self, va: int, spec, flags: int, info: Dict[str, Any]) -> int:
        L, m = self.L, self.m
        if spec.pid == 0:
            session = m.kernel_var("session0", {"kind": "struct", "name": "session"})
            m.set_fields(session, "session", {"s_count": 1, "s_leader": va, "s_sid": 0})
            self.sessions[session] = {"sid": 0, "tty": None, "login": ""}
            pgrp = m.kernel_var("pgrp0", {"kind": "struct", "name": "pgrp"})
            m.set_fields(pgrp, "pgrp", {"pg_id": 0, "pg_session": session})
            self.pgrps[0] = (pgrp, session)
        elif spec.setsid:
            parent_session = self.pgrps_session(self.pgrp_of[spec.ppid])
            login = spec.login if spec.login is not None else self.sessions[parent_session]["login"]
            session = self._new_session(va, spec.pid, login)
            pgrp = self._new_pgrp(spec.pid, session)
            flags &= ~F.P_CONTROLT  # setsid() detaches from the terminal
        elif spec.setpgid:
            session = self.pgrps_session(self.pgrp_of[spec.ppid])
            pgrp = self._new_pgrp(spec.pid, session)
        else:
            pgrp = self.pgrp_of[spec.ppid]
            session = self.pgrps_session(pgrp)
        if spec.ctty:
            if not spec.setsid:
                raise ValueError(f"pid {spec.pid}: only a new session leader acquires a terminal")
            self._acquire_tty(session, pgrp, spec.ctty)
        sess = self.sessions[session]
        pgid = int.from_bytes(m.read_kva(pgrp + L.offsetof("pgrp", "pg_id"), 4), "little")
        info.update({"pgid": pgid, "sid": sess["sid"], "login": sess["login"], "tty": sess["tty"], "tpgid": None})
        if sess["tty"] is not None:
            flags |= F.P_CONTROLT
            members = self._tty_members.setdefault(sess["tty"], [])
            members.append(info)
            if spec.foreground or len(members) == 1:
                m.set_fields(self.ttys[sess["tty"]], "tty", {"t_pgrp": pgrp})
                for member in members:  # ki_tpgid of every process on the terminal follows t_pgrp
                    member["tpgid"] = pgid
            else:
                info["tpgid"] = members[0]["tpgid"]
        else:
            flags &= ~F.P_CONTROLT
        self.pgrp_of[spec.pid] = pgrp
        m.set_fields(va, "proc", {"p_pgrp": pgrp, "p_flag": flags})
        self._list_insert_head(pgrp + L.offsetof("pgrp", "pg_members"), va, L.offsetof("proc", "p_pglist"))
        info["flags"] = flags
        info["tdev"] = TTY_DEVS[sess["tty"]] if sess["tty"] else None
        info["session_leader"] = spec.pid == sess["sid"] and (spec.pid == 0 or spec.setsid)
        return flags

    def pgrps_session(self, pgrp: int) -> int:
        return self.m.read_ptr(pgrp + self.L.offsetof("pgrp", "pg_session"))

    # ------------------------------------------------------------------
    def process(self, va: int, spec, threads: List[Dict[str, Any]], flags: int, info: Dict[str, Any]) -> None:
        """Complete the proc at ``va``; adds to (and corrects) its manifest entry ``info``.

        The entry stays live: a later foreground job on the same terminal
        updates its ``tpgid``.
        """
        m, L = self.m, self.L
        system = bool(flags & F.P_SYSTEM)
        if spec.pid != 0:
            m.set_fields(va, "proc", {"p_oppid": spec.ppid})
        flags = self._job_control(va, spec, flags, info)

        start = spec.start if spec.start is not None else (0.0 if spec.pid == 0 else 1.0 + 0.37 * spec.pid)
        stats = m.alloc_struct("pstats", {"p_start.tv_sec": int(start),
                                          "p_start.tv_usec": int(round((start - int(start)) * 1e6))})
        m.set_fields(va, "proc", {"p_stats": stats})
        info["start"] = self.boottime + int(start) + int(round((start - int(start)) * 1e6)) / 1e6

        from kvm_vol.forge.kernel import THREAD_STATES  # (kernel imports this module)

        for i, t in enumerate(threads):
            _td, _inhib, stat = THREAD_STATES[spec.threads[i].state]
            if spec.state == "ZOMBIE":
                stat = F.SZOMB
            elif spec.stopped and stat != F.SRUN:
                stat = F.SSTOP
            t["stat"] = F.KI_STAT_NAMES[stat]
            t["wmesg"] = spec.threads[i].wmesg
            pri = PRI_IDLE if spec.comm == "idle" else (PRI_KERN if system else PRI_USER + max(spec.nice, 0))
            values = {"td_priority": pri, "td_base_pri": pri, "td_user_pri": pri}
            if spec.threads[i].wmesg and spec.threads[i].state == "sleeping":
                values["td_wchan"] = va  # what the thread sleeps on: here its proc
            m.set_fields(t["offset"], "thread", values)
            t["priority"] = pri
            t["wchan"] = values.get("td_wchan", 0)
        m.set_fields(va, "proc", {"p_nice": spec.nice})
        info["nice"] = spec.nice

        abi = "null" if system else self.abi_of(spec)
        sv, sv_va = self.abis[abi]
        m.set_fields(va, "proc", {"p_sysent": sv_va})
        info["emul"] = sv.name if sv is not None else "null"

        argv = None if system else list(spec.argv if spec.argv is not None else [spec.comm])
        env = None if system else list(spec.env)
        info.update({"argv": argv, "env": env, "args_source": None, "p_args": None,
                     "vsize": None, "rssize": None})
        # p_args: kern_exec caches the argument strings when they fit.
        cached = argv
        if cached is not None:
            blob = b"".join(s.encode() + b"\0" for s in cached)
            fits = len(blob) + L.sizeof("pargs") <= m.PAGE_SIZE // 16  # kern_proc.c: ps_arg_cache_limit
            if fits and spec.pargs is not False:
                pa = m.uma_alloc(L.offsetof("pargs", "ar_args") + len(blob))
                m.set_fields(pa, "pargs", {"ar_ref": 1, "ar_length": len(blob)})
                m.write_kva(pa + L.offsetof("pargs", "ar_args"), blob)
                m.set_fields(va, "proc", {"p_args": pa})
                info["p_args"] = list(cached)
        if system or spec.state == "ZOMBIE":
            m.set_fields(va, "proc", {"p_vmspace": self.vmspace0})
            if system:  # fill_kinfo_proc() counts vmspace0 (empty) plus the kernel stacks
                info["vsize"] = 0
                info["rssize"] = sum(m.KSTACK_PAGES for t in spec.threads)
        elif spec.exec_image:
            vsize, resident, pss = self._address_space(va, self.abis[abi][0], spec, argv, env)
            info["vsize"] = vsize
            info["rssize"] = resident + sum(m.KSTACK_PAGES for t in spec.threads)
            info["ps_strings"] = pss
        else:
            # No user memory forged (benchmarks): a vmspace without a pmap.
            vm = m.alloc_struct("vmspace", {"vm_refcnt": 1})
            m.set_fields(va, "proc", {"p_vmspace": vm})
            info["vsize"] = 0
            info["rssize"] = sum(m.KSTACK_PAGES for t in spec.threads)
        if info["p_args"] is not None:
            info["args_source"] = "p_args"
        elif argv is not None and spec.state != "ZOMBIE" and spec.exec_image:
            info["args_source"] = "ps_strings"

    # ------------------------------------------------------------------
    def abi_of(self, spec) -> str:
        """The ABI a user process runs under: ``native``, or ``compat32`` for ``spec.abi32``.

        On a kernel whose native ABI is already ILP32 (i386) a 32-bit binary
        is simply native; an LP64 kernel without COMPAT_FREEBSD32 cannot run one.
        """
        if not spec.abi32:
            return "native"
        if "compat32" in self.abis:
            return "compat32"
        native = self.abis["native"][0]
        if native.flags & F.SV_ILP32:
            return "native"
        raise ValueError(f"pid {spec.pid}: a {self.m.ARCH} forge kernel has no 32-bit ABI")

    def _address_space(self, va: int, sv: SysvecSpec, spec, argv: Sequence[str],
                        env: Sequence[str]) -> Tuple[int, int, int]:
        """vmspace + user page tables + a user stack laid out like exec_copyout_strings()."""
        m, L = self.m, self.L
        page_size, page_mask = m.PAGE_SIZE, m.PAGE_SIZE - 1
        ptr = sv.ptr_size
        usrstack = sv.usrstack
        # Stack randomisation (14+): vm_stacktop sits a random, pointer-aligned gap below sv_usrstack.
        gap = (spec.pid * 0x9E3779B1) % 0x40000 & ~(ptr - 1)
        stacktop = usrstack - gap
        pss_size = L.sizeof(sv.pss_type)
        pss = stacktop - pss_size
        strings = [s.encode() + b"\0" for s in list(argv) + list(env)]
        blob = b"".join(strings)
        str_base = (pss - len(blob)) & ~(ptr - 1)
        addrs, cursor = [], str_base
        for s in strings:
            addrs.append(cursor)
            cursor += len(s)
        argc = len(argv)
        words = [argc] + addrs[:argc] + [0] + addrs[argc:] + [0] + [AT_NULL, 0]
        vec_base = (str_base - len(words) * ptr) & ~15
        argv_ptr = vec_base + ptr
        env_ptr = argv_ptr + (argc + 1) * ptr
        code = {4: "I", 8: "Q"}[ptr]
        image = {vec_base: struct.pack(f"<{len(words)}{code}", *words), str_base: blob}
        pss_bytes = bytearray(pss_size)
        for name, value in (("ps_argvstr", argv_ptr), ("ps_nargvstr", argc), ("ps_envstr", env_ptr),
                            ("ps_nenvstr", len(env))):
            off, desc = L.field(sv.pss_type, name)
            encoded = L.encode(desc, value)
            pss_bytes[off:off + len(encoded)] = encoded
        image[pss] = bytes(pss_bytes)

        root, pmap_fields = m.new_user_pmap()  # pmap_pinit()
        pages: Dict[int, int] = {}
        for page in range(vec_base & ~page_mask, stacktop, page_size):
            pages[page] = m.alloc_page()
            m.map_page(page, pages[page], root=root, user=True)
        for where, data in image.items():
            while data:
                n = min(len(data), page_size - (where & page_mask))
                m.mem.write(pages[where & ~page_mask] + (where & page_mask), data[:n])
                where += n
                data = data[n:]
        ssize = len(pages)
        text_pages, data_pages = 24 + spec.pid % 7, 40 + spec.pid % 13
        vsize = (text_pages + data_pages) * page_size + 512 * page_size  # text + data + reserved stack
        resident = ssize + text_pages + data_pages // 2
        vm = m.alloc_struct("vmspace")
        values = {
            "vm_map.size": vsize, "vm_map.pmap": vm + L.offsetof("vmspace", "vm_pmap"),
            "vm_ssize": ssize, "vm_tsize": text_pages, "vm_dsize": data_pages,
            "vm_stacktop": stacktop, "vm_maxsaddr": usrstack - (512 << 12), "vm_refcnt": 1,
            "vm_pmap.pm_stats.resident_count": resident, **pmap_fields,
        }
        m.set_fields(vm, "vmspace", {k: v for k, v in values.items() if L.has_field("vmspace", k)})
        m.set_fields(va, "proc", {"p_vmspace": vm})
        return vsize, resident, pss


#: The demo machine's job control, times and command lines, by pid (see scenario.py).
#: Daemons setsid() at boot; alice logs in over ssh (pts/0) and su's to root; getty
#: holds ttyv0; postgres's command line is too long for p_args (only the user
#: stack has it); the implant is a 32-bit binary hiding behind a kernel-ish name.
_PATH = "PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
DEMO_USERLAND: Dict[int, Dict[str, Any]] = {
    1: dict(setsid=True, login="root", start=0.9, argv=["/sbin/init"]),
    412: dict(setsid=True, start=7.25, argv=["/sbin/devd"], env=[_PATH, "HOME=/"]),
    562: dict(setsid=True, start=8.5, argv=["/usr/sbin/syslogd", "-s"], env=[_PATH, "HOME=/"]),
    640: dict(setsid=True, start=9.125, argv=["/usr/sbin/ntpd", "-p", "/var/db/ntp/ntpd.pid", "-c",
                                               "/etc/ntp.conf", "-f", "/var/db/ntpd.drift"], env=[_PATH]),
    712: dict(setsid=True, start=10.0, argv=["/usr/sbin/sshd"], env=[_PATH, "HOME=/", "RC_PID=20"]),
    730: dict(setsid=True, start=10.5, argv=["/usr/sbin/cron", "-s"], env=[_PATH, "HOME=/"]),
    741: dict(setsid=True, start=11.0, argv=["nginx: master process /usr/local/sbin/nginx"], env=[_PATH]),
    742: dict(start=11.01, argv=["nginx: worker process"], env=[_PATH]),
    790: dict(setsid=True, ctty="ttyv0", foreground=True, start=12.0,
              argv=["/usr/libexec/getty", "Pc", "ttyv0"], env=["TERM=xterm"]),
    810: dict(setsid=True, start=14.75, nice=5, argv=[
        "/usr/local/bin/postgres", "-D", "/var/db/postgres/data16", "-c", "config_file=/usr/local/etc/postgresql/"
        "postgresql.conf", "-c", "hba_file=/usr/local/etc/postgresql/pg_hba.conf", "-c",
        "ident_file=/usr/local/etc/postgresql/pg_ident.conf", "-c", "shared_buffers=2GB", "-c",
        "log_destination=syslog"],
        env=["PGDATA=/var/db/postgres/data16", "PGUSER=postgres", "LANG=C.UTF-8", _PATH, "HOME=/var/db/postgres"]),
    901: dict(start=UPTIME - 3700.5, argv=["sshd: alice [priv]"], env=[_PATH]),
    903: dict(start=UPTIME - 3700.25, argv=["sshd: alice@pts/0"], env=[_PATH]),
    904: dict(setsid=True, ctty="pts/0", login="alice", start=UPTIME - 3700.0, argv=["-sh"],
              env=["USER=alice", "LOGNAME=alice", "HOME=/home/alice", "SHELL=/bin/sh", "TERM=xterm-256color",
                   "SSH_CLIENT=198.51.100.23 50022 22", "SSH_TTY=/dev/pts/0", _PATH]),
    1010: dict(setpgid=True, start=UPTIME - 3000.0, argv=["vi", "/etc/rc.conf"],
               env=["USER=alice", "HOME=/home/alice", "TERM=xterm-256color"]),
    1011: dict(setpgid=True, start=UPTIME - 2000.0, argv=["sleep", "1"], env=["USER=alice"]),
    1012: dict(setpgid=True, start=UPTIME - 1800.0, argv=["su", "-"], env=["USER=alice", "HOME=/home/alice"]),
    1013: dict(start=UPTIME - 1795.0, argv=["-su"], env=["USER=root", "HOME=/root", "SHELL=/bin/csh", _PATH]),
    1020: dict(setsid=True, start=UPTIME - 600.0, abi32=True,
               argv=["./exfiltrate-daemon12", "--beacon", "203.0.113.7:443"],
               env=["LD_PRELOAD=/tmp/.x/libhide.so", "HOME=/tmp/.x"]),
    1014: dict(setpgid=True, start=UPTIME - 300.0, argv=["tar", "-czf", "/tmp/home.tgz", "/home/alice"],
               env=["USER=alice", "HOME=/home/alice"]),
    1021: dict(setpgid=True, foreground=True, start=UPTIME - 2.5, argv=["procstat", "-a", "-b"],
               env=["USER=root", "HOME=/root", _PATH]),
}


def with_demo_userland(specs: list) -> list:
    """The demo specs with :data:`DEMO_USERLAND` applied (dataclasses.replace)."""
    from dataclasses import replace

    return [replace(s, **DEMO_USERLAND.get(s.pid, {})) for s in specs]
