"""Type-specific detail of open files, and memory-mapped files (libprocstat's kvm mode, and more).

What :mod:`kvm_vol.kvm.files` adds to a descriptor's row for the types that
carry their own objects, read as libprocstat's ``procstat_get_*_info_kvm()``
read them, plus what they leave out:

* **DTYPE_SHM** (``f_data`` -> ``struct shmfd``): ``shm_path`` (NULL for
  ``shm_open(SHM_ANON)``: "anonymous"), ``shm_size`` and ``shm_mode``
  (``procstat_get_shm_info_kvm()``).
* **DTYPE_SEM** (``f_data`` -> ``struct ksem``): ``ks_path`` (NULL for an
  unnamed semaphore), ``ks_value`` and ``ks_mode``.
* **DTYPE_PTS** (``f_data`` -> ``struct tty``): a pseudo-terminal master
  (``posix_openpt()``); the terminal is ``t_dev`` -> ``struct cdev`` ->
  ``si_name`` (``pts/N``), as ``procstat_get_pts_info_kvm()`` names it.
* **Sockets**: the bytes queued in the receive and send buffers
  (``so_rcv.sb_ccc``, ``so_snd.sb_ccc``: netstat's Recv-Q/Send-Q, the
  ``recvq``/``sendq`` of libprocstat's sockstat).  A listening socket
  (``SO_ACCEPTCONN`` in ``so_options``) has no buffers: since FreeBSD 12 the
  same union holds its accept queues, so it shows ``sol_qlen`` (connections
  ready for accept()), ``sol_incqlen`` (still handshaking) and
  ``sol_qlimit`` (the listen() backlog), like ``netstat -L``.
* **Memory-mapped files**: ``procstat_getfiles(..., mmapped)`` (``fstat
  -m``) adds one row per entry of the process's ``vm_map`` whose object
  chain (``backing_object`` to the bottom) ends in an ``OBJT_VNODE`` object,
  whose ``handle`` is the vnode; sub-maps are skipped.  Flags are r for
  ``VM_PROT_READ`` and w for ``VM_PROT_WRITE`` unless the mapping is
  copy-on-write (``MAP_ENTRY_COW``).  Since 13.0 the map is a threaded
  binary tree (no ``next`` list any more): entries are visited in address
  order with ``vm_map_entry_first()``/``vm_map_entry_succ()`` from
  vm/vm_map.h.  OFFSET is the file offset of the mapping, ``entry->offset``
  plus the ``backing_object_offset`` of every shadow object on the way down
  (what ``kern_proc_vmmap_out()`` reports as ``kve_offset``).

Every read that fails gives a reason in DETAILS, never an exception.
"""

import logging
from typing import List, Optional, Tuple

from volatility3.framework import exceptions

from kvm_vol import freebsd as F

vollog = logging.getLogger(__name__)

#: Bounds: no real map has this many entries, no object chain is this deep.
MAX_MAP_ENTRIES = 1 << 20
MAX_SHADOW_DEPTH = 64


def _c_string(ptr, max_length: int = F.PATH_MAX) -> Optional[str]:
    """The NUL-terminated string a ``char *`` points to; None for NULL."""
    if not int(ptr):
        return None
    return ptr.dereference().cast("string", max_length=max_length, errors="replace")


def shm_info(reader, address: int) -> Tuple[Optional[str], str]:
    """(path, details) of a ``struct shmfd``."""
    try:
        shm = reader.obj("shmfd", address)
        raw_path = int(shm.shm_path)
        path = None if raw_path in (0, F.SHM_ANON) else _c_string(shm.shm_path)
        size, mode = int(shm.shm_size), int(shm.shm_mode) & 0o7777
    except exceptions.InvalidAddressException as exc:
        return None, f"shmfd unreadable ({exc.__class__.__name__})"
    what = "shm" if path is not None else "shm anonymous"
    return path, f"{what} size {size} mode {mode:04o}"


def sem_info(reader, address: int) -> Tuple[Optional[str], str]:
    """(path, details) of a ``struct ksem``."""
    try:
        ks = reader.obj("ksem", address)
        path = _c_string(ks.ks_path)
        value, mode = int(ks.ks_value), int(ks.ks_mode) & 0o7777
    except exceptions.InvalidAddressException as exc:
        return None, f"ksem unreadable ({exc.__class__.__name__})"
    what = "sem" if path is not None else "sem unnamed"
    return path, f"{what} value {value} mode {mode:04o}"


