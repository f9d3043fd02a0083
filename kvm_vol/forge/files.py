"""Open files of a synthetic FreeBSD: mounts, vnodes, the name cache, descriptor tables.

Built the way the kernel builds them, on the release's layouts:

* **Mounts**: ``/`` (ufs; its root vnode is ``rootvnode``), ``/dev`` (devfs)
  and ``/tmp`` (tmpfs).  A mount's root vnode has ``VV_ROOT`` in
  ``v_vflag`` and its ``mnt_vnodecovered`` is the directory it is mounted
  on, which is how ``vn_fullpath()`` crosses mount points.
* **Name cache** (vfs_cache.c ``cache_enter_time()``): one ``struct
  namecache`` per cached (directory, name) -> vnode, on the target's
  ``v_cache_dst`` TAILQ and the directory's ``v_cache_src`` LIST; a
  directory's ``v_cache_dd`` points at the entry naming it.  Paths listed
  in :data:`EVICTED` are opened but their last component has left the
  cache (``cache_purge()``), so no path can be rebuilt for them.
* **Descriptor tables** (kern_descrip.c): ``p_fd`` -> ``struct filedesc``,
  whose ``fd_files`` is a ``struct fdescenttbl`` of ``fdt_nfiles``
  (NDFILE = 20 at first, grown in NDENTRIES = 64 steps, 32 on ILP32) ``struct
  filedescent`` slots; closed descriptors are NULL ``fde_file`` holes.
  ``p_pd`` -> ``struct pwddesc`` -> ``pd_pwd`` (an SMR pointer) -> ``struct
  pwd`` with the cwd, root and jail directories; ``p_textvp`` is the
  executable's vnode.
* **Files** (``finit()``): ``f_type`` (DTYPE_*), ``f_flag`` (FFLAGS of the
  open flags), ``f_offset``, ``f_data`` (the vnode, socket, pipe ...) and
  ``f_vnode``.
* **Sockets**: ``so_proto`` -> ``struct protosw`` (static in the kernel
  image, like ``tcp_protosw``) -> ``pr_domain`` -> ``struct domain``
  (``inetdomain`` ...); ``so_pcb`` -> ``struct inpcb`` whose ``inp_inc``
  holds addresses and ports in network byte order, or ``struct unpcb`` with
  ``unp_addr`` (the bound path) and ``unp_conn`` (the connected peer).
* **Pipes**: a ``struct pipepair`` holds both ends; each ``pipe_peer``
  points at the other.
* **Terminals**: the sessions made with the processes
  (:mod:`kvm_vol.forge.userland`) get their ``s_ttyvp`` turned into the
  devfs vnode of their terminal (:meth:`Files.adopt_ttys`), so every member
  of a session shows a ``ctty`` entry, zombies included.

Shared memory, semaphores, pty masters, socket queues, ktrace and
memory-mapped files are written by :mod:`kvm_vol.forge.fileextras`.

The expected ``freebsd.files`` rows go to the manifest (``files``: pid ->
rows; ``mmap``: pid -> the rows ``--mmap`` adds) from the specification,
formatted independently of kvm-vol's readers.
"""

import ipaddress
from typing import Any, Dict, List, Optional, Tuple

from kvm_vol import freebsd as F
from kvm_vol.forge import fileextras as X
from kvm_vol.forge.kernel import Kernel


#: Opened paths whose name has been purged from the name cache.
EVICTED = ("/tmp/.x11-unix/.payload",)

_FLAG_LETTERS = "rwasfndl"

#: Executables of the demo's processes that are not in /usr/bin.
_TEXT = {"init": "/sbin/init", "devd": "/sbin/devd", "ntpd": "/usr/sbin/ntpd", "cron": "/usr/sbin/cron",
         "nginx": "/usr/local/sbin/nginx", "getty": "/usr/libexec/getty", "postgres": "/usr/local/bin/postgres",
         "csh": "/bin/csh", "sh": "/bin/sh"}


