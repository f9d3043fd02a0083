"""Hostile variants of forge machines, for fuzzing kvm-vol end to end.

Two families of mutation, each a small named function so a failing case can
be replayed from its name and seed:

* **container** mutations work on the bytes of a written image: minidump
  header fields, bitmap bits, pmap entries, dump_avail pairs, ELF program
  headers, kerneldumpheader fields, truncation;
* **kernel** mutations work on the machine before it is written: cycles in
  ``allproc`` and ``p_threads``, self-parented processes, wild pointers,
  absurd counts, unterminated names.

:func:`make_case` turns ``(seed, index)`` into one mutated image on disk and
describes what was done; :mod:`benchmarks.fuzz` and ``tests/fuzz`` run the
plugins on such images and classify what happens.
"""

import os
import random
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

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
    return U64.unpack(m.read_kva(va, 8))[0]


def _procs(forged: Forged) -> List[Dict]:
    return forged.kernel.manifest_procs


def k_allproc_cycle(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    procs = _procs(forged)
    i = rnd.randrange(1, len(procs))
    j = rnd.randrange(0, i + 1)
    src, dst = procs[i]["offset"], procs[j]["offset"]
    m.write_kva(src + L.offsetof("proc", "p_list.le_next"), U64.pack(dst))
    return f"pid {procs[i]['pid']} p_list.le_next -> pid {procs[j]['pid']}"


def k_threads_cycle(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice([p for p in _procs(forged) if p["threads"]])
    td = rnd.choice(proc["threads"])["offset"]
    target = rnd.choice(proc["threads"])["offset"]
    m.write_kva(td + L.offsetof("thread", "td_plist.tqe_next"), U64.pack(target))
    return f"pid {proc['pid']} thread {td:#x} tqe_next -> {target:#x}"


def k_self_parent(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    m.write_kva(proc["offset"] + L.offsetof("proc", "p_pptr"), U64.pack(proc["offset"]))
    return f"pid {proc['pid']} is its own parent"


def k_wild_pointer(forged: Forged, rnd: random.Random) -> str:
    m, L = forged.machine, forged.machine.layout
    proc = rnd.choice(_procs(forged))
    fields = [("proc", f) for f in ("p_list.le_next", "p_threads.tqh_first", "p_ucred", "p_pptr")
              if L.has_field("proc", f)]
    struct_name, field = rnd.choice(fields)
    value = rnd.choice(WILD_POINTERS + (rnd.getrandbits(64),))
    m.write_kva(proc["offset"] + L.offsetof(struct_name, field), U64.pack(value))
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


KERNEL_MUTATIONS: Dict[str, Callable[[Forged, random.Random], str]] = {
    "allproc-cycle": k_allproc_cycle,
    "threads-cycle": k_threads_cycle,
    "self-parent": k_self_parent,
    "wild-pointer": k_wild_pointer,
    "absurd-counts": k_absurd_counts,
    "unterminated-names": k_unterminated_names,
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


def make_case(forged_factory: Callable[[], Forged], directory: str, seed: int, index: int,
              mutation: Optional[str] = None) -> Case:
    """Build mutated image number ``index`` of run ``seed`` in ``directory``.

    ``forged_factory`` returns a fresh machine (kernel mutations change it).
    The mutation is drawn at random unless ``mutation`` names one.  The same
    ``(seed, index, mutation)`` always gives the same image.
    """
    rnd = random.Random(seed * 1_000_003 + index)
    drawn = rnd.choice(ALL_MUTATIONS)
    name = mutation or drawn
    os.makedirs(directory, exist_ok=True)
    stem = f"case-{seed}-{index}"
    if name in KERNEL_MUTATIONS:
        forged = forged_factory()
        detail = KERNEL_MUTATIONS[name](forged, rnd)
        fmt = rnd.choice(("vmcore", "full", "raw"))
        path = forged.write(directory, stem=stem, formats=(fmt,))[fmt]
    else:
        formats, func = CONTAINER_MUTATIONS[name]
        fmt = rnd.choice(formats)
        path = forged_factory().write(directory, stem=stem, formats=(fmt,))[fmt]
        detail = func(path, rnd)
    return Case(path=path, fmt=fmt, mutation=name, detail=detail)


__all__ = ["Case", "make_case", "KERNEL_MUTATIONS", "CONTAINER_MUTATIONS", "ALL_MUTATIONS"]