def pts_info(reader, address: int) -> str:
    """``dev pts/N`` for a pseudo-terminal master's ``struct tty``."""
    try:
        tp = reader.obj("tty", address)
        if not int(tp.t_dev):
            return "tty without a device (t_dev NULL)"
        cdev = tp.t_dev.dereference()
        return "dev " + cdev.si_name.cast("string", max_length=cdev.si_name.vol.count, errors="replace")
    except exceptions.InvalidAddressException as exc:
        return f"tty unreadable ({exc.__class__.__name__})"


def socket_queues(so) -> str:
    """``recvq R sendq S``, or ``qlen Q incqlen I qlimit L`` for a listening socket."""
    try:
        if int(so.so_options) & F.SO_ACCEPTCONN:
            return f"qlen {int(so.sol_qlen)} incqlen {int(so.sol_incqlen)} qlimit {int(so.sol_qlimit)}"
        return f"recvq {int(so.so_rcv.sb_ccc)} sendq {int(so.so_snd.sb_ccc)}"
    except exceptions.InvalidAddressException:
        return "(socket buffers unreadable)"


def prot_string(prot: int) -> str:
    """procstat -v's PRT column: r, w, x or '-'."""
    return "".join(c if prot & bit else "-" for bit, c in
                   ((F.VM_PROT_READ, "r"), (F.VM_PROT_WRITE, "w"), (F.VM_PROT_EXECUTE, "x")))


def _map_entries(reader, vm_map, pid: int):
    """vm_map_entry objects in address order (VM_MAP_ENTRY_FOREACH), bounded and cycle-safe."""
    header = vm_map.header
    header_addr = header.vol.offset
    entry_addr = int(header.right)
    if entry_addr == 0:
        return  # a map never initialised (vm_map_init() points header.right at the header)
    seen = set()
    while entry_addr != header_addr:
        if entry_addr == 0 or entry_addr in seen or len(seen) >= MAX_MAP_ENTRIES:
            vollog.warning(f"pid {pid}: vm_map walk stopped at {entry_addr:#x} (NULL, a cycle or too many entries)")
            return
        seen.add(entry_addr)
        entry = reader.obj("vm_map_entry", entry_addr)
        yield entry
        # vm_map_entry_succ(): the right pointer is the successor itself, or the
        # right child, in which case the successor is that subtree's leftmost entry.
        after = int(entry.right)
        start = int(entry.start)
        probe = reader.obj("vm_map_entry", after)
        if int(probe.left) and int(reader.obj("vm_map_entry", int(probe.left)).start) > start:
            for _ in range(MAX_MAP_ENTRIES):
                after = int(probe.left)
                probe = reader.obj("vm_map_entry", after)
                if int(probe.left) == entry_addr:
                    break
            else:
                vollog.warning(f"pid {pid}: vm_map successor of {entry_addr:#x} not found")
                return
        entry_addr = after


def mmap_records(reader, proc) -> List:
    """FileRecords (fd ``mmap``) for the vnode-backed entries of ``proc``'s vm_map."""
    pid = int(proc.p_pid)
    out = []
    try:
        if int(proc.p_state) == F.PRS_ZOMBIE or not int(proc.p_vmspace):
            return out  # vmspace_exit() left nothing mapped
        vm_map = proc.p_vmspace.dereference().vm_map
        entries = _map_entries(reader, vm_map, pid)
        for entry in entries:
            eflags = int(entry.eflags)
            if eflags & F.MAP_ENTRY_IS_SUB_MAP:
                continue
            objp = int(entry.object.vm_object)
            if not objp:
                continue
            offset = int(entry.offset)
            obj = None
            for depth in range(MAX_SHADOW_DEPTH):
                obj = reader.obj("vm_object", objp)
                backing = int(obj.backing_object)
                if not backing:
                    break
                offset += int(obj.backing_object_offset)
                objp = backing
            else:
                vollog.warning(f"pid {pid}: object chain of map entry {entry.vol.offset:#x} too deep; skipped")
                continue
            if int(obj.type) != F.OBJT_VNODE or not int(obj.handle):
                continue
            prot = int(entry.protection)
            flags = F.FREAD if prot & F.VM_PROT_READ else 0
            if not eflags & F.MAP_ENTRY_COW and prot & F.VM_PROT_WRITE:
                flags |= F.FWRITE
            vp = int(obj.handle)
            rec = reader.vnode_record(F.FD_MMAP, vp, flags, offset=offset)
            mapping = f"{int(entry.start):#x}-{int(entry.end):#x} {prot_string(prot)}"
            if eflags & F.MAP_ENTRY_COW:
                mapping += " cow"
            rec.details = mapping + (f" ({rec.details})" if rec.details else "")
            out.append(rec)
    except exceptions.InvalidAddressException as exc:
        vollog.warning(f"pid {pid}: vm_map unreadable ({exc}); memory-mapped files cut short")
    return out
