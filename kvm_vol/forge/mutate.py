"""Hostile variants of forge machines, for fuzzing kvm-vol end to end.

Two families of mutation, each a small named function so a failing case can
be replayed from its name and seed:

* **container** mutations work on the bytes of a written image: minidump
  header fields, bitmap bits, pmap entries, dump_avail pairs, ELF program
  headers, kerneldumpheader fields, truncation;
* **kernel** mutations work on the machine before it is written: cycles in
  ``allproc`` and ``p_threads``, self-parented processes, wild pointers,
  absurd counts, unterminated names; and, in the sources of the records the
  plugins print (:data:`RECORD_MUTATIONS`), absurd lengths and wild pointers
  in ``p_args``, the user stack's ``ps_strings``, descriptor tables,
  ``struct file`` and the name cache paths are rebuilt from;
* **device** mutations write what else a dump device holds, damaged:
  textdumps and dumps the kernel compressed (drawn only from
  :data:`EVERY_MUTATION`, so runs made before they existed replay unchanged).

:func:`make_case` turns ``(seed, index)`` into one mutated image on disk and
describes what was done; :mod:`benchmarks.fuzz` and ``tests/fuzz`` run the
plugins on such images and classify what happens.

One forged machine serves every case: a kernel mutation runs inside a
:class:`Journal` that records the bytes each ``write_kva`` overwrites and puts
them back once the image is written.  Building a machine costs about as much
as three plugin runs, so rebuilding it per case (as the first version did)
would have doubled the cost of a long run for nothing.
"""

import os
import random
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kvm_vol.core import amd64 as A
from kvm_vol.forge.build import Forged

U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

WILD_POINTERS = (0, 1, 0xFFFFFFFFFFFFFFFF, 0xDEADBEEFDEADBEEF, 0xFFFFF80000000000,
                 0xFFFFF8FFFFFFF000, 0xFFFFFFFF80000000, 0x00007FFFFFFFE000, 0xFFFF800000000000)


@dataclass
class Case:
    """One fuzz case: where its image is and how it was made."""

    path: str
    fmt: str
    mutation: str
    detail: str


# ----------------------------------------------------------------------
# kernel-structure mutations (applied to the machine before writing)

def _u64_at(m, va: int) -> int:
    """The kernel pointer at ``va`` (pointer-sized for the machine's layout: 4 bytes on i386)."""
    return m.read_ptr(va)


def _procs(forged: Forged) -> List[Dict]:
    return forged.kernel.manifest_procs


