"""Open files of a process, like ``procstat -f`` (libprocstat's kvm mode, with paths).

For one ``struct proc``:

* pseudo entries in the order ``kern_proc_filedesc_out()`` emits them: the
  ktrace vnode (``p_ktrioparms->vp`` in 14.x/15.0, ``p_tracevp`` on older
  kernels), the text vnode (``p_textvp``), the session's terminal
  (``p_pgrp`` -> ``pg_session`` -> ``s_ttyvp``; the kernel does not look at
  ``P_CONTROLT`` there), then cwd, root and jail directories from ``p_pd``
  -> ``pd_pwd`` (an SMR pointer: ``__ptr``) -> ``struct pwd`` (FreeBSD 13+);
* the descriptor table ``p_fd`` -> ``fd_files`` -> ``struct fdescenttbl``
  (``fdt_nfiles`` slots of ``struct filedescent``); NULL ``fde_file`` slots
  are closed descriptors;
* each ``struct file``: ``f_type`` (DTYPE_*), ``f_flag``, ``f_offset``;
  vnodes (``f_vnode``, for DTYPE_VNODE and DTYPE_FIFO) give ``v_type`` and a
  path; sockets (``f_data``) give ``so_proto`` -> ``pr_domain`` ->
  ``dom_name``, ``so_type``, ``pr_protocol`` and, through ``so_pcb``, the
  inpcb's addresses and ports or the unpcb's bound path and peer; pipes give
  their peer end (``pipe_peer``) and the bytes buffered; shm, semaphores,
  pty masters, socket queues and memory-mapped files are read by
  :mod:`kvm_vol.kvm.fileextras`.

Paths are rebuilt from the name cache the way ``vn_fullpath()`` does
(vfs_cache.c): from the vnode up, a mount's root vnode (``VV_ROOT``) is
replaced by the vnode it covers (``mnt_vnodecovered``); any other vnode is
named by the first non-".." entry on its ``v_cache_dst`` list, whose
``nc_dvp`` is the next vnode; the walk ends at ``rootvnode``.  When a name
has left the cache there is no path (libprocstat shows none in kvm mode at
all).  Every walk is bounded and bad memory only cuts a result short.
"""

import ipaddress
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from volatility3.framework import exceptions, interfaces

from kvm_vol import freebsd as F
from kvm_vol.core.amd64 import canonical
from kvm_vol.kvm.kernelmod import KernelRef, kernel_module
from kvm_vol.kvm import fileextras, queue

vollog = logging.getLogger(__name__)

#: Bounds: MAXPATHLEN is 1024, so a path has fewer components than this.
MAX_COMPONENTS = 512
MAX_NAMES_PER_VNODE = 1024  # hard links of one vnode in the cache
MAX_FILES = 1 << 20  # kern.maxfilesperproc is far below this
FD_CHUNK = 1024  # descriptor slots read at once
NOT_CACHED = "path not in name cache"


@dataclass
class FileRecord:
    """One row of procstat -f."""

    fd: str  # "trace", "text", "ctty", "cwd", "root", "jail" or the descriptor number
    type: str  # DTYPE name without the prefix; VNODE for the pseudo entries
    flags: int  # f_flag (FREAD ... )
    offset: Optional[int] = None  # f_offset; None for pseudo entries
    vtype: Optional[str] = None
    path: Optional[str] = None
    details: str = ""
    file: Optional[int] = None  # struct file VA
    data: Optional[int] = None  # f_data (socket, pipe ...)
    vnode: Optional[int] = None
    pipe_peer: Optional[int] = None
    pipe_buffered: int = 0


def flag_string(flag: int) -> str:
    """procstat -f's FL column: r w a s f n d l, '-' for each absent flag."""
    return "".join(letter if flag & bit else "-" for bit, letter in F.FILE_FLAG_LETTERS)


