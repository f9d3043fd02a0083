"""arm64 minidump writer: a :class:`PhysMem` and its kernel L0 table → ``minidump FreeBSD/arm64``.

What goes into the file follows ``cpu_minidumpsys`` of
``sys/arm64/arm64/minidump_machdep.c``: for every L2 slot of KVA from
``VM_MIN_KERNEL_ADDRESS`` to ``kernel_vm_end`` one page of L3 entries - the
real L3 table, or entries synthesised (``pa | ATTR_DEFAULT | L3_PAGE``) for an
L2 block, or ``Ln_ENTRIES`` such pages for an L1 block, or zeros where
nothing is mapped; the bitmap marks every page those mappings reach (and the
pages the kernel adds with ``dump_add_page``).  The header and the section
layout come from :mod:`kvm_vol.formats.minidump_arm64`, the file plumbing from
:mod:`kvm_vol.forge.writers`, so writer and reader cannot drift apart.
Everything is in units of the kernel's page size (4 or 16 KiB).
"""

import struct
from typing import Iterable, Optional, Sequence, Set, Tuple

from kvm_vol.core.arm64 import (
    ATTR_DEFAULT, ATTR_DESCR_MASK, DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, L1_BLOCK, L2_BLOCK, L3_PAGE, L0_TABLE,
    VM_MIN_KERNEL_ADDRESS, Granule, granule_for, pte_to_phys,
)
from kvm_vol.core.bitmap import DumpAvail
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import _write_minidump_file, bitmap_and_dump_avail
from kvm_vol.formats.minidump_arm64 import MINIDUMP_FLAG_PS_4K, MINIDUMP_FLAG_PS_16K, MinidumpArm64Header

__all__ = ["kva_l2_slots", "build_pmap_section", "write_minidump_arm64"]

_4K = 1 << 12


def _round(x: int, size: int) -> int:
    return (x + size - 1) // size * size


def _entry(mem: PhysMem, table: int, index: int) -> int:
    return mem.read_u64(table + 8 * index)


def kva_l2_slots(mem: PhysMem, l0phys: int, granule: Granule, kva_end: int) -> Iterable[Tuple[int, str, int]]:
    """``(va, kind, value)`` per L2 slot of KVA, as ``cpu_minidumpsys`` walks it.

    kind ``"none"`` (no tables: a page of zeros), ``"l1block"`` (value: the
    block's PA; covers the whole L1 slot, the walk then skips to its end),
    ``"l2block"`` (value: the block's PA), ``"l2table"`` (value: the L3
    table's PA).
    """
    l2_size, l1_size = 1 << granule.l2_shift, 1 << granule.l1_shift
    va = VM_MIN_KERNEL_ADDRESS
    while va < kva_end:
        l0e = _entry(mem, pte_to_phys(l0phys), granule.index(0, va))
        if l0e & ATTR_DESCR_MASK != L0_TABLE:
            yield va, "none", 0
            va += l2_size
            continue
        l1e = _entry(mem, pte_to_phys(l0e), granule.index(1, va))
        kind1 = l1e & ATTR_DESCR_MASK
        if kind1 == L1_BLOCK:
            yield va, "l1block", pte_to_phys(l1e) | (va & (l1_size - 1))
            va += l1_size
            continue
        if kind1 != L0_TABLE:
            yield va, "none", 0
            va += l2_size
            continue
        l2e = _entry(mem, pte_to_phys(l1e), granule.index(2, va))
        kind2 = l2e & ATTR_DESCR_MASK
        if kind2 == L2_BLOCK:
            yield va, "l2block", pte_to_phys(l2e)
        elif kind2 == L0_TABLE:
            yield va, "l2table", pte_to_phys(l2e)
        else:
            yield va, "none", 0
        va += l2_size