def k_allproc_cycle(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    procs = _procs(forged)
    i = rnd.randrange(1, len(procs))
    j = rnd.randrange(0, i + 1)
    src, dst = procs[i]["offset"], procs[j]["offset"]
    m.write_ptr(src + L.offsetof("proc", "p_list.le_next"), dst)
    return f"pid {procs[i]['pid']} p_list.le_next -> pid {procs[j]['pid']}"


def k_threads_cycle(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice([p for p in _procs(forged) if p["threads"]])
    td = rnd.choice(proc["threads"])["offset"]
    target = rnd.choice(proc["threads"])["offset"]
    m.write_ptr(td + L.offsetof("thread", "td_plist.tqe_next"), target)
    return f"pid {proc['pid']} thread {td:#x} tqe_next -> {target:#x}"


def k_self_parent(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    m.write_ptr(proc["offset"] + L.offsetof("proc", "p_pptr"), proc["offset"])
    return f"pid {proc['pid']} is its own parent"


def k_wild_pointer(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    fields = [("proc", f) for f in ("p_list.le_next", "p_threads.tqh_first", "p_ucred", "p_pptr")
              if L.has_field("proc", f)]
    struct_name, field = rnd.choice(fields)
    value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),))
    m.write_ptr(proc["offset"] + L.offsetof(struct_name, field), value)  # cut to the pointer width
    return f"pid {proc['pid']} {field} = {value:#x}"


def k_absurd_counts(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    cred = _u64_at(m, proc["offset"] + L.offsetof("proc", "p_ucred"))
    value = rnd.choice((0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 100000))
    m.write_kva(cred + L.offsetof("ucred", "cr_ngroups"), U32.pack(value))
    m.write_kva(proc["offset"] + L.offsetof("proc", "p_numthreads"), U32.pack(value))
    return f"pid {proc['pid']} cr_ngroups = p_numthreads = {value:#x}"


def k_unterminated_names(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    off, desc = L.field("proc", "p_comm")
    m.write_kva(proc["offset"] + off, bytes(rnd.randrange(1, 256) for _ in range(desc["count"])))
    for td in proc["threads"]:
        toff, tdesc = L.field("thread", "td_name")
        m.write_kva(td["offset"] + toff, b"\xff" * tdesc["count"])
    return f"pid {proc['pid']} p_comm/td_name without NUL, non-UTF-8"


ABSURD_LENGTHS = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0x10000000, 100000)


def _user_pa(m, proc_va: int, uva: int) -> int:
    """Physical address of user VA ``uva`` in process ``proc_va``, walked through its pmap (amd64).

    User pages are written by the forge through physical memory; a mutation
    writes them back through the direct map (``write_kva``) so the
    :class:`Journal` sees and undoes the change.
    """
    L = m.layout
    vm = m.read_ptr(proc_va + L.offsetof("proc", "p_vmspace"))
    root = m.read_uint(vm + L.offsetof("vmspace", "vm_pmap.pm_cr3"), 8)
    return A.walk(m.mem.read_u64, root, uva)[0]


def _read_user(m, proc_va: int, uva: int, length: int) -> bytes:
    """``length`` bytes at user VA ``uva`` (within one page)."""
    return bytes(m.mem.read(_user_pa(m, proc_va, uva), length))


def _write_user(m, proc_va: int, uva: int, data: bytes) -> None:
    """Write ``data`` at user VA ``uva``, a page at a time (pages need not be contiguous)."""
    while data:
        n = min(len(data), A.PAGE_SIZE - (uva & A.PAGE_MASK))
        m.write_kva(m.dmap(_user_pa(m, proc_va, uva)), data[:n])
        uva, data = uva + n, data[n:]


def k_pargs(forged: Forged, rnd: random.Random) -> str:
    """``p_args``: an absurd ``ar_length``, argument bytes without NUL, or a wild ``p_args``."""
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice([p for p in _procs(forged) if p.get("p_args")])
    pa = m.read_ptr(proc["offset"] + L.offsetof("proc", "p_args"))
    how = rnd.choice(("length", "unterminated", "wild"))
    if how == "length":
        value = rnd.choice(ABSURD_LENGTHS)
        m.write_kva(pa + L.offsetof("pargs", "ar_length"), U32.pack(value))
        return f"pid {proc['pid']} p_args->ar_length = {value:#x}"
    if how == "unterminated":
        length = m.read_uint(pa + L.offsetof("pargs", "ar_length"), 4)
        m.write_kva(pa + L.offsetof("pargs", "ar_args"), bytes(rnd.randrange(1, 256) for _ in range(length)))
        return f"pid {proc['pid']} p_args->ar_args ({length} bytes) without NUL"
    value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),))
    m.write_ptr(proc["offset"] + L.offsetof("proc", "p_args"), value)
    return f"pid {proc['pid']} p_args = {value:#x}"


def k_ps_strings(forged: Forged, rnd: random.Random) -> str:
    """The user stack's ``struct ps_strings``: absurd counts, wild vectors, a wild or unterminated string."""
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice([p for p in _procs(forged) if p.get("ps_strings") and p.get("argv")])
    pss, va = proc["ps_strings"], proc["offset"]
    how = rnd.choice(("count", "vector", "string", "unterminated"))
    vectors = ("ps_argvstr", "ps_envstr") if proc.get("env") else ("ps_argvstr",)  # no env: envp[0] is NULL
    field = rnd.choice(("ps_nargvstr", "ps_nenvstr") if how == "count" else vectors)
    # A 32-bit process (COMPAT_FREEBSD32) has a struct freebsd32_ps_strings of 4-byte pointers.
    stype, ptr = ("freebsd32_ps_strings", U32) if "ELF32" in proc.get("emul", "") else ("ps_strings", U64)
    off = L.offsetof(stype, field)
    if how == "count":
        value = rnd.choice(ABSURD_LENGTHS)
        _write_user(m, va, pss + off, U32.pack(value))
        return f"pid {proc['pid']} {stype}.{field} = {value:#x}"
    vector = ptr.unpack(_read_user(m, va, pss + off, ptr.size))[0]
    if how == "vector":
        value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64), pss)) & ((1 << 8 * ptr.size) - 1)
        _write_user(m, va, pss + off, ptr.pack(value))
        return f"pid {proc['pid']} {stype}.{field} = {value:#x}"
    string = ptr.unpack(_read_user(m, va, vector, ptr.size))[0]
    if how == "string":
        value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),)) & ((1 << 8 * ptr.size) - 1)
        _write_user(m, va, vector, ptr.pack(value))
        return f"pid {proc['pid']} {field}[0] = {value:#x}"
    # Every byte from the first string up to ps_strings without a NUL (and not UTF-8).
    _write_user(m, va, string, bytes(rnd.randrange(1, 256) for _ in range(pss - string)))
    return f"pid {proc['pid']} strings from {field}[0] to ps_strings without NUL"