class Reader:
    """Reads files, vnodes, paths and sockets of one kernel; caches vnode paths."""

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module_name: KernelRef):
        self.context = context
        self.kernel = kernel_module(context, kernel_module_name)
        self.layer = context.layers[self.kernel.layer_name]
        self.table = self.kernel.symbol_table_name
        self._paths: Dict[int, Optional[str]] = {}
        self.rootvnode = 0
        if self.kernel.has_symbol("rootvnode"):
            try:
                self.rootvnode = int(self.kernel.object(
                    object_type="pointer", offset=self.kernel.get_symbol("rootvnode").address))
            except exceptions.InvalidAddressException:
                vollog.warning("rootvnode is unreadable; paths end at the root file system's root")

    def obj(self, type_name: str, address: int):
        return self.context.object(f"{self.table}!{type_name}", layer_name=self.kernel.layer_name, offset=address)

    # ------------------------------------------------------------------ vnodes
    def _cached_name(self, vp) -> Optional[tuple]:
        """(name, parent vnode VA) of the first non-".." name-cache entry naming ``vp``."""
        first = vp.v_cache_dst.tqh_first
        for ncp in queue.walk(first, "nc_dst", "TAILQ", name=f"v_cache_dst of vnode {vp.vol.offset:#x}",
                              limit=MAX_NAMES_PER_VNODE):
            flag = int(ncp.nc_flag)
            if flag & (F.NCF_ISDOTDOT | F.NCF_NEGATIVE):
                continue
            nlen = int(ncp.nc_nlen)
            name = bytes(self.layer.read(ncp.nc_name.vol.offset, nlen)).decode("utf-8", errors="replace")
            return name, int(ncp.nc_dvp)
        return None

    def vnode_path(self, address: int) -> Optional[str]:
        """vn_fullpath() from the name cache; None when a name is not cached or unreadable."""
        if address in self._paths:
            return self._paths[address]
        parts: List[str] = []
        seen = set()
        vp_addr = address
        path: Optional[str] = None
        try:
            while True:
                if vp_addr == 0 or vp_addr in seen or len(seen) > MAX_COMPONENTS:
                    break
                if vp_addr == self.rootvnode:
                    path = "/" + "/".join(reversed(parts))
                    break
                seen.add(vp_addr)
                vp = self.obj("vnode", vp_addr)
                if int(vp.v_vflag) & F.VV_ROOT:
                    covered = int(vp.v_mount.dereference().mnt_vnodecovered) if int(vp.v_mount) else 0
                    if covered == 0:  # the root file system's root: no rootvnode symbol, or it moved
                        path = "/" + "/".join(reversed(parts))
                        break
                    vp_addr = covered
                    continue
                found = self._cached_name(vp)
                if found is None:
                    break
                parts.append(found[0])
                vp_addr = found[1]
        except exceptions.InvalidAddressException as exc:
            vollog.debug(f"path of vnode {address:#x} cut short: {exc}")
            path = None
        self._paths[address] = path
        return path

    def vtype(self, address: int) -> Optional[str]:
        try:
            value = int(self.obj("vnode", address).v_type)
        except exceptions.InvalidAddressException:
            return None
        return F.VTYPE_NAMES.get(value, f"VTYPE({value})")

    def _dev_details(self, address: int) -> str:
        try:
            vp = self.obj("vnode", address)
            if int(vp.v_type) not in (3, 4) or not int(vp.v_rdev):  # VBLK, VCHR
                return ""
            cdev = vp.v_rdev.dereference()
            return "dev " + cdev.si_name.cast("string", max_length=cdev.si_name.vol.count, errors="replace")
        except exceptions.InvalidAddressException:
            return ""

    def vnode_record(self, fd: str, address: int, flags: int, type_name: str = "VNODE",
                     offset: Optional[int] = None) -> FileRecord:
        path = self.vnode_path(address)
        details = self._dev_details(address) if path is not None else NOT_CACHED
        return FileRecord(fd=fd, type=type_name, flags=flags, offset=offset, vtype=self.vtype(address),
                          path=path, details=details, vnode=address)

    # ------------------------------------------------------------------ sockets
    @staticmethod
    def _endpoint(raw: bytes, v6: bool, port: int) -> str:
        if v6:
            return f"[{ipaddress.IPv6Address(raw)}]:{port}"
        return f"{ipaddress.IPv4Address(raw[12:16])}:{port}"

    def _sun_path(self, sun_ptr) -> Optional[str]:
        if not int(sun_ptr):
            return None
        sun = sun_ptr.dereference()
        length = max(0, min(int(sun.sun_len) - 2, sun.sun_path.vol.count))
        raw = bytes(self.layer.read(sun.sun_path.vol.offset, length)) if length else b""
        return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")

    def socket_details(self, address: int) -> str:
        """``<domain> <type> [<protocol>] <addresses>`` of a struct socket."""
        so = self.obj("socket", address)
        sotype = int(so.so_type)
        words = []
        family = None
        proto_num = None
        try:
            pr = so.so_proto.dereference()
            proto_num = int(pr.pr_protocol)
            dom = pr.pr_domain.dereference()
            family = int(dom.dom_family)
            name = dom.dom_name.dereference().cast("string", max_length=32, errors="replace")
            words.append(name)
        except exceptions.InvalidAddressException:
            words.append("?")
        words.append(F.SOCK_TYPES.get(sotype, str(sotype)))
        pcb = int(so.so_pcb)
        if family in (F.AF_INET, F.AF_INET6):
            words.append(F.IPPROTO_NAMES.get(proto_num, str(proto_num)))
            if pcb:
                try:
                    inp = self.obj("inpcb", pcb)
                    v6 = bool(int(inp.inp_vflag) & F.INP_IPV6)
                    ie = inp.inp_inc.inc_ie
                    lport = int.from_bytes(int(ie.ie_lport).to_bytes(2, "little"), "big")
                    fport = int.from_bytes(int(ie.ie_fport).to_bytes(2, "little"), "big")
                    laddr = bytes(self.layer.read(ie.ie_dependladdr.vol.offset, 16))
                    faddr = bytes(self.layer.read(ie.ie_dependfaddr.vol.offset, 16))
                    words.append(self._endpoint(laddr, v6, lport))
                    if fport:
                        words.extend(["->", self._endpoint(faddr, v6, fport)])
                except exceptions.InvalidAddressException:
                    words.append("(inpcb unreadable)")
        elif family == F.AF_UNIX and pcb:
            try:
                unp = self.obj("unpcb", pcb)
                own = self._sun_path(unp.unp_addr)
                if own:
                    words.append(own)
                if int(unp.unp_conn):
                    peer = unp.unp_conn.dereference()
                    words.extend(["->", self._sun_path(peer.unp_addr) or f"{canonical(int(unp.unp_conn)):#x}"])
            except exceptions.InvalidAddressException:
                words.append("(unpcb unreadable)")
        words.append(fileextras.socket_queues(so))
        return " ".join(words)

    # ------------------------------------------------------------------ files
    def file_record(self, fd: int, fp) -> FileRecord:
        ftype = int(fp.f_type)
        flags = int(fp.f_flag)
        offset = int(fp.f_offset)
        type_name = F.DTYPE_NAMES.get(ftype, f"UNKNOWN({ftype})")
        if ftype in (F.DTYPE_VNODE, F.DTYPE_FIFO) and int(fp.f_vnode):
            rec = self.vnode_record(str(fd), int(fp.f_vnode), flags, type_name, offset)
        else:
            rec = FileRecord(fd=str(fd), type=type_name, flags=flags, offset=offset)
        rec.file = fp.vol.offset
        rec.data = int(fp.f_data)
        try:
            if ftype == F.DTYPE_SOCKET and rec.data:
                rec.details = self.socket_details(rec.data)
            elif ftype == F.DTYPE_PIPE and rec.data:
                pipe = self.obj("pipe", rec.data)
                rec.pipe_peer = int(pipe.pipe_peer)
                rec.pipe_buffered = int(pipe.pipe_buffer.cnt)
            elif ftype == F.DTYPE_SHM and rec.data:
                rec.path, rec.details = fileextras.shm_info(self, rec.data)
            elif ftype == F.DTYPE_SEM and rec.data:
                rec.path, rec.details = fileextras.sem_info(self, rec.data)
            elif ftype == F.DTYPE_PTS and rec.data:
                rec.details = fileextras.pts_info(self, rec.data)
        except exceptions.InvalidAddressException as exc:
            rec.details = f"unreadable ({exc.__class__.__name__})"
        return rec

    def pseudo_entries(self, proc) -> Iterator[FileRecord]:
        """trace, text, ctty, cwd, root, jail (kern_proc_filedesc_out() order)."""
        def vnode_at(getter):
            try:
                return int(getter())
            except (exceptions.InvalidAddressException, AttributeError):
                return 0

        # ktr_get_tracevp(): 14.x/15.0 keep the trace vnode in p_ktrioparms->vp; older kernels in p_tracevp.
        if proc.has_member("p_ktrioparms"):
            trace = vnode_at(lambda: proc.p_ktrioparms.dereference().vp if int(proc.p_ktrioparms) else 0)
        else:
            trace = vnode_at(lambda: proc.p_tracevp)
        if trace:
            yield self.vnode_record(F.FD_TRACE, trace, F.FREAD | F.FWRITE)
        text = vnode_at(lambda: proc.p_textvp)
        if text:
            yield self.vnode_record(F.FD_TEXT, text, F.FREAD)
        # The session's terminal vnode, whether or not P_CONTROLT is set (as the kernel does).
        tty = vnode_at(lambda: proc.p_pgrp.dereference().pg_session.dereference().s_ttyvp
                       if int(proc.p_pgrp) and int(proc.p_pgrp.dereference().pg_session) else 0)
        if tty:
            yield self.vnode_record(F.FD_CTTY, tty, F.FREAD | F.FWRITE)
        if not proc.has_member("p_pd"):
            return  # before 13.0 the directories were in struct filedesc (not supported)
        # getattr: a literal .__ptr inside a class would be name-mangled.
        pwd = vnode_at(lambda: getattr(proc.p_pd.dereference().pd_pwd, "__ptr"))
        if not pwd:
            return
        try:
            pw = self.obj("pwd", pwd)
            dirs = [(F.FD_CWD, int(pw.pwd_cdir)), (F.FD_ROOT, int(pw.pwd_rdir)), (F.FD_JAIL, int(pw.pwd_jdir))]
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"struct pwd of pid {int(proc.p_pid)} is unreadable: {exc}")
            return
        for name, vp in dirs:
            if vp:
                yield self.vnode_record(name, vp, F.FREAD)

    def descriptors(self, proc) -> Iterator[FileRecord]:
        """Open descriptors in fd order; closed slots (NULL fde_file) are holes."""
        try:
            if not int(proc.p_fd):
                return
            table_ptr = proc.p_fd.dereference().fd_files
            if not int(table_ptr):
                return
            table = table_ptr.dereference()
            nfiles = int(table.fdt_nfiles)
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"descriptor table of pid {int(proc.p_pid)} is unreadable: {exc}")
            return
        step = F.ndentries(self.kernel.get_type("pointer").size)
        if not 0 <= nfiles <= MAX_FILES or (nfiles != F.NDFILE and nfiles % step):
            # fdgrowtable() keeps the count NDFILE or a multiple of NDENTRIES: anything else is
            # damage, and walking it would read the memory after the table as descriptors.
            vollog.warning(f"pid {int(proc.p_pid)}: fdt_nfiles is {nfiles}, which the kernel never sets "
                           f"(it is {F.NDFILE} or a multiple of {step}); descriptor table skipped")
            return
        esize = self.kernel.get_type("filedescent").size
        base = table.fdt_ofiles.vol.offset
        ptr_off = self.kernel.get_type("filedescent").relative_child_offset("fde_file")
        ptr_end = ptr_off + self.kernel.get_type("pointer").size  # struct file *fde_file (4 bytes on i386)
        for first in range(0, nfiles, FD_CHUNK):  # whole slots at a time: one read per chunk
            count = min(FD_CHUNK, nfiles - first)
            try:
                raw = bytes(self.layer.read(base + first * esize, count * esize))
            except exceptions.InvalidAddressException as exc:
                vollog.warning(f"pid {int(proc.p_pid)}: descriptors {first}-{first + count - 1} are "
                               f"unreadable ({exc}); skipped")
                continue
            for i in range(count):
                fp = int.from_bytes(raw[i * esize + ptr_off:i * esize + ptr_end], "little")
                if not fp:
                    continue  # a closed descriptor
                try:
                    yield self.file_record(first + i, self.obj("file", fp))
                except exceptions.InvalidAddressException as exc:
                    vollog.warning(f"pid {int(proc.p_pid)} fd {first + i}: struct file unreadable ({exc}); skipped")

    def getfiles(self, proc, mmapped: bool = False) -> List[FileRecord]:
        """Every open file of ``proc``: pseudo entries first, then descriptors.

        ``mmapped`` adds the memory-mapped files after them, as
        ``procstat_getfiles(procstat, kp, mmapped)`` does (``fstat -m``).
        """
        recs = list(self.pseudo_entries(proc)) + list(self.descriptors(proc))
        if mmapped:
            recs.extend(fileextras.mmap_records(self, proc))
        return recs


def getfiles(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef, proc,
             mmapped: bool = False) -> List[FileRecord]:
    """The open files of one ``struct proc`` (see :class:`Reader`)."""
    return Reader(context, kernel_module_name).getfiles(proc, mmapped)


def pipe_details(rec: FileRecord, owners: Dict[int, tuple]) -> str:
    """``pipe <this> peer <other> (pid P fd N) B bytes buffered``; owners maps pipe VA -> (pid, fd).

    A pipe whose ``struct pipe`` could not be read has no peer: its details
    say it was unreadable (the fuzzer's truncated images met this).
    """
    if rec.pipe_peer is None:
        return f"pipe {canonical(rec.data):#x} {rec.details or 'unreadable'}"
    text = f"pipe {canonical(rec.data):#x} peer {canonical(rec.pipe_peer):#x}"
    if rec.pipe_peer in owners:
        pid, fd = owners[rec.pipe_peer]
        text += f" (pid {pid} fd {fd})"
    if rec.pipe_buffered:
        text += f" {rec.pipe_buffered} bytes buffered"
    return text