def build_pmap_section(mem: PhysMem, l0phys: int, granule: Granule, kva_end: int) -> Tuple[bytes, Set[int]]:
    """The pmap section and the set of physical pages (in the kernel's page size) it maps."""
    ps, n = granule.page_size, granule.ln_entries
    table = struct.Struct(f"<{n}Q")
    out = bytearray()
    pages: Set[int] = set()
    for _va, kind, pa in kva_l2_slots(mem, l0phys, granule, kva_end):
        if kind == "none":
            out += bytes(ps)
        elif kind == "l1block":
            for i in range(n):
                base = pa + i * (1 << granule.l2_shift)
                out += table.pack(*((base + j * ps) | ATTR_DEFAULT | L3_PAGE for j in range(n)))
                pages.update(base + j * ps for j in range(n))
        elif kind == "l2block":
            out += table.pack(*((pa + j * ps) | ATTR_DEFAULT | L3_PAGE for j in range(n)))
            pages.update(pa + j * ps for j in range(n))
        else:
            raw = mem.read(pa, ps)
            out += raw
            for e in table.unpack(raw):
                if e & ATTR_DESCR_MASK == L3_PAGE:
                    pages.add(pte_to_phys(e) & ~(ps - 1))
    return bytes(out), pages


def write_minidump_arm64(
    mem: PhysMem,
    path: str,
    *,
    version: int,
    page_size: int,
    l0phys: int,
    kva_end: int,
    dmapphys: int,
    dmapbase: int = DMAP_MIN_ADDRESS,
    dmapend: int = DMAP_MAX_ADDRESS,
    extra_pages: Iterable[int] = (),
    msgbuf: bytes = b"",
    dump_avail_count: int = 130,
    dump_avail: Optional[Sequence[Tuple[int, int]]] = None,
) -> MinidumpArm64Header:
    """Write an arm64 minidump of ``mem`` as ``cpu_minidumpsys`` would; returns the header.

    ``version`` 1 (bit = PFN, no dump_avail), 2 (dump_avail, 4 KiB) or 3
    (dump_avail and the page-size flag; ``page_size`` 4096 or 16384 - v1/v2
    kernels had only 4 KiB pages).  Dumped pages: what the KVA mappings
    reach plus ``extra_pages`` (physical addresses of pages the kernel
    marked with ``dump_add_page``: UMA pages of the direct map), kept only
    inside RAM and the direct map.  The dump_avail section is one page
    holding the kernel's ``dump_avail[dump_avail_count]`` array.
    """
    if version not in (1, 2, 3):
        raise ValueError(f"arm64 minidump version {version} is not 1, 2 or 3")
    if version < 3 and page_size != _4K:
        raise ValueError(f"an arm64 minidump v{version} has 4 KiB pages, not {page_size}")
    granule = granule_for(page_size)
    ps = page_size
    pmap, mapped = build_pmap_section(mem, l0phys, granule, kva_end)
    ranges = list(mem.ranges if dump_avail is None else dump_avail)
    ram = DumpAvail(ranges, ps)
    dmap_end_pa = dmapphys + (dmapend - dmapbase)
    wanted = mapped | {p & ~(ps - 1) for p in extra_pages}
    pages = sorted(p for p in wanted if dmapphys <= p < dmap_end_pa and ram.bit_id(p) is not None)

    # the dump_avail section is the whole array: sizeof(dump_avail)
    bitmap, avail = bitmap_and_dump_avail([pa // ps for pa in pages], ranges, version >= 2, ps, dump_avail_count * 8)
    hdr = MinidumpArm64Header(
        version=version, msgbufsize=len(msgbuf), bitmapsize=len(bitmap), pmapsize=len(pmap),
        kernbase=VM_MIN_KERNEL_ADDRESS,
        dmapphys=dmapphys, dmapbase=dmapbase, dmapend=dmapend, dumpavailsize=_round(len(avail), ps),
        flags=MINIDUMP_FLAG_PS_16K if ps == 1 << 14 else MINIDUMP_FLAG_PS_4K)
    _write_minidump_file(path, hdr.layout(), hdr.pack(), msgbuf, avail, bitmap, pmap,
                         (mem.read(pa, ps) for pa in pages), len(pages), ps)
    return hdr