def _open_files(m, proc_va: int) -> Tuple[int, int, List[int]]:
    """(fdescenttbl address, fdt_nfiles, addresses of the non-NULL fde_file slots) of a process."""
    L = m.layout
    fdp = m.read_ptr(proc_va + L.offsetof("proc", "p_fd"))
    if not fdp:
        return 0, 0, []
    table = m.read_ptr(fdp + L.offsetof("filedesc", "fd_files"))
    nfiles = m.read_uint(table + L.offsetof("fdescenttbl", "fdt_nfiles"), 4)
    base, esize = table + L.offsetof("fdescenttbl", "fdt_ofiles"), L.sizeof("filedescent")
    return table, nfiles, [base + i * esize for i in range(nfiles) if m.read_ptr(base + i * esize)]


def _with_open_files(forged: Forged, rnd: random.Random):
    """A random process with open descriptors, and its :func:`_open_files` (each table read once)."""
    tables = [(p, _open_files(forged.machine, p["offset"])) for p in _procs(forged)]
    return rnd.choice([(p, t) for p, t in tables if t[2]])


def k_file_table(forged: Forged, rnd: random.Random) -> str:
    """A descriptor table: absurd ``fdt_nfiles``, a wild ``fde_file``, or a ``struct file`` with a wild
    ``f_data``/``f_vnode``/``f_ops``/``f_cred``, an unknown ``f_type`` or an absurd ``f_offset``."""
    m, L = forged.machine, forged.machine.layout
    proc, (table, nfiles, slots) = _with_open_files(forged, rnd)
    how = rnd.choice(("nfiles", "slot", "file", "file", "file"))
    if how == "nfiles":
        value = rnd.choice(ABSURD_LENGTHS)
        m.write_kva(table + L.offsetof("fdescenttbl", "fdt_nfiles"), U32.pack(value))
        return f"pid {proc['pid']} fdt_nfiles {nfiles} -> {value:#x}"
    slot = rnd.choice(slots)
    fd = (slot - table - L.offsetof("fdescenttbl", "fdt_ofiles")) // L.sizeof("filedescent")
    if how == "slot":
        value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),))
        m.write_ptr(slot, value)
        return f"pid {proc['pid']} fd {fd} fde_file = {value:#x}"
    fp = m.read_ptr(slot)
    field = rnd.choice(("f_data", "f_vnode", "f_ops", "f_cred", "f_type", "f_offset"))
    if field == "f_type":
        value = rnd.choice((0, 13, 0x7FFF, 0xFFFF, rnd.randrange(1, 13)))
        m.write_kva(fp + L.offsetof("file", "f_type"), struct.pack("<H", value))
    elif field == "f_offset":
        value = rnd.choice((0xFFFFFFFFFFFFFFFF, 0x8000000000000000, rnd.getrandbits(64)))
        m.write_kva(fp + L.offsetof("file", "f_offset"), U64.pack(value))
    else:
        value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),))
        m.write_ptr(fp + L.offsetof("file", field), value)
    return f"pid {proc['pid']} fd {fd} {field} = {value:#x}"