def flag_string(flag: int) -> str:
    """procstat -f's FL column for ``f_flag`` (independent of the reader's table)."""
    bits = (F.FREAD, F.FWRITE, F.O_APPEND, 0x40, 0x80, F.O_NONBLOCK, 0x10000, 0x4000)
    return "".join(letter if flag & bit else "-" for bit, letter in zip(bits, _FLAG_LETTERS))


def _net16(port: int) -> int:
    """A port as the kernel stores it (network byte order), read back as a little-endian u16."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


class Files:
    """Writes the VFS, sockets, pipes and descriptor tables into a :class:`Kernel`'s machine."""

    def __init__(self, kernel: Kernel):
        self.k, self.m, self.L = kernel, kernel.m, kernel.L
        self.vtype_enum = self.L.field("vnode", "v_type")[1]["name"]
        self.vnodes: Dict[str, int] = {}  # path -> vnode VA (the vnode that path names)
        self.vtypes: Dict[int, str] = {}
        self.mounts: Dict[str, Tuple[int, int]] = {}  # mount point -> (mount VA, root vnode VA)
        self.rows: Dict[int, List[Dict[str, Any]]] = {}
        self._domains: Dict[str, int] = {}
        self._protos: Dict[Tuple[str, str], int] = {}
        self.ctty: Dict[int, str] = {}  # pid -> path of its controlling terminal
        self._build_vfs()

    # ------------------------------------------------------------------ VFS
    def _vnode(self, vtype: str, mount: int, vflag: int = 0, rdev: int = 0) -> int:
        m = self.m
        vp = m.alloc_struct("vnode")
        values = {"v_type": self.L.enum_value(self.vtype_enum, vtype), "v_vflag": vflag, "v_mount": mount,
                  "v_usecount": 1, "v_holdcnt": 1}
        if rdev:
            values["v_rdev"] = rdev
        m.set_fields(vp, "vnode", values)
        # TAILQ_INIT(&vp->v_cache_dst): tqh_last = &tqh_first
        dst = vp + self.L.offsetof("vnode", "v_cache_dst")
        m.write_ptr(dst + m.ptr_size, dst)
        self.vtypes[vp] = vtype
        return vp

    def _mount(self, point: str, fstype: str, covered: int) -> Tuple[int, int]:
        m = self.m
        mp = m.alloc_struct("mount")
        root = self._vnode("VDIR", mp, vflag=F.VV_ROOT)
        m.set_fields(mp, "mount", {"mnt_vnodecovered": covered, "mnt_rootvnode": root,
                                   "mnt_stat.f_mntonname": point.encode(),
                                   "mnt_stat.f_fstypename": fstype.encode()})
        if covered:
            m.set_fields(covered, "vnode", {"v_mountedhere": mp})
        self.mounts[point] = (mp, root)
        self.vnodes[point] = root
        return mp, root

    def _cache_enter(self, dvp: int, name: str, vp: int) -> int:
        """cache_enter_time(): a positive entry dvp/name -> vp."""
        m, L = self.m, self.L
        raw = name.encode()
        ncp = m.uma_alloc(L.sizeof("namecache") + len(raw) + 1, align=8)
        m.set_fields(ncp, "namecache", {"nc_dvp": dvp, "n_un.nu_vp": vp, "nc_flag": 0, "nc_nlen": len(raw)})
        m.write_kva(ncp + L.offsetof("namecache", "nc_name"), raw + b"\0")
        # TAILQ_INSERT_HEAD(&vp->v_cache_dst, ncp, nc_dst): (tqe_next, tqe_prev), (tqh_first, tqh_last)
        ptr = m.ptr_size
        dst = vp + L.offsetof("vnode", "v_cache_dst")
        nc_dst = ncp + L.offsetof("namecache", "nc_dst")
        first = m.read_ptr(dst)
        m.write_ptr(nc_dst, first)
        if first:
            m.write_ptr(first + L.offsetof("namecache", "nc_dst") + ptr, nc_dst)
        else:
            m.write_ptr(dst + ptr, nc_dst)
        m.write_ptr(dst, ncp)
        m.write_ptr(nc_dst + ptr, dst)
        # LIST_INSERT_HEAD(&dvp->v_cache_src, ncp, nc_src)
        self.k._list_insert_head(dvp + L.offsetof("vnode", "v_cache_src"), ncp, L.offsetof("namecache", "nc_src"))
        if self.vtypes.get(vp) == "VDIR":
            m.set_fields(vp, "vnode", {"v_cache_dd": ncp})
        return ncp

    def _cdev(self, name: str) -> int:
        return self.m.alloc_struct("cdev", {"si_name": name.encode()})

    def node(self, path: str, vtype: str = "VREG", cached: bool = True, cdev: Optional[str] = None) -> int:
        """The vnode ``path`` names, creating it and its directories (all cached unless told)."""
        if path in self.vnodes:
            return self.vnodes[path]
        parent_path, name = path.rsplit("/", 1)
        parent_path = parent_path or "/"
        dvp = self.node(parent_path, "VDIR")
        mp = self.m.read_ptr(dvp + self.L.offsetof("vnode", "v_mount"))
        rdev = self._cdev(cdev) if cdev else 0
        vp = self._vnode(vtype, mp, rdev=rdev)
        if cached:
            self._cache_enter(dvp, name, vp)
        self.vnodes[path] = vp
        return vp

    def has_address_space(self, pid: int) -> bool:
        """Whether ``pid`` has a user vmspace of its own (not vmspace0, not a zombie's)."""
        vm = self.m.read_ptr(self.k.procs[pid] + self.L.offsetof("proc", "p_vmspace"))
        return bool(vm) and vm != self.m.symbols.get("vmspace0")

    def adopt_ttys(self) -> None:
        """Make each session's ``s_ttyvp`` the devfs vnode of its terminal.

        Sessions and terminals are made with the processes
        (:mod:`kvm_vol.forge.userland`); their ``s_ttyvp`` is the vnode the
        session leader opened.  Here it becomes what devfs makes it: a VCHR
        vnode on the devfs mount whose ``v_rdev`` is the terminal's cdev
        (``t_dev``), named ``/dev/<si_name>`` in the name cache.  Read from
        the forge's own memory, so this works whatever built the sessions.
        """
        m, L = self.m, self.L

        def ptr(va: int, struct: str, field: str) -> int:
            return m.read_ptr(va + L.offsetof(struct, field)) if va else 0

        for pid, va in sorted(self.k.procs.items()):
            # kern_proc_filedesc_out() reports p_pgrp->pg_session->s_ttyvp, P_CONTROLT or not.
            session = ptr(ptr(va, "proc", "p_pgrp"), "pgrp", "pg_session")
            vp, tp = ptr(session, "session", "s_ttyvp"), ptr(session, "session", "s_ttyp")
            cdev = ptr(tp, "tty", "t_dev")
            if not (vp and cdev):
                continue
            name = m.read_kva(cdev + L.offsetof("cdev", "si_name"), 64).split(b"\0")[0].decode()
            path = "/dev/" + name
            if vp not in self.vtypes and path not in self.vnodes:
                dvp = self.node(path.rsplit("/", 1)[0], "VDIR")
                devfs = self.mounts["/dev"][0]
                m.set_fields(vp, "vnode", {"v_type": L.enum_value(self.vtype_enum, "VCHR"), "v_mount": devfs,
                                           "v_rdev": cdev, "v_usecount": 1, "v_holdcnt": 1})
                dst = vp + L.offsetof("vnode", "v_cache_dst")
                m.write_ptr(dst + m.ptr_size, dst)  # TAILQ_INIT
                self.vtypes[vp] = "VCHR"
                self._cache_enter(dvp, path.rsplit("/", 1)[1], vp)
                self.vnodes[path] = vp
            if self.vnodes.get(path) == vp:
                self.ctty[pid] = path

    def _build_vfs(self) -> None:
        m = self.m
        _mp, root = self._mount("/", "ufs", 0)
        m.kernel_var("rootvnode", {"kind": "pointer", "subtype": {"kind": "struct", "name": "vnode"}}, root)
        # Directories the other mounts cover exist on the root file system first.
        self._mount("/dev", "devfs", self.node("/dev", "VDIR"))
        self._mount("/tmp", "tmpfs", self.node("/tmp", "VDIR"))

    # ------------------------------------------------------------------ sockets
    def _domain(self, name: str, family: int) -> int:
        if name not in self._domains:
            m = self.m
            sym = {"internet": "inetdomain", "internet6": "inet6domain", "local": "localdomain"}[name]
            va = m.kernel_var(sym, {"kind": "struct", "name": "domain"})
            m.set_fields(va, "domain", {"dom_family": family, "dom_name": m.place_rodata(name.encode() + b"\0")})
            self._domains[name] = va
        return self._domains[name]

    def _protosw(self, domain: str, family: int, sotype: int, proto: int, sym: str) -> int:
        key = (domain, sym)
        if key not in self._protos:
            va = self.m.kernel_var(sym, {"kind": "struct", "name": "protosw"})
            self.m.set_fields(va, "protosw", {"pr_type": sotype, "pr_protocol": proto,
                                              "pr_domain": self._domain(domain, family)})
            self._protos[key] = va
        return self._protos[key]

    def inet_socket(self, proto: str, laddr: str, lport: int, faddr: str = "0.0.0.0", fport: int = 0) -> Tuple[int, str]:
        """A TCP or UDP socket with its inpcb; returns (socket VA, expected DETAILS)."""
        m, L = self.m, self.L
        v6 = ":" in laddr
        domain, family = ("internet6", F.AF_INET6) if v6 else ("internet", F.AF_INET)
        sotype, number = (1, 6) if proto == "TCP" else (2, 17)
        sym = f"{proto.lower()}{'6' if v6 else ''}_protosw"
        so = m.alloc_struct("socket")
        inp = m.alloc_struct("inpcb")
        m.set_fields(so, "socket", {"so_type": sotype, "so_proto": self._protosw(domain, family, sotype, number, sym),
                                    "so_pcb": inp, "so_count": 1})
        ie = "inp_inc.inc_ie."
        values = {"inp_socket": so, "inp_vflag": F.INP_IPV6 if v6 else F.INP_IPV4,
                  ie + "ie_lport": _net16(lport), ie + "ie_fport": _net16(fport)}
        m.set_fields(inp, "inpcb", values)
        for field, addr in (("ie_dependladdr", laddr), ("ie_dependfaddr", faddr)):
            off = L.offsetof("inpcb", "inp_inc.inc_ie." + field)
            packed = ipaddress.ip_address(addr).packed
            m.write_kva(inp + off + (0 if v6 else 12), packed)  # v4: in_addr_4in6.ia46_addr4
        fmt = (lambda a, p: f"[{a}]:{p}") if v6 else (lambda a, p: f"{a}:{p}")
        details = f"{domain} {F.SOCK_TYPES[sotype]} {proto} {fmt(laddr, lport)}"
        if fport:
            details += f" -> {fmt(faddr, fport)}"
        return so, details

    def unix_socket(self, sotype: int, path: Optional[str] = None, peer: Optional[int] = None) -> Tuple[int, int]:
        """An AF_UNIX socket; returns (socket VA, unpcb VA)."""
        m, L = self.m, self.L
        sym = {1: "streamproto", 2: "dgramproto"}[sotype]
        so = m.alloc_struct("socket")
        unp = m.alloc_struct("unpcb")
        m.set_fields(so, "socket", {"so_type": sotype, "so_pcb": unp, "so_count": 1,
                                    "so_proto": self._protosw("local", F.AF_UNIX, sotype, 0, sym)})
        values: Dict[str, Any] = {"unp_socket": so}
        if path:
            sun = m.uma_alloc(L.sizeof("sockaddr_un"))
            m.set_fields(sun, "sockaddr_un", {"sun_len": 2 + len(path) + 1, "sun_family": F.AF_UNIX,
                                              "sun_path": path.encode()})
            values["unp_addr"] = sun
            vp = self.node(path, "VSOCK")
            values["unp_vnode"] = vp
            m.set_fields(vp, "vnode", {"v_unpcb": unp})
        if peer:
            values["unp_conn"] = peer
        m.set_fields(unp, "unpcb", values)
        return so, unp

    def pipe(self, buffered: int = 0) -> Tuple[int, int]:
        """pipe(2): a pipepair; returns (read end, write end) struct pipe VAs."""
        m, L = self.m, self.L
        pp = m.alloc_struct("pipepair")
        rpipe = pp + L.offsetof("pipepair", "pp_rpipe")
        wpipe = pp + L.offsetof("pipepair", "pp_wpipe")
        for this, other in ((rpipe, wpipe), (wpipe, rpipe)):
            m.set_fields(this, "pipe", {"pipe_peer": other, "pipe_pair": pp, "pipe_present": 1})
        m.set_fields(rpipe, "pipe", {"pipe_buffer.cnt": buffered})
        return rpipe, wpipe

    # ------------------------------------------------------------------ files
    def file(self, dtype: int, flag: int, data: int = 0, vnode: int = 0, offset: int = 0) -> int:
        fp = self.m.alloc_struct("file")
        self.m.set_fields(fp, "file", {"f_type": dtype, "f_flag": flag, "f_data": data, "f_vnode": vnode,
                                       "f_offset": offset, "f_count": 1})
        return fp

    def vnode_file(self, path: str, flag: int, offset: int = 0, vtype: str = "VREG",
                   cdev: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        cached = path not in EVICTED
        vp = self.node(path, vtype, cached=cached, cdev=cdev)
        dtype = F.DTYPE_FIFO if vtype == "VFIFO" else F.DTYPE_VNODE
        fp = self.file(dtype, flag, data=vp, vnode=vp, offset=offset)
        row = {"TYPE": F.DTYPE_NAMES[dtype], "FLAGS": flag_string(flag), "OFFSET": offset, "VTYPE": vtype,
               "Path": path if cached else None,
               "DETAILS": (f"dev {cdev}" if cdev else "") if cached else "path not in name cache"}
        return fp, row

    def pseudo_row(self, name: str, path: str, flag: int = F.FREAD) -> Dict[str, Any]:
        details = "dev " + path[len("/dev/"):] if self.vtypes[self.vnodes[path]] == "VCHR" else ""
        return {"FD": name, "TYPE": "VNODE", "FLAGS": flag_string(flag), "OFFSET": None,
                "VTYPE": self.vtypes[self.vnodes[path]], "Path": path, "DETAILS": details}

    def ctty_rows(self, pid: int) -> List[Dict[str, Any]]:
        if pid not in self.ctty:
            return []
        return [self.pseudo_row(F.FD_CTTY, self.ctty[pid], F.FREAD | F.FWRITE)]

    def process(self, pid: int, text: Optional[str], cwd: str, fds: Dict[int, Tuple[int, Dict[str, Any]]],
                root: str = "/", jail: Optional[str] = None) -> None:
        """Give process ``pid`` its pwd, text vnode and descriptor table (fd -> (file, row))."""
        m, L = self.m, self.L
        proc = self.k.procs[pid]
        step = F.ndentries(m.ptr_size)  # fdgrowtable(): whole map words
        nfiles = F.NDFILE if not fds or max(fds) < F.NDFILE else step * (max(fds) // step + 1)
        esize = L.sizeof("filedescent")
        table = m.uma_alloc(L.offsetof("fdescenttbl", "fdt_ofiles") + nfiles * esize)
        m.set_fields(table, "fdescenttbl", {"fdt_nfiles": nfiles})
        for fd, (fp, _row) in fds.items():
            m.write_ptr(table + L.offsetof("fdescenttbl", "fdt_ofiles") + fd * esize, fp)  # fde_file
        free = next(i for i in range(nfiles + 1) if i not in fds)
        fdp = m.alloc_struct("filedesc", {"fd_files": table, "fd_refcnt": 1, "fd_holdcnt": 1,
                                          "fd_freefile": free})
        pwd = m.alloc_struct("pwd", {"pwd_refcount": 1, "pwd_cdir": self.node(cwd, "VDIR"),
                                     "pwd_rdir": self.node(root, "VDIR"),
                                     "pwd_jdir": self.node(jail, "VDIR") if jail else 0})
        pdp = m.alloc_struct("pwddesc", {"pd_refcount": 1, "pd_pwd.__ptr": pwd, "pd_cmask": 0o22})
        values = {"p_fd": fdp, "p_pd": pdp}
        if text:
            values["p_textvp"] = self.node(text, "VREG")
        m.set_fields(proc, "proc", values)

        rows = []

        def pseudo(name: str, path: str, flag: int = F.FREAD) -> None:
            rows.append(self.pseudo_row(name, path, flag))

        # kern_proc_filedesc_out() order: text, ctty, cwd, root, jail, then descriptors.
        if text:
            pseudo(F.FD_TEXT, text)
        rows.extend(self.ctty_rows(pid))
        pseudo(F.FD_CWD, cwd)
        pseudo(F.FD_ROOT, root)
        if jail:
            pseudo(F.FD_JAIL, jail)
        for fd in sorted(fds):
            row = dict(fds[fd][1])
            row["FD"] = str(fd)
            rows.append(row)
        self.rows[pid] = rows


def populate(kernel: Kernel) -> Dict[str, Any]:
    """Open files of the demo population (only for pids that exist); returns manifest keys."""
    fs = Files(kernel)
    fs.adopt_ttys()
    pids = set(kernel.procs)
    RW, R, W = F.FREAD | F.FWRITE, F.FREAD, F.FWRITE
    tty = lambda n: fs.vnode_file(f"/dev/{n}", RW, vtype="VCHR", cdev=n)  # noqa: E731
    RX, RW_ = F.VM_PROT_READ | F.VM_PROT_EXECUTE, F.VM_PROT_READ | F.VM_PROT_WRITE
    mmaps: Dict[int, List[Dict[str, Any]]] = {}  # pid -> expected rows of freebsd.files --mmap

    # Every live kernel process has an empty table and "/" as cwd and root.
    for pid in sorted(pids):
        spec = next(p for p in kernel.manifest_procs if p["pid"] == pid)
        if spec["p_state"] == "PRS_ZOMBIE":
            # exit1() freed the tables (p_fd, p_pd NULL); p_pgrp stays until the reap.
            fs.rows[pid] = fs.ctty_rows(pid)
            continue
        if spec["flags"] & F.P_KPROC:
            fs.process(pid, None, "/", {})

    # syslogd: /var/run/log (a bound datagram socket), its log file, a UDP socket.
    log_so, log_unp = fs.unix_socket(2, "/var/run/log")
    if 562 in pids:
        udp, udp_details = fs.inet_socket("UDP", "0.0.0.0", 514)
        fd0 = fs.vnode_file("/dev/null", RW, vtype="VCHR", cdev="null")
        fds = {0: fd0, 1: fd0, 2: fd0,
               3: (fs.file(F.DTYPE_SOCKET, RW, data=log_so),
                   {"TYPE": "SOCKET", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None, "Path": None,
                    "DETAILS": "local DGRAM /var/run/log " + X.buffers(fs, log_so, rcv=312)}),
               5: (fs.file(F.DTYPE_SOCKET, RW, data=udp),
                   {"TYPE": "SOCKET", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None, "Path": None,
                    "DETAILS": udp_details + " " + X.buffers(fs, udp)}),
               7: fs.vnode_file("/var/log/messages", W | F.O_APPEND, offset=184321)}
        fs.process(562, "/usr/sbin/syslogd", "/", fds)

    # sshd listening on v4 and v6; the session's sshd with an established connection.
    if 712 in pids:
        l4, d4 = fs.inet_socket("TCP", "0.0.0.0", 22)
        l6, d6 = fs.inet_socket("TCP", "::", 22)
        null = fs.vnode_file("/dev/null", RW, vtype="VCHR", cdev="null")
        sock = lambda so, d: (fs.file(F.DTYPE_SOCKET, RW, data=so),  # noqa: E731
                              {"TYPE": "SOCKET", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None,
                               "Path": None, "DETAILS": d})
        d4 += " " + X.listening(fs, l4, qlimit=128)  # sshd's SSH_LISTEN_BACKLOG
        d6 += " " + X.listening(fs, l6, qlimit=128)
        fs.process(712, "/usr/sbin/sshd", "/", {0: null, 1: null, 2: null, 3: sock(l4, d4), 4: sock(l6, d6)})
    if 903 in pids:
        est, dest = fs.inet_socket("TCP", "10.0.2.15", 22, "192.0.2.77", 51234)
        client, _cu = fs.unix_socket(2, None, peer=log_unp)  # connected to syslogd's /var/run/log
        fds = {3: (fs.file(F.DTYPE_SOCKET, RW, data=est),
                   {"TYPE": "SOCKET", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None, "Path": None,
                    "DETAILS": dest + " " + X.buffers(fs, est, snd=52)}),
               4: (fs.file(F.DTYPE_SOCKET, RW, data=client),
                   {"TYPE": "SOCKET", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None, "Path": None,
                    "DETAILS": "local DGRAM -> /var/run/log " + X.buffers(fs, client)}),
               6: tty("pts/0")}
        if 904 in pids:  # the master side of the session's pseudo-terminal (posix_openpt)
            fds[5] = X.pts_master(fs, *X.session_tty(fs, 904), RW)
        fs.process(903, "/usr/sbin/sshd", "/", fds)

    # The nginx worker runs in a jail: its root and jail directories are the jail's root.
    if 742 in pids:
        www, dwww = fs.inet_socket("TCP", "10.0.2.15", 80)
        fs.process(742, "/usr/jails/www/usr/local/sbin/nginx", "/usr/jails/www/var/empty", {
            6: (fs.file(F.DTYPE_SOCKET, RW | F.O_NONBLOCK, data=www),
                {"TYPE": "SOCKET", "FLAGS": flag_string(RW | F.O_NONBLOCK), "OFFSET": 0, "VTYPE": None,
                 "Path": None, "DETAILS": dwww + " " + X.listening(fs, www, qlimit=511, qlen=3, incqlen=1)})},
                   root="/usr/jails/www", jail="/usr/jails/www")

    # The user's shell in /home/alice with the tty on 0-2 and a hole at 3.
    if 904 in pids:
        t = tty("pts/0")
        fs.process(904, "/bin/sh", "/home/alice", {0: t, 1: t, 2: t, 10: fs.vnode_file("/home/alice/.profile", R,
                                                                                        offset=1021)})

    # tar writes into a pipe that exfiltrate-daemon12 reads; the daemon also
    # holds a file whose name left the cache, a FIFO and a kqueue, in a
    # descriptor table with holes that has grown past NDFILE.
    if 1014 in pids and 1020 in pids:
        r, w = fs.pipe(buffered=4096)
        tar_fds = {0: fs.vnode_file("/home/alice/project", R, vtype="VDIR"),
                   1: (fs.file(F.DTYPE_PIPE, W, data=w),
                       {"TYPE": "PIPE", "FLAGS": flag_string(W), "OFFSET": 0, "VTYPE": None, "Path": None,
                        "DETAILS": f"pipe {w:#x} peer {r:#x} (pid 1020 fd 0)"}),
                   2: tty("pts/0"),
                   4: fs.vnode_file("/home/alice/project/db.sqlite", R, offset=65536)}
        fs.process(1014, "/usr/bin/tar", "/home/alice", tar_fds)
        kq = fs.m.uma_alloc(256)
        daemon_fds = {
            0: (fs.file(F.DTYPE_PIPE, R, data=r),
                {"TYPE": "PIPE", "FLAGS": flag_string(R), "OFFSET": 0, "VTYPE": None, "Path": None,
                 "DETAILS": f"pipe {r:#x} peer {w:#x} (pid 1014 fd 1) 4096 bytes buffered"}),
            1: fs.vnode_file("/dev/null", RW, vtype="VCHR", cdev="null"),
            3: fs.vnode_file("/tmp/.x11-unix/.payload", RW | F.O_NONBLOCK, offset=7340032),
            5: fs.vnode_file("/tmp/.x11-unix/ctl", R | F.O_NONBLOCK, vtype="VFIFO"),
            9: (fs.file(F.DTYPE_KQUEUE, RW, data=kq),
                {"TYPE": "KQUEUE", "FLAGS": flag_string(RW), "OFFSET": 0, "VTYPE": None, "Path": None,
                 "DETAILS": ""}),
            27: fs.vnode_file("/var/db/.cache/keys.txt", R | F.O_APPEND | F.FWRITE, offset=42),
        }
        # A named semaphore as a single-instance lock.
        daemon_fds[11] = X.sem(fs, "/x11-lock", 0, 0o600, RW)
        fs.process(1020, "/tmp/.x11-unix/exfiltrate-daemon12", "/tmp", daemon_fds)
        # Somebody runs `ktrace -p 1020 -f /root/ktrace.out`: the trace entry comes first.
        fs.rows[1020].insert(0, X.ktrace(fs, 1020, "/root/ktrace.out",
                                         F.KTRFAC_SYSCALL | F.KTRFAC_SYSRET | F.KTRFAC_NAMEI))
        if fs.has_address_space(1020):  # the LD_PRELOADed library, as the runtime linker maps it
            mmaps[1020] = X.mmap(fs, 1020, [
                (0x200000, 0x203000, "/tmp/.x11-unix/exfiltrate-daemon12", 0, RX, True),
                (0x28400000, 0x28402000, "/tmp/.x/libhide.so", 0, RX, True),
                (0x28402000, 0x28403000, "/tmp/.x/libhide.so", 0x2000, RW_, True),
                (0x28600000, 0x28700000, "/lib/libc.so.7", 0, RX, True),
                (0x28800000, 0x28900000, "/var/db/.cache/keys.txt", 0, RW_, False),
            ], anonymous=[(0x28a00000, 0x28b00000)])

    # postgres: POSIX shared memory (a named dynamic segment, the anonymous main
    # segment) and its libraries and a shared file mapping.
    if 810 in pids:
        pg_fds = {3: X.shm(fs, "/PostgreSQL.1804289383", 1 << 20, 0o600, RW),
                  4: X.shm(fs, None, 56 << 20, 0o600, RW)}
        fs.process(810, "/usr/local/bin/postgres", "/var/db/postgres/data16", pg_fds)
        if fs.has_address_space(810):
            mmaps[810] = X.mmap(fs, 810, [
                (0x200000, 0x800000, "/usr/local/bin/postgres", 0, RX, True),
                (0x800000, 0x820000, "/usr/local/bin/postgres", 0x600000, RW_, True),
                (0x28600000, 0x28700000, "/lib/libc.so.7", 0, RX, True),
                (0x30000000, 0x30100000, "/var/db/postgres/data16/pg_wal/000000010000000000000001", 0x100000,
                 F.VM_PROT_READ, False),
            ], anonymous=[(0x40000000, 0x43800000)])
    # Everybody else: the executable and "/" (the demo's other daemons and tools).
    for spec in kernel.manifest_procs:
        pid = spec["pid"]
        if pid in fs.rows or spec["p_state"] == "PRS_ZOMBIE":
            continue
        fs.process(pid, _TEXT.get(spec["comm"], f"/usr/bin/{spec['comm']}"), "/", {})
    return {"files": {str(pid): rows for pid, rows in sorted(fs.rows.items())},
            "mmap": {str(pid): rows for pid, rows in sorted(mmaps.items())},
            "mounts": {point: {"offset": mp, "root": root} for point, (mp, root) in fs.mounts.items()}}
