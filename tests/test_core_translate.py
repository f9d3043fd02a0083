"""kvm_vol.core: bitmap index, amd64 page-table walk and the minidump translator.

Everything here is built by hand (bitmaps, pmap entries, page tables), so
each rule of ``vmcore-formats.md`` §4–§5 is checked on its own.
"""

import random
import struct

import pytest

from dumpkit import PageTables, fill_tagged, tagged
from kvm_vol.core import amd64 as A
from kvm_vol.core.amd64 import (
    DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, KERNBASE, NBPDP, NBPDR, PAGE_SIZE, PG_NX, PG_PS, PG_RW, PG_V,
    VM_MIN_KERNEL_ADDRESS,
    MinidumpAmd64Translator, PageTableTranslator, is_canonical, walk,
)
from kvm_vol.core.bitmap import BitmapIndex, DumpAvail, first_bad_range
from kvm_vol.errors import TranslationError
from kvm_vol.forge.physmem import PhysMem

# ---------------------------------------------------------------- bitmap ----


def naive_index(bitmap: bytes, ranges, sparse_off: int, pages_in_file=None):
    """{page PA: file offset} by walking every bit: the definition, no cleverness."""
    ids = []
    for start, end in ranges:
        ids.extend(range(start // PAGE_SIZE, -(-end // PAGE_SIZE)))
    out, rank = {}, 0
    for bit in range(len(bitmap) * 8):
        if bitmap[bit >> 3] >> (bit & 7) & 1:
            if bit < len(ids) and (pages_in_file is None or rank < pages_in_file):
                out[ids[bit] * PAGE_SIZE] = sparse_off + rank * PAGE_SIZE
            rank += 1
    return out


def expand_runs(runs):
    out = {}
    for pa, off, length in runs:
        assert pa % PAGE_SIZE == 0 and length % PAGE_SIZE == 0 and length > 0
        for i in range(0, length, PAGE_SIZE):
            out[pa + i] = off + i
    return out


@pytest.mark.parametrize("nbytes", [0, 1, 7, 8, 13, 127, 128, 129, 1000, 4096])
@pytest.mark.parametrize("density", [0.02, 0.5, 0.97])
@pytest.mark.parametrize("with_avail", [False, True])
def test_bitmap_index_matches_definition(nbytes, density, with_avail):
    rng = random.Random(nbytes * 1000 + int(density * 100))
    bitmap = bytes(sum(1 << b for b in range(8) if rng.random() < density) for _ in range(nbytes))
    ranges = [(0x1000, 0x9F000), (0x100000, 0x180800), (0x200000, 0x20000000)] if with_avail else None
    eff_ranges = ranges if with_avail else [(0, nbytes * 8 * PAGE_SIZE)]
    idx = BitmapIndex(bitmap, ranges, 0x5000, None)
    expect = naive_index(bitmap, eff_ranges, 0x5000)
    assert idx.count == sum(bin(b).count("1") for b in bitmap)
    limit = max(expect, default=0) // PAGE_SIZE + 0x200  # past the last dumped page, holes included
    for pfn in range(limit):
        pa = pfn * PAGE_SIZE
        got = idx.pa_to_offset(pa + 0x123)
        assert got == (None if pa not in expect else expect[pa] + 0x123), hex(pa)
    assert expand_runs(idx.runs()) == expect


def test_bitmap_truncated_file_keeps_pages_that_are_there():
    bitmap = bytes([0b10110111, 0xFF, 0x01])
    idx = BitmapIndex(bitmap, None, 0x2000, 5)
    expect = naive_index(bitmap, [(0, 24 * PAGE_SIZE)], 0x2000, pages_in_file=5)
    assert idx.count == 15 and idx.present == 5 and idx.missing == 10
    assert expand_runs(idx.runs()) == expect
    assert idx.pa_to_offset(5 * PAGE_SIZE) == 0x2000 + 4 * PAGE_SIZE  # 5th set bit: still in the file
    assert idx.pa_to_offset(7 * PAGE_SIZE) is None  # 6th set bit: cut off


def test_runs_merge_across_words_and_split_at_dump_avail_holes():
    bitmap = b"\xff" * 16 + b"\x00" * 496 + b"\xff" * 512 + b"\x0f"
    idx = BitmapIndex(bitmap, [(0, 64 * PAGE_SIZE), (0x100000, 0x100000 + 0x2000 * PAGE_SIZE)], 0, None)
    runs = list(idx.runs())
    # bits 0..63 -> range 0; 64..127 -> start of range 1 (contiguous in the file, not in PA)
    assert runs[0] == (0, 0, 64 * PAGE_SIZE)
    assert runs[1] == (0x100000, 64 * PAGE_SIZE, 64 * PAGE_SIZE)
    assert runs[2] == (0x100000 + (512 * 8 - 64) * PAGE_SIZE, 128 * PAGE_SIZE, (512 * 8 + 4) * PAGE_SIZE)
    assert len(runs) == 3


def test_dump_avail_hole_is_not_in_the_dump_unlike_libkvm():
    """vmcore-formats.md §10 quirk 4 / §12: PA 0xa0000 lies between the ranges."""
    ranges = [(0x1000, 0x9F000), (0x100000, 0x2000000)]
    avail = DumpAvail(ranges)
    idx = BitmapIndex(b"\xff" * 4096, ranges, 0x81B000, None)

    def libkvm_bit_id(pa):  # _kvm_pa_bit_id: skips ranges with pa >= end, never checks pa >= start
        adj = 0
        for start, end in ranges:
            if pa >= end:
                adj += -(-end // PAGE_SIZE) - start // PAGE_SIZE
            else:
                return pa // PAGE_SIZE - start // PAGE_SIZE + adj
        return None

    assert libkvm_bit_id(0xA0000) == avail.bit_id(0x3F000)  # libkvm reads PA 0x3f000's page there
    assert avail.bit_id(0xA0000) is None
    assert idx.pa_to_offset(0xA0000) is None
    assert idx.pa_to_offset(0x3F000) == 0x81B000 + 0x3E * PAGE_SIZE
    assert idx.pa_to_offset(0x0) is None  # PA 0 is below the first range
    assert idx.pa_to_offset(0x100000) == 0x81B000 + 0x9E * PAGE_SIZE


def test_dump_avail_numbering_and_reverse():
    """Unaligned ranges count every page they touch (howmany(end) - start / PAGE_SIZE)."""
    avail = DumpAvail([(0x1800, 0x3000), (0x10000, 0x10001), (0x11000, 0x12800), (0x12800, 0x14000)])
    assert avail.pages == 2 + 1 + 2 + 2
    pas = (0x1000, 0x1800, 0x2FFF, 0x3000, 0x10000, 0x10FFF, 0x11000, 0x12000, 0x12FFF, 0x13000, 0x14000)
    assert [avail.bit_id(pa) for pa in pas] == [0, 0, 1, None, 2, 2, 3, 4, 4, 6, None]  # 0x12000: first range wins
    assert [avail.pa_of_bit(b) for b in range(8)] == [
        0x1000, 0x2000, 0x10000, 0x11000, 0x12000, 0x12000, 0x13000, None]


@pytest.mark.parametrize("ranges,index", [
    ([(0x2000, 0x1000)], 0),
    ([(0x1000, 0x1000)], 0),
    ([(0x1000, 0x5000), (0x4000, 0x8000)], 1),
    ([(0x8000, 0x9000), (0x1000, 0x2000)], 1),
])
def test_bad_dump_avail_is_refused(ranges, index):
    assert first_bad_range(ranges)[0] == index
    with pytest.raises(ValueError, match=rf"dump_avail\[{index}\]"):
        DumpAvail(ranges)


def test_stray_bits_beyond_dump_avail_are_counted_but_unreachable():
    idx = BitmapIndex(b"\xff\x03", [(0, 8 * PAGE_SIZE)], 0, None)
    assert idx.count == 10 and idx.stray_bits() == 2
    assert list(idx.runs()) == [(0, 0, 8 * PAGE_SIZE)]


# ------------------------------------------------------------------ walk ----


@pytest.fixture(scope="module")
def paged():
    """Page tables at 0x10000 over 16 MiB of tagged RAM: 4 KiB, 2 MiB and 1 GiB leaves."""
    mem = PhysMem([(0, 0x1000000)])
    fill_tagged(mem, 0x100000, 0x1000000)
    pt = PageTables(mem, 0x10000, 0x100000)
    pt.map(VM_MIN_KERNEL_ADDRESS, 0x345000, PAGE_SIZE, PG_V | PG_RW | PG_NX)
    pt.map(VM_MIN_KERNEL_ADDRESS + PAGE_SIZE, 0x123000)
    pt.map(KERNBASE + 0x200000, 0x400000, NBPDR)
    pt.map(DMAP_MIN_ADDRESS, 0, NBPDP)
    pt.set_entry(VM_MIN_KERNEL_ADDRESS + 2 * PAGE_SIZE, 1, 0x777000)  # PTE without PG_V
    pt.set_entry(VM_MIN_KERNEL_ADDRESS + NBPDR, 2, 0)  # invalid PDE
    pt.set_entry(VM_MIN_KERNEL_ADDRESS + NBPDP, 3, 0)  # invalid PDPE
    return mem


def test_walk_leaves(paged):
    read = paged.read_u64
    assert walk(read, 0x10000, VM_MIN_KERNEL_ADDRESS + 0x10) == (0x345010, PAGE_SIZE)
    assert walk(read, 0x10000, VM_MIN_KERNEL_ADDRESS + PAGE_SIZE + 0xFFF) == (0x123FFF, PAGE_SIZE)
    assert walk(read, 0x10000, KERNBASE + 0x3FFFFF) == (0x5FFFFF, NBPDR)
    assert walk(read, 0x10000, DMAP_MIN_ADDRESS + 0xABCDEF) == (0xABCDEF, NBPDP)


@pytest.mark.parametrize("va,reason", [
    (VM_MIN_KERNEL_ADDRESS + 2 * PAGE_SIZE, "pte not valid"),
    (VM_MIN_KERNEL_ADDRESS + NBPDR, "pde not valid"),
    (VM_MIN_KERNEL_ADDRESS + NBPDP, "pdpe not valid"),
    (0x7FFF00000000, "pml4e not valid"),
    (0x800000000000, "non-canonical address"),
    (0xFFFF7FFFFFFFFFFF, "non-canonical address"),
])
def test_walk_reasons(paged, va, reason):
    with pytest.raises(TranslationError) as exc:
        walk(paged.read_u64, 0x10000, va)
    assert exc.value.reason == reason and exc.value.address == va


def test_walk_five_levels(paged):
    """LA57: a PML5 whose entry 1 points at the 4-level PML4 above."""
    mem = PhysMem([(0, 0x1000000)])
    mem.pages.update({pfn: bytearray(page) for pfn, page in paged.pages.items()})
    mem.write_u64(0xF0000 + 8, 0x10000 | PG_V | PG_RW)
    va5 = (1 << 48) | (VM_MIN_KERNEL_ADDRESS & ((1 << 48) - 1))  # PML5 slot 1, then the 4-level path
    assert is_canonical(va5, 5) and not is_canonical(va5, 4)
    assert walk(mem.read_u64, 0xF0000, va5 + 0x10, levels=5) == (0x345010, PAGE_SIZE)
    with pytest.raises(TranslationError, match="pml5e not valid"):
        walk(mem.read_u64, 0xF0000, 2 << 48, levels=5)
    with pytest.raises(TranslationError, match="non-canonical"):
        walk(mem.read_u64, 0xF0000, 1 << 57, levels=5)


def test_page_table_translator_reads_page_by_page(paged):
    def read_phys(pa, n):
        if 0x800000 <= pa < 0x900000:
            raise TranslationError(pa, f"physical page {pa & ~0xFFF:#x} not in the dump")
        return paged.read(pa, n)

    tr = PageTableTranslator(read_phys, 0x10000)
    va = VM_MIN_KERNEL_ADDRESS + 0xFF8
    assert tr.kvatop(va) == (0x345FF8, 8)
    assert tr.read(va, 16) == tagged(0x345FF8, 8) + tagged(0x123000, 8)  # different PAs
    with pytest.raises(TranslationError) as exc:
        tr.read(VM_MIN_KERNEL_ADDRESS + PAGE_SIZE + 0xFF8, 16)
    assert exc.value.address == VM_MIN_KERNEL_ADDRESS + 2 * PAGE_SIZE and exc.value.reason == "pte not valid"
    assert tr.read(VM_MIN_KERNEL_ADDRESS + PAGE_SIZE + 0xFF8, 16, pad=True) == tagged(0x123FF8, 8) + bytes(8)
    with pytest.raises(TranslationError) as exc:  # mapped, but the PA is not in the "dump"
        tr.read(DMAP_MIN_ADDRESS + 0x7FFFF8, 16)
    assert exc.value.address == DMAP_MIN_ADDRESS + 0x800000
    assert exc.value.reason == "physical page 0x800000 not in the dump"


# --------------------------------------------------- minidump translator ----

SPARSE = 0x3000


def hand_minidump(version):
    """A tiny minidump "file" (bytes) and the translator over it.

    Dumped pages (bitmap bit = PFN): PT page 0x5000, data pages 0x6000,
    0x7000 and 0x200000-0x3fffff (a 2 MiB page).  PA 0x8000 is mapped but
    not dumped; PT page 0x9000 is referenced but not dumped.
    """
    dumped = [0x5000, 0x6000, 0x7000] + list(range(0x200000, 0x400000, PAGE_SIZE))
    bitmap = bytearray(0x400000 // PAGE_SIZE // 8)
    for pa in dumped:
        bitmap[pa >> 15] |= 1 << ((pa >> 12) & 7)
    pages = {}
    pt = [0] * 512
    pt[0] = 0x6000 | PG_V | PG_RW
    pt[1] = 0x7000 | PG_V
    pt[2] = 0x8000 | PG_V
    pt[3] = 0x6000  # V clear
    pages[0x5000] = struct.pack("<512Q", *pt)
    for pa in dumped[1:]:
        pages[pa] = tagged(pa, PAGE_SIZE)
    data = bytearray(SPARSE + len(dumped) * PAGE_SIZE)
    for rank, pa in enumerate(dumped):
        data[SPARSE + rank * PAGE_SIZE:SPARSE + (rank + 1) * PAGE_SIZE] = pages[pa]
    kernbase = VM_MIN_KERNEL_ADDRESS if version > 1 else KERNBASE
    if version == 1:
        entries = [0x6000 | PG_V, 0x7000 | PG_V, 0x8000 | PG_V, 0]
        entries += [(0x200000 + i * PAGE_SIZE) | PG_V for i in range(512)]
    else:
        entries = [0x5000 | PG_V | PG_RW, 0x200000 | PG_V | PG_PS, 0, 0x9000 | PG_V]
    phys = BitmapIndex(bytes(bitmap), None, SPARSE, None)

    def read_file(off, n):
        return bytes(data[off:off + n])

    def pmap_entry(i):
        return entries[i] if 0 <= i < len(entries) else None

    tr = MinidumpAmd64Translator(version, kernbase, DMAP_MIN_ADDRESS, DMAP_MIN_ADDRESS + 0x400000,
                                 pmap_entry, len(entries), phys, read_file)
    return tr, kernbase


def offset_of(pa):
    dumped = [0x5000, 0x6000, 0x7000] + list(range(0x200000, 0x400000, PAGE_SIZE))
    return SPARSE + dumped.index(pa & ~0xFFF) * PAGE_SIZE + (pa & 0xFFF)


@pytest.mark.parametrize("version", [2, 3])
def test_minidump_translator_v2_pde_array(version):
    tr, kb = hand_minidump(version)
    assert tr.kvatop(kb + 0x10) == (offset_of(0x6010), 0x6010, PAGE_SIZE - 0x10)
    assert tr.kvatop(kb + NBPDR + 0x1234) == (offset_of(0x201234), 0x201234, PAGE_SIZE - 0x234)
    assert tr.read(kb + 0xFF8, 16) == tagged(0x6FF8, 8) + tagged(0x7000, 8)
    assert tr.read(kb + NBPDR + 0x1FFFF8, 8) == tagged(0x3FFFF8, 8)
    assert tr.kvatop(DMAP_MIN_ADDRESS + 0x7008)[:2] == (offset_of(0x7008), 0x7008)
    cases = {
        kb + 2 * PAGE_SIZE: "physical address 0x8000 not in minidump",
        kb + 3 * PAGE_SIZE: "pte not valid",
        kb + 2 * NBPDR: "pde not valid",
        kb + 3 * NBPDR + 5: "page-table page 0x9000 not in minidump",
        kb + 4 * NBPDR: f"virtual address {kb + 4 * NBPDR:#x} not minidumped (beyond the pmap section)",
        DMAP_MIN_ADDRESS + 0x8000: f"direct map address {DMAP_MIN_ADDRESS + 0x8000:#x} not in minidump",
        DMAP_MIN_ADDRESS + 0x400000: f"virtual address {DMAP_MIN_ADDRESS + 0x400000:#x} not minidumped",
        DMAP_MIN_ADDRESS - 1: f"virtual address {DMAP_MIN_ADDRESS - 1:#x} not minidumped",
        0x1000: "virtual address 0x1000 not minidumped",
    }
    for va, reason in cases.items():
        with pytest.raises(TranslationError) as exc:
            tr.kvatop(va)
        assert (exc.value.address, exc.value.reason) == (va, reason)


def test_minidump_translator_v1_pte_array():
    tr, kb = hand_minidump(1)
    assert tr.kvatop(kb + 0x10) == (offset_of(0x6010), 0x6010, PAGE_SIZE - 0x10)
    assert tr.read(kb + 4 * PAGE_SIZE + 0x1FF8, 16) == tagged(0x201FF8, 16)
    with pytest.raises(TranslationError, match="pte not valid"):
        tr.kvatop(kb + 3 * PAGE_SIZE)
    with pytest.raises(TranslationError, match="physical address 0x8000 not in minidump"):
        tr.kvatop(kb + 2 * PAGE_SIZE)
    with pytest.raises(TranslationError, match="beyond the pmap section"):
        tr.kvatop(kb + 516 * PAGE_SIZE)


def test_minidump_translator_read_names_first_failing_page():
    """Not libkvm's all-or-nothing -1 with 'invalid address' (quirks 1 and 2)."""
    tr, kb = hand_minidump(3)
    with pytest.raises(TranslationError) as exc:
        tr.read(kb + PAGE_SIZE + 0xFF0, 0x20)
    assert exc.value.address == kb + 2 * PAGE_SIZE
    assert exc.value.reason == "physical address 0x8000 not in minidump"
    with pytest.raises(TranslationError) as exc:  # failing on the first page names the address asked for
        tr.read(kb + 2 * PAGE_SIZE + 0x10, 8)
    assert exc.value.address == kb + 2 * PAGE_SIZE + 0x10
    padded = tr.read(kb + PAGE_SIZE + 0xFF0, 0x1020, pad=True)
    assert padded == tagged(0x7FF0, 0x10) + bytes(0x1000) + bytes(0x10)


def test_layout_constants_match_freebsd():
    """The values vmcore-formats.md §3 quotes, derived here from the PML4 slot numbers."""
    assert (KERNBASE, VM_MIN_KERNEL_ADDRESS) == (0xFFFFFFFF80000000, 0xFFFFFE0000000000)
    assert (DMAP_MIN_ADDRESS, DMAP_MAX_ADDRESS) == (0xFFFFF80000000000, 0xFFFFFC0000000000)
    assert (A.KPML4BASE, A.KPML4I, A.KPDPI, A.DMPML4I, A.PML4PML4I) == (508, 511, 510, 496, 256)
    assert A.KERNSTART == 0xFFFFFFFF80200000
    assert (A.PG_FRAME, A.PG_PS_FRAME, A.PG_PS_PDP_FRAME) == (
        0x000FFFFFFFFFF000, 0x000FFFFFFFE00000, 0x000FFFFFC0000000)