def k_vnode_names(forged: Forged, rnd: random.Random) -> str:
    """The name cache a path is rebuilt from: absurd ``nc_nlen``, names with escapes or without NUL,
    a cycle in ``v_cache_dst``, a wild ``nc_dvp`` or an unknown ``v_type``."""
    m, L = forged.machine, forged.machine.layout
    proc, (_, _, slots) = _with_open_files(forged, rnd)
    vnodes = []
    for slot in slots:
        vp = m.read_ptr(m.read_ptr(slot) + L.offsetof("file", "f_vnode"))
        if vp and m.read_ptr(vp + L.offsetof("vnode", "v_cache_dst.tqh_first")):
            vnodes.append(vp)
    if not vnodes:
        return k_file_table(forged, rnd)
    vp = rnd.choice(vnodes)
    ncp = m.read_ptr(vp + L.offsetof("vnode", "v_cache_dst.tqh_first"))
    how = rnd.choice(("nlen", "name", "cycle", "dvp", "vtype"))
    if how == "nlen":
        value = rnd.choice((0, 255, 200))
        m.write_kva(ncp + L.offsetof("namecache", "nc_nlen"), bytes([value]))
        return f"vnode {vp:#x} nc_nlen = {value}"
    if how == "name":
        nlen = m.read_uint(ncp + L.offsetof("namecache", "nc_nlen"), 1)
        name = rnd.choice((b"\x1b[2J\x07", b"../../etc", b"a/b", b"\xff\xfe"))[:max(nlen, 1)].ljust(nlen, b"\xff")
        m.write_kva(ncp + L.offsetof("namecache", "nc_name"), name + b"\xff")
        return f"vnode {vp:#x} nc_name = {name!r} without NUL"
    if how == "cycle":
        m.write_ptr(ncp + L.offsetof("namecache", "nc_dst.tqe_next"), ncp)
        return f"vnode {vp:#x} namecache {ncp:#x} nc_dst.tqe_next -> itself"
    if how == "dvp":
        value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64), vp))
        m.write_ptr(ncp + L.offsetof("namecache", "nc_dvp"), value)
        return f"vnode {vp:#x} nc_dvp = {value:#x}"
    value = rnd.choice((9, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF))
    m.write_kva(vp + L.offsetof("vnode", "v_type"), U32.pack(value))
    return f"vnode {vp:#x} v_type = {value:#x}"


KERNEL_MUTATIONS: Dict[str, Callable[[Forged, random.Random], str]] = {
    "allproc-cycle": k_allproc_cycle,
    "threads-cycle": k_threads_cycle,
    "self-parent": k_self_parent,
    "wild-pointer": k_wild_pointer,
    "absurd-counts": k_absurd_counts,
    "unterminated-names": k_unterminated_names,
}
#: Kernel mutations of the user-visible records' sources (argument and environment strings, file
#: tables, path names), added after the long runs of docs/fuzzing.md: kept out of
#: :data:`KERNEL_MUTATIONS` so :data:`ALL_MUTATIONS` and older runs replay unchanged.
RECORD_MUTATIONS: Dict[str, Callable[[Forged, random.Random], str]] = {
    "pargs": k_pargs,
    "ps-strings": k_ps_strings,
    "file-table": k_file_table,
    "vnode-names": k_vnode_names,
}


# ----------------------------------------------------------------------
# container mutations (applied to the bytes of a written image)

def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def c_minidump_header(path: str, rnd: random.Random) -> str:
    off = rnd.choice((24, 28, 32, 36, 40, 48, 56, 64))
    size = 8 if off in (40, 48, 56) else 4
    value = rnd.choice((0, 1, 0x1000, 0x7FFFFFFF, (1 << 8 * size) - 1, rnd.getrandbits(8 * size)))
    _patch(path, off, value.to_bytes(size, "little"))
    return f"header offset {off} = {value:#x}"


def _minidump_layout(path: str):
    from kvm_vol.formats.source import FileSource
    from kvm_vol.formats import detect

    with FileSource.open(path) as src:
        dump = detect(src)
        return dump.origin, dump.layout, dump.header


def c_minidump_bitmap(path: str, rnd: random.Random) -> str:
    origin, layout, hdr = _minidump_layout(path)
    flips = rnd.randrange(1, 64)
    with open(path, "r+b") as fh:
        for _ in range(flips):
            pos = origin + layout.bitmap + rnd.randrange(max(1, hdr.bitmapsize))
            fh.seek(pos)
            b = fh.read(1)
            fh.seek(pos)
            fh.write(bytes([(b[0] if b else 0) ^ (1 << rnd.randrange(8))]))
    return f"{flips} bitmap bits flipped"


