"""More kinds of open files for the forge: shm, semaphores, pty masters, socket queues, ktrace, mmap.

Each helper writes the kernel objects the way the kernel creates them, on
the release's layouts, and returns the row ``freebsd.files`` must show,
formatted here from the specification (never read back through kvm-vol's
readers):

* ``shm_open()`` (kern/uipc_shm.c ``shm_alloc()``): a ``struct shmfd`` with
  ``shm_size``, ``shm_mode`` and ``shm_path`` (a malloc'd copy of the name,
  NULL for ``SHM_ANON``);
* ``sem_open()`` (kern/uipc_sem.c ``ksem_alloc()``): a ``struct ksem`` with
  ``ks_value``, ``ks_mode`` and ``ks_path``;
* ``posix_openpt()`` (kern/tty_pts.c): a DTYPE_PTS file whose ``f_data`` is
  the terminal's ``struct tty`` (``t_dev`` -> the ``pts/N`` cdev);
* socket buffers: ``sb_ccc`` of ``so_rcv``/``so_snd``; ``solisten_proto()``
  sets ``SO_ACCEPTCONN`` and switches the union to ``sol_qlen``,
  ``sol_incqlen``, ``sol_qlimit``;
* ``ktrace(2)`` (kern/kern_ktrace.c ``ktrops()``): ``p_ktrioparms`` ->
  ``struct ktr_io_params`` whose ``vp`` is the trace file's vnode (14.x,
  15.0; ``p_tracevp`` on older kernels), and ``p_traceflag`` the facilities traced;
* ``mmap(2)``: ``vm_map_entry`` s in the process's ``vm_map``, linked as the
  13.0+ threaded tree (each entry's ``left`` is its predecessor, ``right`` its
  successor or right child, ``header.right``/``header.left`` the first and
  last entry), with ``vm_object`` s of ``OBJT_VNODE`` whose ``handle`` is the
  vnode; a private writable mapping is copy-on-write and its top object an
  ``OBJT_SWAP`` shadow of the file's object.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from kvm_vol import freebsd as F

_PROT = ((F.VM_PROT_READ, "r"), (F.VM_PROT_WRITE, "w"), (F.VM_PROT_EXECUTE, "x"))


def _flags(flag: int) -> str:
    """The FLAGS column (kvm_vol.forge.files imports this module, hence the late import)."""
    from kvm_vol.forge.files import flag_string
    return flag_string(flag)


def _row(dtype: int, flag: int, path: Optional[str], details: str, offset: int = 0) -> Dict[str, Any]:
    return {"TYPE": F.DTYPE_NAMES[dtype], "FLAGS": _flags(flag), "OFFSET": offset, "VTYPE": None,
            "Path": path, "DETAILS": details}


def _string(fs, text: str) -> int:
    """A malloc'd, NUL-terminated copy of ``text`` (strdup(9))."""
    raw = text.encode() + b"\0"
    va = fs.m.uma_alloc(len(raw), align=8)
    fs.m.write_kva(va, raw)
    return va


