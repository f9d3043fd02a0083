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
  (PAGE_SIZE / 16), and a ``vmspace`` whose pmap has its own PML4 (kernel
  half copied, as ``pmap_pinit()`` does) mapping a user stack with
  ``ps_strings`` at ``vm_stacktop - sv_psstringssz`` above the argv/envp
  vectors and strings (``exec_copyout_strings()``).  User pages and user
  page-table pages come from the ordinary free pool, so minidumps (which
  dump kernel memory only) do not contain them; full dumps and raw images do.
* **zombies** keep ``p_args`` (freed only when reaped) but their
  ``p_vmspace`` is ``&vmspace0`` (``vmspace_exit()``).

The ground truth goes into each process's manifest entry.
"""

import struct
from typing import Any, Dict, List, Sequence, Tuple

from kvm_vol import freebsd as F
from kvm_vol.core import amd64 as A

PAGE = A.PAGE_SIZE
#: amd64 vmparam.h: USRSTACK_LA48 = SHAREDPAGE_LA48 = VM_MAXUSER_ADDRESS_LA48 - PAGE_SIZE.
USRSTACK = 0x800000000000 - PAGE
#: compat/freebsd32: FREEBSD32_USRSTACK = FREEBSD32_SHAREDPAGE = FREEBSD32_MAXUSER = 4 GiB - 2 pages.
FREEBSD32_USRSTACK = (1 << 32) - 2 * PAGE
PS_ARG_CACHE_LIMIT = PAGE // 16  # kern_proc.c: ps_arg_cache_limit
PMAP_NO_CR3 = 0xFFFFFFFFFFFFFFFF  # pm_ucr3 when PTI is off
AT_NULL = 0
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
        self.sysvec = {
            "null": self._sysentvec("null_sysvec", "null", 0, 0),
            "elf64": self._sysentvec("elf64_freebsd_sysvec", "FreeBSD ELF64", F.SV_LP64, USRSTACK,
                                     L.sizeof("ps_strings")),
            "elf32": self._sysentvec("ia32_freebsd_sysvec", "FreeBSD ELF32", F.SV_ILP32 | F.SV_IA32,
                                     FREEBSD32_USRSTACK, L.sizeof("freebsd32_ps_strings")),
        }
        # vmspace0 is the kernel's (and every kernel process's) address space.
        self.vmspace0 = m.kernel_var("vmspace0", {"kind": "struct", "name": "vmspace"})
        m.set_fields(self.vmspace0, "vmspace", {"vm_pmap.pm_cr3": m.kpml4phys, "vm_pmap.pm_ucr3": PMAP_NO_CR3,
                                                "vm_refcnt": 1})
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
            values.update({"sv_usrstack": usrstack, "sv_maxuser": usrstack + PAGE,
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
        return int.from_bytes(self.m.read_kva(pgrp + self.L.offsetof("pgrp", "pg_session"), 8), "little")

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

        abi = "null" if system else ("elf32" if spec.abi32 else "elf64")
        m.set_fields(va, "proc", {"p_sysent": self.sysvec[abi]})
        info["emul"] = {"null": "null", "elf64": "FreeBSD ELF64", "elf32": "FreeBSD ELF32"}[abi]

        argv = None if system else list(spec.argv if spec.argv is not None else [spec.comm])
        env = None if system else list(spec.env)
        info.update({"argv": argv, "env": env, "args_source": None, "p_args": None,
                     "vsize": None, "rssize": None})
        # p_args: kern_exec caches the argument strings when they fit.
        cached = argv
        if cached is not None:
            blob = b"".join(s.encode() + b"\0" for s in cached)
            fits = len(blob) + L.sizeof("pargs") <= PS_ARG_CACHE_LIMIT
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
            vsize, resident, pss = self._address_space(va, spec, argv, env)
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
    def _address_space(self, va: int, spec, argv: Sequence[str], env: Sequence[str]) -> Tuple[int, int, int]:
        """vmspace + user PML4 + a user stack laid out like exec_copyout_strings()."""
        m, L = self.m, self.L
        ilp32 = spec.abi32
        ptr = 4 if ilp32 else 8
        usrstack = FREEBSD32_USRSTACK if ilp32 else USRSTACK
        # Stack randomisation (14+): vm_stacktop sits a random, pointer-aligned gap below sv_usrstack.
        gap = (spec.pid * 0x9E3779B1) % 0x40000 & ~(ptr - 1)
        stacktop = usrstack - gap
        pss_size = L.sizeof("freebsd32_ps_strings" if ilp32 else "ps_strings")
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
        code = "I" if ilp32 else "Q"
        image = {vec_base: struct.pack(f"<{len(words)}{code}", *words), str_base: blob}
        if ilp32:
            image[pss] = struct.pack("<IiIi", argv_ptr, argc, env_ptr, len(env))
        else:
            image[pss] = struct.pack("<QI4xQI4x", argv_ptr, argc, env_ptr, len(env))

        # pmap_pinit(): a fresh PML4 with the kernel's half copied, the recursive slot its own.
        pml4 = m.alloc_page()
        for i in range(A.NPML4EPG // 2, A.NPML4EPG):
            entry = m.mem.read_u64(m.kpml4phys + 8 * i)
            if entry:
                m.mem.write_u64(pml4 + 8 * i, entry)
        m.mem.write_u64(pml4 + 8 * A.PML4PML4I, pml4 | A.PG_V | A.PG_RW | A.PG_NX)
        pages: Dict[int, int] = {}
        for page in range(vec_base & ~A.PAGE_MASK, stacktop, PAGE):
            pages[page] = m.alloc_page()
            m.map_page(page, pages[page], root=pml4, user=True)
        for where, data in image.items():
            while data:
                n = min(len(data), PAGE - (where & A.PAGE_MASK))
                m.mem.write(pages[where & ~A.PAGE_MASK] + (where & A.PAGE_MASK), data[:n])
                where += n
                data = data[n:]
        ssize = len(pages)
        text_pages, data_pages = 24 + spec.pid % 7, 40 + spec.pid % 13
        vsize = (text_pages + data_pages) * PAGE + 512 * PAGE  # text + data + reserved stack
        resident = ssize + text_pages + data_pages // 2
        vm = m.alloc_struct("vmspace")
        values = {
            "vm_map.size": vsize, "vm_map.pmap": vm + L.offsetof("vmspace", "vm_pmap"),
            "vm_ssize": ssize, "vm_tsize": text_pages, "vm_dsize": data_pages,
            "vm_stacktop": stacktop, "vm_maxsaddr": usrstack - (512 << 12), "vm_refcnt": 1,
            "vm_pmap.pm_cr3": pml4, "vm_pmap.pm_ucr3": PMAP_NO_CR3,
            "vm_pmap.pm_pmltop": m.dmap(pml4), "vm_pmap.pm_stats.resident_count": resident,
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