def c_minidump_pmap(path: str, rnd: random.Random) -> str:
    origin, layout, hdr = _minidump_layout(path)
    n = rnd.randrange(1, 32)
    with open(path, "r+b") as fh:
        for _ in range(n):
            # favour the populated end of the section (the kernel's own PDEs)
            idx = hdr.pmapsize // 8 - 1 - rnd.randrange(min(hdr.pmapsize // 8, 4096))
            fh.seek(origin + layout.pmap + 8 * idx)
            fh.write(U64.pack(rnd.choice(WILD_POINTERS + (rnd.getrandbits(64), rnd.getrandbits(40) | 0x81))))
    return f"{n} pmap entries replaced"


def c_minidump_dump_avail(path: str, rnd: random.Random) -> str:
    origin, layout, hdr = _minidump_layout(path)
    if hdr.version < 3:
        return c_minidump_header(path, rnd)
    i = rnd.randrange(6)
    value = rnd.choice((0, 0xFFFFFFFFFFFFFFFF, rnd.getrandbits(40), 0x1000))
    _patch(path, origin + layout.dump_avail + 8 * i, U64.pack(value))
    return f"dump_avail word {i} = {value:#x}"


def c_elf_phdrs(path: str, rnd: random.Random) -> str:
    with open(path, "rb") as fh:
        head = fh.read(64)
    base = 0
    if not head.startswith(b"\x7fELF"):
        base = 512
        with open(path, "rb") as fh:
            fh.seek(base)
            head = fh.read(64)
    phoff = U64.unpack_from(head, 32)[0]
    phnum = struct.unpack_from("<H", head, 56)[0]
    choice = rnd.randrange(4)
    if choice == 0:
        value = rnd.choice((0, 0xFFFF, 1000))
        _patch(path, base + 56, struct.pack("<H", value))
        return f"e_phnum = {value}"
    i = rnd.randrange(max(1, phnum))
    field, off = rnd.choice((("p_offset", 8), ("p_paddr", 24), ("p_filesz", 32), ("p_memsz", 40)))
    value = rnd.choice((0, 0xFFFFFFFFFFFFFFFF, rnd.getrandbits(48), 1 << 40))
    _patch(path, base + phoff + 56 * i + off, U64.pack(value))
    return f"phdr {i} {field} = {value:#x}"


def c_truncate(path: str, rnd: random.Random) -> str:
    size = os.path.getsize(path)
    new = rnd.choice((0, 1, 100, 4096, 0x3000, rnd.randrange(size), size - 1))
    with open(path, "r+b") as fh:
        fh.truncate(new)
    return f"truncated to {new:#x}"


def c_kdh(path: str, rnd: random.Random) -> str:
    off = rnd.choice((20, 32, 36, 40, 56, 60, 495, 508))
    value = rnd.getrandbits(32)
    _patch(path, off, U32.pack(value))
    return f"kerneldumpheader offset {off} = {value:#x}"


CONTAINER_MUTATIONS: Dict[str, Tuple[Tuple[str, ...], Callable[[str, random.Random], str]]] = {
    "minidump-header": (("vmcore", "minidump-v1", "minidump-v2"), c_minidump_header),
    "minidump-bitmap": (("vmcore", "minidump-v2"), c_minidump_bitmap),
    "minidump-pmap": (("vmcore", "minidump-v2"), c_minidump_pmap),
    "minidump-dump_avail": (("vmcore",), c_minidump_dump_avail),
    "elf-phdrs": (("full", "kdh-full"), c_elf_phdrs),
    "truncate": (("vmcore", "full", "raw", "kdh-vmcore"), c_truncate),
    "kdh-fields": (("kdh-vmcore", "kdh-full"), c_kdh),
}

ALL_MUTATIONS = sorted(KERNEL_MUTATIONS) + sorted(CONTAINER_MUTATIONS)


# ----------------------------------------------------------------------
# what else a dump device holds: textdumps, dumps the kernel compressed