def shm(fs, path: Optional[str], size: int, mode: int, flag: int) -> Tuple[int, Dict[str, Any]]:
    """A POSIX shared memory object opened with shm_open(path or SHM_ANON)."""
    m = fs.m
    shmfd = m.alloc_struct("shmfd", {"shm_size": size, "shm_mode": mode, "shm_refs": 1,
                                     "shm_pages": -(-size // m.PAGE_SIZE),
                                     "shm_path": _string(fs, path) if path else 0})
    fp = fs.file(F.DTYPE_SHM, flag, data=shmfd)
    details = f"shm size {size} mode {mode:04o}" if path else f"shm anonymous size {size} mode {mode:04o}"
    return fp, _row(F.DTYPE_SHM, flag, path, details)


def sem(fs, path: Optional[str], value: int, mode: int, flag: int) -> Tuple[int, Dict[str, Any]]:
    """A POSIX semaphore: named (sem_open) or not (sem_init of a process-shared one)."""
    ks = fs.m.alloc_struct("ksem", {"ks_ref": 1, "ks_mode": mode, "ks_value": value,
                                    "ks_flags": 0 if path else 0x0001,  # KS_ANONYMOUS
                                    "ks_path": _string(fs, path) if path else 0})
    fp = fs.file(F.DTYPE_SEM, flag, data=ks)
    details = f"sem value {value} mode {mode:04o}" if path else f"sem unnamed value {value} mode {mode:04o}"
    return fp, _row(F.DTYPE_SEM, flag, path, details)


def session_tty(fs, pid: int) -> Tuple[int, str]:
    """(struct tty VA, si_name) of the terminal of ``pid``'s session."""
    m, L = fs.m, fs.L
    proc = fs.k.procs[pid]
    session = m.read_ptr(m.read_ptr(proc + L.offsetof("proc", "p_pgrp")) + L.offsetof("pgrp", "pg_session"))
    tp = m.read_ptr(session + L.offsetof("session", "s_ttyp"))
    cdev = m.read_ptr(tp + L.offsetof("tty", "t_dev"))
    name = m.read_kva(cdev + L.offsetof("cdev", "si_name"), 64).split(b"\0")[0].decode()
    return tp, name


def pts_master(fs, tp: int, name: str, flag: int) -> Tuple[int, Dict[str, Any]]:
    """The master side of a pseudo-terminal (what sshd holds for its session's pts)."""
    fp = fs.file(F.DTYPE_PTS, flag, data=tp)
    return fp, _row(F.DTYPE_PTS, flag, None, f"dev {name}")


def buffers(fs, so: int, rcv: int = 0, snd: int = 0) -> str:
    """Bytes queued in a socket's receive and send buffers; returns the DETAILS suffix."""
    fs.m.set_fields(so, "socket", {"so_rcv.sb_ccc": rcv, "so_snd.sb_ccc": snd,
                                   "so_rcv.sb_acc": rcv, "so_snd.sb_acc": snd})
    return f"recvq {rcv} sendq {snd}"


def listening(fs, so: int, qlimit: int, qlen: int = 0, incqlen: int = 0) -> str:
    """solisten_proto(): SO_ACCEPTCONN and the accept queues; returns the DETAILS suffix."""
    fs.m.set_fields(so, "socket", {"so_options": F.SO_ACCEPTCONN, "sol_qlimit": qlimit, "sol_qlen": qlen,
                                   "sol_incqlen": incqlen})
    return f"qlen {qlen} incqlen {incqlen} qlimit {qlimit}"


def ktrace(fs, pid: int, path: str, facilities: int) -> Dict[str, Any]:
    """ktrace -p pid -f path: the trace vnode, and the row it gives (first of the pseudo entries)."""
    vp = fs.node(path, "VREG")
    proc = fs.k.procs[pid]
    if fs.L.has_field("proc", "p_ktrioparms"):  # ktr_io_params_alloc()
        cred = fs.m.read_ptr(proc + fs.L.offsetof("proc", "p_ucred"))
        kiop = fs.m.alloc_struct("ktr_io_params", {"vp": vp, "cr": cred, "lim": (1 << 63) - 1, "refs": 1})
        fs.m.set_fields(proc, "proc", {"p_ktrioparms": kiop, "p_traceflag": facilities})
    else:
        fs.m.set_fields(proc, "proc", {"p_tracevp": vp, "p_traceflag": facilities})
    return {"FD": F.FD_TRACE, "TYPE": "VNODE", "FLAGS": _flags(F.FREAD | F.FWRITE), "OFFSET": None,
            "VTYPE": "VREG", "Path": path, "DETAILS": ""}


def mmap(fs, pid: int, mappings: Sequence[Tuple[int, int, str, int, int, bool]],
         anonymous: Sequence[Tuple[int, int]] = ()) -> List[Dict[str, Any]]:
    """Map files into ``pid``'s address space; returns the ``mmap`` rows, in address order.

    ``mappings`` are (start, end, path, file offset, VM_PROT_*, private);
    a private writable mapping is copy-on-write (``MAP_ENTRY_COW``) through a
    shadow object.  ``anonymous`` (start, end) entries are swap-backed
    (OBJT_SWAP) and must not appear.
    """
    m, L = fs.m, fs.L
    proc = fs.k.procs[pid]
    vm = m.read_ptr(proc + L.offsetof("proc", "p_vmspace"))
    map_va = vm + L.offsetof("vmspace", "vm_map")
    header = map_va + L.offsetof("vm_map", "header")
    objects: Dict[str, int] = {}
    specs = sorted([(s, e, path, off, prot, private) for s, e, path, off, prot, private in mappings] +
                   [(s, e, None, 0, F.VM_PROT_READ | F.VM_PROT_WRITE, False) for s, e in anonymous])
    entries, rows = [], []
    for start, end, path, file_offset, prot, private in specs:
        offset = file_offset
        if path is None:
            obj = m.alloc_struct("vm_object", {"type": F.OBJT_SWAP, "ref_count": 1, "size": (end - start) // m.PAGE_SIZE})
            eflags = 0
        else:
            vp = fs.node(path, "VREG")
            if path not in objects:
                objects[path] = m.alloc_struct("vm_object", {"type": F.OBJT_VNODE, "handle": vp, "ref_count": 1})
                m.set_fields(vp, "vnode", {"v_bufobj.bo_object": objects[path]})  # v_object
            obj = objects[path]
            eflags = 0
            if private and prot & F.VM_PROT_WRITE:
                # Written since: vm_object_shadow() gave the entry an anonymous shadow of the file's object.
                eflags = F.MAP_ENTRY_COW
                shadow = m.alloc_struct("vm_object", {"type": F.OBJT_SWAP, "ref_count": 1,
                                                      "backing_object": obj, "backing_object_offset": offset})
                obj, offset = shadow, 0
            elif private:
                eflags = F.MAP_ENTRY_COW  # MAP_PRIVATE: copy-on-write, no shadow until the first write
        entry = m.alloc_struct("vm_map_entry", {"start": start, "end": end, "offset": offset, "eflags": eflags,
                                                "protection": prot, "max_protection": 0x7,
                                                "object.vm_object": obj})
        entries.append(entry)
        if path is not None:
            flags = F.FREAD if prot & F.VM_PROT_READ else 0
            if not eflags & F.MAP_ENTRY_COW and prot & F.VM_PROT_WRITE:
                flags |= F.FWRITE
            text = f"{start:#x}-{end:#x} " + "".join(c if prot & b else "-" for b, c in _PROT)
            rows.append({"FD": F.FD_MMAP, "TYPE": "VNODE", "FLAGS": _flags(flags), "OFFSET": file_offset,
                         "VTYPE": "VREG", "Path": path,
                         "DETAILS": text + (" cow" if eflags & F.MAP_ENTRY_COW else "")})
    # The threaded tree as a right spine: entry i's left is its predecessor
    # (no left child), its right the next entry (its right child); the ends
    # point back at the header.
    for i, entry in enumerate(entries):
        m.set_fields(entry, "vm_map_entry", {"left": entries[i - 1] if i else header,
                                             "right": entries[i + 1] if i + 1 < len(entries) else header})
    m.set_fields(map_va, "vm_map", {"header.right": entries[0] if entries else header,
                                    "header.left": entries[-1] if entries else header,
                                    "root": entries[0] if entries else 0, "nentries": len(entries)})
    return rows