def d_textdump(base: Forged, path: str, rnd: random.Random) -> Tuple[str, str]:
    """A textdump (device copy or savecore's tar) with damaged tar headers, kerneldumpheader or length."""
    from kvm_vol.forge import devdumps
    from kvm_vol.formats.textdump import TEXTDUMP_BLOCKSIZE

    form = rnd.choice(("device", "savecore"))
    files = devdumps.textdump_files(base, with_config=rnd.random() < 0.5)
    blocks = devdumps.textdump_blocks(files, 1732163439)
    headers = [i for i, b in enumerate(blocks) if b[257:262] == b"ustar"]
    choice = rnd.randrange(4)
    if choice == 0:  # header fields: name, mode, size, checksum, type, magic, prefix
        i = rnd.choice(headers)
        block = bytearray(blocks[i])
        offsets = rnd.sample((0, 50, 99, 100, 124, 130, 135, 148, 150, 156, 257, 345, 400), rnd.randrange(1, 4))
        for off in offsets:
            block[off] = rnd.choice((0, 0x2E, 0x2F, 0x37, 0x1B, 0xFF, rnd.randrange(256)))
        blocks[i] = bytes(block)
        detail = f"tar header {headers.index(i)} bytes {offsets} changed"
    elif choice == 1:  # a size field from another world
        i = rnd.choice(headers)
        block = bytearray(blocks[i])
        block[124:136] = rnd.choice((b"77777777777\0", b"99999999999\0", b"\x80" + bytes(11), b"-1\0" + bytes(9)))
        blocks[i] = bytes(block)
        detail = f"tar header {headers.index(i)} size field {bytes(block[124:136])!r}"
    elif choice == 2:  # a name that leaves the directory
        i = rnd.choice(headers)
        block = bytearray(blocks[i])
        name = rnd.choice((b"../../../etc/passwd", b"/etc/rc.conf", b"a/../../b", b"\x1b]0;x\x07"))
        block[0:100] = name.ljust(100, b"\0")
        blocks[i] = bytes(block)
        detail = f"tar header {headers.index(i)} name {name!r} (checksum now wrong)"
    else:
        detail = "intact"
    before = rnd.choice((0, devdumps.SIZEOF_METADATA))
    devdumps.write_textdump(path, files, form=form, blocks=blocks, versionstring=base.kernel.banner, before=before)
    if choice == 3 and rnd.random() < 0.5:
        size = os.path.getsize(path)
        new = rnd.randrange(size)
        with open(path, "r+b") as fh:
            fh.truncate(new)
        detail = f"truncated to {new:#x}"
    elif choice == 3 and form == "device":
        at = rnd.choice((before, os.path.getsize(path) - TEXTDUMP_BLOCKSIZE))  # leader or trailer
        value = rnd.choice((1000, 0, 1 << 40, rnd.getrandbits(32) * 512))
        _patch(path, at + 40, value.to_bytes(8, "big"))
        detail = f"kerneldumpheader at {at:#x} dumplength = {value:#x}"
    return f"textdump-{form}", detail


def d_kdh_compressed(base: Forged, path: str, rnd: random.Random) -> Tuple[str, str]:
    """A dump as ``dumpon -z``/``-Z`` leaves it on the device, intact or with its stream or header damaged."""
    from kvm_vol.forge import devdumps

    inner = base.write(os.path.dirname(path), stem=os.path.basename(path) + "-inner", formats=("vmcore",))["vmcore"]
    method = rnd.choice((devdumps.COMP_GZIP, devdumps.COMP_ZSTD))
    kdh = devdumps.write_compressed_kdh(inner, path, method=method, versionstring=base.kernel.banner)
    os.unlink(inner)
    fmt = f"kdh-{'gzip' if method == devdumps.COMP_GZIP else 'zstd'}"
    choice = rnd.randrange(4)
    if choice == 0:
        n = rnd.randrange(1, 16)
        with open(path, "r+b") as fh:
            for _ in range(n):
                fh.seek(512 + rnd.randrange(kdh.dumplength))
                fh.write(bytes([rnd.randrange(256)]))
        return fmt, f"{n} bytes of the compressed stream changed"
    if choice == 1:
        value = rnd.choice((0, 1, kdh.dumplength // 2, kdh.dumplength + 4096, 1 << 40))
        _patch(path, 40, value.to_bytes(8, "big"))  # leader's dumplength; the trailer keeps the old one
        return fmt, f"leader dumplength = {value:#x}"
    if choice == 2:
        new = rnd.randrange(512, 512 + kdh.dumplength)
        with open(path, "r+b") as fh:
            fh.truncate(new)
        return fmt, f"truncated to {new:#x} inside the stream"
    return fmt, "intact"


#: Mutations of the other things a dump device holds.  They are not in the
#: draw of :data:`ALL_MUTATIONS` (runs made before they existed replay
#: unchanged); :data:`EVERY_MUTATION` draws from all.
DEVICE_MUTATIONS: Dict[str, Callable[[Forged, str, random.Random], Tuple[str, str]]] = {
    "textdump": d_textdump,
    "kdh-compressed": d_kdh_compressed,
}
#: Mutations of the forged machine (made inside a :class:`Journal`), by name.
_MACHINE_MUTATIONS = {**KERNEL_MUTATIONS, **RECORD_MUTATIONS}
#: The 15 mutations of the runs made before :data:`RECORD_MUTATIONS` existed (seed 2 of docs/fuzzing.md).
DEVICE_ERA_MUTATIONS = ALL_MUTATIONS + sorted(DEVICE_MUTATIONS)
#: Every mutation there is: what long runs and CI draw from.
EVERY_MUTATION = DEVICE_ERA_MUTATIONS + sorted(RECORD_MUTATIONS)


class Journal:
    """Undo log for kernel mutations of one forged machine.

    Inside ``with Journal(machine):`` every ``machine.write_kva`` (and so
    ``write_ptr``/``write_uint``/``set_fields``, which go through it) first
    saves the bytes it overwrites; leaving the block writes them back in
    reverse order, so the machine is byte for byte what it was.  Mutations
    only overwrite existing kernel objects, so no page is created or dropped.
    """

    def __init__(self, machine):
        self.machine = machine
        self._saved: List[Tuple[int, bytes]] = []

    def __enter__(self) -> "Journal":
        machine, saved, write = self.machine, self._saved, self.machine.write_kva

        def recording_write(va: int, data: bytes) -> None:
            saved.append((va, machine.read_kva(va, len(data))))
            write(va, data)

        machine.write_kva = recording_write  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.machine.write_kva
        for va, old in reversed(self._saved):
            self.machine.write_kva(va, old)
        self._saved.clear()


def make_case(base: Forged, directory: str, seed: int, index: int, mutation: Optional[str] = None,
              draw_from: Sequence[str] = ALL_MUTATIONS) -> Case:
    """Build mutated image number ``index`` of run ``seed`` in ``directory``.

    ``base`` is the forged machine every case starts from; kernel mutations
    change it only for the time it takes to write the image (:class:`Journal`).
    The mutation is drawn from ``draw_from`` unless ``mutation`` names one.
    The same ``(base, seed, index, mutation, draw_from)`` always gives the
    same image.
    """
    rnd = random.Random(seed * 1_000_003 + index)
    drawn = rnd.choice(draw_from)
    name = mutation or drawn
    os.makedirs(directory, exist_ok=True)
    stem = f"case-{seed}-{index}"
    if name in _MACHINE_MUTATIONS:
        with Journal(base.machine):
            detail = _MACHINE_MUTATIONS[name](base, rnd)
            fmt = rnd.choice(("vmcore", "full", "raw"))
            path = base.write(directory, stem=stem, formats=(fmt,))[fmt]
    elif name in DEVICE_MUTATIONS:
        path = os.path.join(directory, f"{stem}.{name}")
        fmt, detail = DEVICE_MUTATIONS[name](base, path, rnd)
    else:
        formats, func = CONTAINER_MUTATIONS[name]
        fmt = rnd.choice(formats)
        path = base.write(directory, stem=stem, formats=(fmt,))[fmt]
        detail = func(path, rnd)
    return Case(path=path, fmt=fmt, mutation=name, detail=detail)


__all__ = ["Case", "Journal", "make_case", "KERNEL_MUTATIONS", "RECORD_MUTATIONS", "CONTAINER_MUTATIONS",
           "DEVICE_MUTATIONS", "DEVICE_ERA_MUTATIONS",
           "ALL_MUTATIONS", "EVERY_MUTATION"]
