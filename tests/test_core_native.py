"""The C translation core against its pure-Python twin, the forge's memory and hostile input.

Every check runs both implementations of :mod:`kvm_vol.core.engine` on the
same dump and demands the same bytes or the same error (address and reason),
and that what is read is what the forge put there.  Inputs: forge machines
in every format (random VAs and lengths: page straddles, dump_avail holes,
pages missing from minidumps, 2 MiB and 1 GiB pages), the hand-made §12
machine of ``dumpkit`` (each edge case by name), hand-made 5-level page
tables, and random garbage (page tables, pmap sections, bitmaps, dump_avail)
for memory safety - ``benchmarks/asan_core.sh`` runs this file with the C
core built under AddressSanitizer.
"""

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dumpkit as dk
from nativekit import SpacePair, ensure_native
from kvm_vol.core import amd64 as A
from kvm_vol.core import engine
from kvm_vol.core.amd64 import NBPDP, NBPDR, PAGE_SIZE, PG_PS, PG_RW, PG_V
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.forge import build
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import write_elf, write_minidump, write_raw
from kvm_vol.formats import detect, open_dump
from kvm_vol.formats.minidump import DUMP_AVAIL_PAIR, MinidumpHeader
from kvm_vol.formats.source import BytesSource

MINIDUMP_FORMATS = ("vmcore", "minidump-v1", "minidump-v2", "kdh-vmcore")
MASK48 = (1 << 48) - 1


# ------------------------------------------------------------------ helpers --


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """The C core (built into a scratch directory when this checkout was not built in place)."""
    return ensure_native(str(tmp_path_factory.mktemp("native")))


class Pair(SpacePair):
    """The same amd64 dump served by the C core and by the twin."""

    def __init__(self, dump, path=None, data=None, root=0, levels=4, minidump=None, canon48=False):
        if minidump is None:
            minidump = dump.kind == "minidump"
        super().__init__(dump, path, data, root, levels=levels, canon48=canon48, minidump=minidump)


# ----------------------------------------------------------- forge images ----


@pytest.fixture(scope="module")
def forged(tmp_path_factory, native):
    """Two forge machines (2 MiB direct map on 14.3, 1 GiB direct map on 15.0), every format."""
    out = []
    for pack, dmap_1g in (("freebsd-14.3-amd64", False), ("freebsd-15.0-amd64", True)):
        machine = build.build(pack, dmap_1g=dmap_1g)
        directory = tmp_path_factory.mktemp(f"forge-{pack}")
        paths = machine.write(str(directory), stem="forge", formats=build.FORMATS)
        out.append((machine, paths))
    return out


def forge_regions(m):
    """VA pools: kernel image (2 MiB pages), kmem pages (4 KiB, shuffled PAs), the direct map, others."""
    kva = sorted(m.kva_pages)
    return [
        lambda rng: A.KERNSTART + rng.randrange(0, 2 * NBPDR),
        lambda rng: rng.choice(kva) + rng.randrange(-64, PAGE_SIZE),
        lambda rng: A.DMAP_MIN_ADDRESS + rng.randrange(0, m.ram_size + (4 << 20)),
        lambda rng: A.VM_MIN_KERNEL_ADDRESS + rng.randrange(0, m.kva_end - A.VM_MIN_KERNEL_ADDRESS + (8 << 20)),
        lambda rng: rng.randrange(0, 1 << 47),
        lambda rng: rng.randrange(0, 1 << 64),
        lambda rng: A.KERNBASE + rng.randrange(0, 1 << 31),
    ]


def forge_truth(m, va, n):
    """The forge's bytes at ``va`` (None where the forge itself never mapped the address)."""
    try:
        return m.machine.read_kva(va, n)
    except KeyError:
        return None


def _pages(va, n):
    return range(va & ~0xFFF, va + max(n, 1), PAGE_SIZE)


def check_against_forge(forged_machine, fmt, va, n, got):
    """A successful read returns the forge's bytes; what the forge mapped (and dumped) must be readable."""
    m = forged_machine.machine
    truth = forge_truth(forged_machine, va, n)
    recursive = va >= 1 << 63 and (va >> A.PML4SHIFT) & 511 == A.PML4PML4I  # page tables as seen by themselves
    if got[0] == "ok":
        if not recursive:
            assert truth is not None, f"{fmt}: read {va:#x}+{n} succeeded where the forge maps nothing"
            assert got[1] == truth, f"{fmt}: wrong bytes at {va:#x}+{n}"
        return
    in_image = A.KERNSTART <= va and va + n <= A.KERNSTART + 2 * NBPDR
    # a v1 minidump's pmap section starts at KERNBASE: kernel_map below it is not in such a dump
    in_kmem = all(p in m.kva_pages for p in _pages(va, n)) and (fmt != "minidump-v1" or va >= A.KERNBASE)
    assert not (in_image or in_kmem), f"{fmt}: mapped kernel memory at {va:#x}+{n} failed: {got}"
    if fmt in ("full", "raw", "kdh-full") and A.DMAP_MIN_ADDRESS <= va < A.DMAP_MAX_ADDRESS - n:
        pa = va - A.DMAP_MIN_ADDRESS
        in_ram = all(m.mem.in_ram(p) for p in _pages(pa, n)) or (fmt == "raw" and pa + n <= m.mem.end)
        assert not in_ram, f"{fmt}: the direct map of RAM at {va:#x}+{n} failed: {got}"


@pytest.mark.parametrize("fmt", build.FORMATS)
def test_random_reads_agree_with_twin_and_forge(forged, fmt):
    """Thousands of random (VA, length) per image: same bytes or error, and the forge's bytes."""
    for index, (machine, paths) in enumerate(forged):
        path = paths[fmt]
        dump = open_dump(path)
        pair = Pair(dump, path, root=machine.machine.kpml4phys)
        rng = random.Random(f"{fmt}-{index}")
        regions = forge_regions(machine.machine)
        outcomes = set()
        for i in range(1500):
            va = rng.choice(regions)(rng)
            if rng.random() < 0.3:  # land near a page boundary: straddles
                va = (va & ~0xFFF) + PAGE_SIZE - rng.randrange(1, 16)
            n = rng.choice((1, 8, 16, 100, 4096, 5000, 3 * PAGE_SIZE))
            va = min(va, (1 << 64) - n)
            got = pair.check(va, n, mapping=i % 5 == 0)
            outcomes.add(got[0] if got[0] == "ok" else got[2].split(" 0x")[0])
            check_against_forge(machine, fmt, va, n, got)
        assert "ok" in outcomes and len(outcomes) >= 3, outcomes  # both successes and several failure kinds
        dump.close()


@pytest.mark.parametrize("fmt", ("vmcore", "full", "raw", "minidump-v1"))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_reads_and_mappings(forged, fmt, data):
    """Hypothesis-chosen VAs, lengths and pad flags: C core == twin, and == the forge."""
    machine, paths = forged[data.draw(st.integers(0, 1), label="machine")]
    pair = _pair_cache(paths[fmt], machine.machine.kpml4phys)
    region = data.draw(st.integers(0, len(forge_regions(machine.machine)) - 1), label="region")
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    va = forge_regions(machine.machine)[region](rng)
    va += data.draw(st.integers(-PAGE_SIZE, PAGE_SIZE), label="nudge")
    n = data.draw(st.one_of(st.integers(0, 16), st.integers(1, 3 * PAGE_SIZE)), label="length")
    va = max(0, min(va, (1 << 64) - max(n, 1)))
    got = pair.check(va, n)
    if n:
        check_against_forge(machine, fmt, va, n, got)


_PAIRS = {}


def _pair_cache(path, root):
    if path not in _PAIRS:
        _PAIRS[path] = Pair(open_dump(path), path, root=root)
    return _PAIRS[path]


@pytest.mark.parametrize("fmt", build.FORMATS)
def test_mapping_of_whole_kva_matches_forge(forged, fmt):
    """mapping() over all kmem KVA: the forge's VA → PA pages exactly, file offsets that hold them."""
    machine, paths = forged[0]
    m = machine.machine
    dump = open_dump(paths[fmt])
    pair = Pair(dump, paths[fmt], root=m.kpml4phys)
    start = min(m.kva_pages)
    end = max(m.kva_pages) + PAGE_SIZE
    runs = pair.same("mapping", start, end - start, True)[1]
    if fmt == "minidump-v1":
        assert runs == []  # kernel_map lies below the v1 pmap section (which starts at KERNBASE)
        return
    got = {}
    for va, pa, off, n in runs:
        for k in range(0, n, PAGE_SIZE):
            got[va + k] = (pa + k, off + k)
    assert {va: pa for va, (pa, _o) in got.items()} == {va: pa for va, pa in m.kva_pages.items() if start <= va < end}
    with open(paths[fmt], "rb") as fh:
        for va, (pa, off) in list(got.items())[::97]:
            fh.seek(off)
            assert fh.read(PAGE_SIZE) == m.mem.read(pa, PAGE_SIZE)
    # unmapped holes between allocations raise without ignore_errors, naming the first bad page
    holes = [va for va in range(start, end, PAGE_SIZE) if va not in m.kva_pages]
    if holes:
        err = pair.same("mapping", start, end - start, False)
        assert err[0] == "error" and err[1] == holes[0]
    dump.close()


def test_physical_reads_agree(forged):
    """Physical reads (the physical layer's path): runs, bitmap, holes, pad."""
    for machine, paths in forged:
        for fmt in build.FORMATS:
            dump = open_dump(paths[fmt])
            pair = Pair(dump, paths[fmt], root=machine.machine.kpml4phys)
            rng = random.Random(fmt)
            for _ in range(400):
                pa = rng.randrange(0, machine.machine.ram_size + (1 << 20)) & ~rng.choice((0, 7, 0xFFF))
                n = rng.choice((1, 8, 4096, 10000))
                got = pair.same_phys(pa, n)
                pair.same_phys(pa, n, True)
                if got[0] == "ok":
                    assert got[1] == machine.machine.mem.read(pa, n)
            dump.close()


# ------------------------------------------------- the §12 machine, by name --


@pytest.fixture(scope="module")
def section12(tmp_path_factory, native):
    m = dk.build_machine()
    d = tmp_path_factory.mktemp("sec12")
    paths = {}
    for version in (1, 2, 3):
        paths[f"v{version}"] = str(d / f"vmcore.v{version}")
        write_minidump(m.mem, paths[f"v{version}"], version=version, kpml4phys=m.kpml4phys, kva_end=1 << 64,
                       exclude_pfns=m.excluded_pfns)
    paths["full"] = str(d / "full")
    write_elf(m.mem, paths["full"])
    paths["raw"] = str(d / "raw")
    write_raw(m.mem, paths["raw"])
    return m, paths


EDGE_CASES = [
    ("version string in a 2 MiB page", dk.VERSION_VA, len(dk.VERSION_STR)),
    ("read across a 2 MiB page boundary", dk.STRADDLE_2M_VA, 20),
    ("read across two shuffled 4 KiB pages", dk.CROSS_4K_VA, 16),
    ("page not in the minidump", dk.NOT_DUMPED_VA, 8),
    ("read running into the missing page", dk.NOT_DUMPED_VA - 4, 8),
    ("invalid PTE", dk.INVALID_PTE_VA, 8),
    ("invalid PDE with junk", dk.INVALID_PDE_VA + 0x1234, 8),
    ("unmapped GiB", dk.UNMAPPED_GIB_VA, 8),
    ("1 GiB page", dk.GIG_VA + 0x200010, 64),
    ("direct map, dumped low page", A.DMAP_MIN_ADDRESS + dk.LOW_PA, len(dk.LOW_STR)),
    ("direct map, dump_avail hole", A.DMAP_MIN_ADDRESS + dk.HOLE_PA, 8),
    ("direct map beyond RAM", A.DMAP_MIN_ADDRESS + 0x3000000, 8),
    ("non-canonical", 0x0000900000000000, 8),
    ("user half, no mapping", 0x1000, 8),
    ("last byte of the address space", (1 << 64) - 1, 1),
    ("beyond the pmap section (v1 pmap ends at kva_end)", (1 << 64) - PAGE_SIZE, 8),
]


@pytest.mark.parametrize("fmt", ("v1", "v2", "v3", "full", "raw"))
@pytest.mark.parametrize("name,va,n", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_section12_edge_cases(section12, fmt, name, va, n):
    m, paths = section12
    dump = open_dump(paths[fmt])
    pair = Pair(dump, paths[fmt], root=m.kpml4phys)
    got = pair.check(va, n)
    planted = m.strings.get(va)
    if planted is not None:
        assert got == ("ok", planted)
    if name == "read running into the missing page" and fmt.startswith("v"):
        # the first failing page is named exactly, not the start of the read
        assert got[0] == "error" and got[1] == dk.NOT_DUMPED_VA
    if name == "direct map, dump_avail hole" and fmt.startswith("v"):
        assert got[0] == "error" and "not in minidump" in got[2]
    if name in ("invalid PTE", "invalid PDE with junk", "unmapped GiB", "non-canonical"):
        assert got[0] == "error"
    dump.close()


def test_canon48_and_padding(section12):
    """Volatility's 48-bit kernel addresses are sign-extended; pad fills exactly the failing pages."""
    m, paths = section12
    dump = open_dump(paths["v3"])
    pair = Pair(dump, paths["v3"], root=m.kpml4phys, canon48=True)
    assert pair.same("read", dk.VERSION_VA & MASK48, len(dk.VERSION_STR)) == ("ok", dk.VERSION_STR)
    err = pair.same("read", (dk.NOT_DUMPED_VA - PAGE_SIZE) & MASK48, 2 * PAGE_SIZE)
    assert err[0] == "error" and err[1] == dk.NOT_DUMPED_VA & MASK48
    padded = pair.same("read", (dk.NOT_DUMPED_VA - PAGE_SIZE) & MASK48, 2 * PAGE_SIZE, True)[1]
    assert padded[PAGE_SIZE:] == bytes(PAGE_SIZE)
    assert padded[:PAGE_SIZE] == m.mem.read(m.scattered[15][1], PAGE_SIZE)  # the last scattered page
    runs = pair.same("mapping", dk.SCATTER_VA & MASK48, 16 * PAGE_SIZE)[1]
    assert all(va <= MASK48 for va, _pa, _off, _n in runs)
    assert sum(n for *_x, n in runs) == 16 * PAGE_SIZE
    dump.close()


def test_user_root_walks_while_kernel_uses_minidump_rules(section12):
    """A process space: user VA by its own page tables, kernel VA by the pmap section."""
    m, paths = section12
    mem = m.mem
    # A user PML4 in the dumped range, kernel half copied like pmap_pinit(): one 4 KiB user page.
    user_root, pdp, pd, pt, page = 0x1200000, 0x1201000, 0x1202000, 0x1203000, 0x1204000
    local = PhysMem(mem.ranges)
    local.pages = dict(mem.pages)
    for pa in (user_root, pdp, pd, pt):
        local.pages[pa >> 12] = bytearray(PAGE_SIZE)
    local.pages[user_root >> 12][256 * 8:] = mem.read(m.kpml4phys + 256 * 8, 256 * 8)
    local.write_u64(user_root, pdp | PG_V | PG_RW | 4)
    local.write_u64(pdp, pd | PG_V | PG_RW | 4)
    local.write_u64(pd + 8 * 1, pt | PG_V | PG_RW | 4)
    local.write_u64(pt + 8 * 5, page | PG_V | PG_RW | 4)
    user_va = (1 << 21) + 5 * PAGE_SIZE
    local.write(page, b"USER-PAGE-CONTENTS")
    d = os.path.dirname(paths["v3"])
    path = os.path.join(d, "user.v3")
    write_minidump(local, path, version=3, kpml4phys=m.kpml4phys, kva_end=1 << 64,
                   extra_pfns=[p >> 12 for p in (user_root, pdp, pd, pt, page)])
    dump = open_dump(path)
    pair = Pair(dump, path, root=user_root, canon48=True)
    assert pair.same("read", user_va, 18) == ("ok", b"USER-PAGE-CONTENTS")
    assert pair.same("read", dk.VERSION_VA & MASK48, len(dk.VERSION_STR)) == ("ok", dk.VERSION_STR)
    err = pair.same("read", user_va + PAGE_SIZE, 8)
    assert err[:3] == ("error", user_va + PAGE_SIZE, "pte not valid")
    err = pair.same("read", 1 << 30, 8)
    assert err[:3] == ("error", 1 << 30, "pdpe not valid")
    err = pair.same("read", 1 << 40, 8)
    assert err[:3] == ("error", 1 << 40, "pml4e not valid")
    dump.close()


# --------------------------------------------------------- 5-level paging --


def test_five_level_walks_with_large_pages(native):
    """LA57: a PML5 root, 4 KiB / 2 MiB / 1 GiB leaves, and the 57-bit canonical rule."""
    mem = PhysMem([(0, 0x4000000)])
    root, l4, l3, l2, l1 = 0x100000, 0x101000, 0x102000, 0x103000, 0x104000
    va_hi = 0xFF12345000000000 & ~(NBPDP - 1)  # canonical only with 57 bits

    def idx(va, level):
        return (va >> (12 + 9 * (level - 1))) & 511

    for pa in (root, l4, l3, l2, l1):
        mem.write(pa, bytes(PAGE_SIZE))
    mem.write_u64(root + 8 * idx(va_hi, 5), l4 | PG_V)
    mem.write_u64(l4 + 8 * idx(va_hi, 4), l3 | PG_V)
    mem.write_u64(l3 + 8 * idx(va_hi, 3), NBPDP | PG_V | PG_PS)  # 1 GiB page at 1 GiB: beyond the image
    va_2m = va_hi + NBPDP
    mem.write_u64(l3 + 8 * idx(va_2m, 3), l2 | PG_V)
    mem.write_u64(l2 + 8 * idx(va_2m, 2), 0x2000000 | PG_V | PG_PS)
    va_4k = va_2m + NBPDR
    mem.write_u64(l2 + 8 * idx(va_4k, 2), l1 | PG_V)
    mem.write_u64(l1 + 8 * idx(va_4k, 1), 0x3000000 | PG_V)
    mem.write(0x2000000 + 0x1FFFF8, b"2M-END!!")
    mem.write(0x3000000, b"4K-START")
    raw = bytearray(0x4000000)
    for pfn, page in mem.pages.items():
        raw[pfn << 12:(pfn + 1) << 12] = page
    raw = bytes(raw)
    dump = detect(BytesSource(raw))
    pair = Pair(dump, data=raw, root=root, levels=5)
    assert pair.same("read", va_2m + NBPDR - 8, 16) == ("ok", b"2M-END!!4K-START")
    assert pair.same("translate", va_4k + 0x10) == ("ok", (0x3000010, 0x3000010))
    assert pair.same("translate", va_2m + 0x12345)[1] == (0x2012345, 0x2012345)
    gig = pair.same("translate", va_hi + 0x10)  # 1 GiB leaf whose frame is past the image
    assert gig[:3] == ("error", va_hi + 0x10, "physical page 0x40000000 not in the raw image")
    assert pair.same("read", 0x0100000000000000, 8)[2] == "non-canonical address"  # bit 56 set, 63..57 clear
    assert pair.same("read", 0x00FF000000000000, 8)[2] == "pml5e not valid"  # canonical with 57 bits
    assert pair.same("read", va_4k + PAGE_SIZE, 1)[:3] == ("error", va_4k + PAGE_SIZE, "pte not valid")
    assert pair.same("read", 1 << 48, 1)[:3] == ("error", 1 << 48, "pml5e not valid")
    assert A.walk(lambda pa: struct.unpack("<Q", raw[pa:pa + 8])[0], root, va_4k + 0x10, 5) == (0x3000010, PAGE_SIZE)
    runs = pair.same("mapping", va_2m, NBPDP, True)[1]
    assert [(va, n) for va, _pa, _off, n in runs] == [(va_2m, NBPDR + PAGE_SIZE)] or \
        [(va, n) for va, _pa, _off, n in runs] == [(va_2m, NBPDR), (va_4k, PAGE_SIZE)]


# ------------------------------------------------------------- fuzzing ------


def _random_tables(rng, npages):
    """Random page-table-ish pages: entries pointing inside the image, outside, or pure garbage."""
    out = bytearray()
    for _ in range(npages * 512):
        kind = rng.random()
        if kind < 0.3:
            value = 0
        elif kind < 0.8:
            value = (rng.randrange(npages) << 12) | rng.choice((PG_V, PG_V | PG_PS, PG_V | PG_RW, 0, PG_PS))
        else:
            value = rng.getrandbits(64)
        out += value.to_bytes(8, "little")
    return bytes(out)


def test_fuzz_random_page_tables(native):
    """Random tables, roots, 4/5 levels: identical outcomes, no crash (ASan checks the C side)."""
    rng = random.Random(20260101)
    for round_ in range(25):
        npages = rng.choice((1, 3, 64))
        raw = _random_tables(rng, npages)[:rng.choice((npages * PAGE_SIZE, npages * PAGE_SIZE - rng.randrange(1, 100)))]
        dump = detect(BytesSource(raw))
        levels = rng.choice((4, 5))
        root = rng.choice((0, rng.randrange(npages) << 12, rng.getrandbits(64)))
        pair = Pair(dump, data=raw, root=root, levels=levels, canon48=rng.random() < 0.3)
        for _ in range(120):
            va = rng.choice((rng.getrandbits(64), rng.getrandbits(48), rng.getrandbits(30),
                             (1 << 64) - rng.randrange(1, 3 * PAGE_SIZE)))
            n = rng.choice((0, 1, 8, 4095, 4097, 3 * PAGE_SIZE))
            n = min(n, (1 << 64) - va)
            pair.same("read", va, n)
            pair.same("read", va, n, True)
            pair.same("translate", va)
            pair.same("mapping", va & ~0xFFF, rng.choice((PAGE_SIZE, 16 * PAGE_SIZE)), True)
            pair.same_phys(rng.choice((rng.getrandbits(64) >> rng.randrange(64), rng.randrange(len(raw) + 64))), n)
        # C alone over huge ranges: bounded by the skip logic, never reading out of bounds
        for _ in range(2):
            list(pair.c.mapping(rng.getrandbits(48), 1 << 30, True))


def _random_minidump(rng):
    """A structurally valid minidump header over hostile sections."""
    version = rng.choice((1, 2, 3))
    npages = rng.choice((2, 16, 300))
    bitmap = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 7, 13, 64, 300))))
    ranges = None
    avail = b""
    if version == 3:
        ranges, pos = [], rng.randrange(0, 4) * PAGE_SIZE
        for _ in range(rng.randrange(1, 5)):
            start = pos + rng.randrange(0, 3) * PAGE_SIZE + rng.choice((0, 0, 0x10))
            end = start + rng.randrange(1, 40) * PAGE_SIZE + rng.choice((0, 0x800))
            ranges.append((start, end))
            pos = end + PAGE_SIZE
        avail = b"".join(DUMP_AVAIL_PAIR.pack(s, e) for s, e in ranges) + DUMP_AVAIL_PAIR.pack(0, 0)
    entries = []
    for _ in range(rng.choice((0, 1, 512, 1000))):
        kind = rng.random()
        if kind < 0.3:
            entries.append(0)
        elif kind < 0.85:
            entries.append((rng.randrange(0, 200) << 12) | rng.choice((PG_V, PG_V | PG_PS, 0)))
        else:
            entries.append(rng.getrandbits(64))
    pmap = struct.pack(f"<{len(entries)}Q", *entries)
    kernbase = rng.choice((A.VM_MIN_KERNEL_ADDRESS, A.KERNBASE, rng.getrandbits(64)))
    dmapbase = rng.choice((A.DMAP_MIN_ADDRESS, rng.getrandbits(64)))
    dmapend = dmapbase + rng.choice((0, 1 << 30, 1 << 42))
    hdr = MinidumpHeader(version=version, msgbufsize=rng.choice((0, 100)), bitmapsize=len(bitmap),
                         pmapsize=len(pmap), kernbase=kernbase, dmapbase=dmapbase, dmapend=min(dmapend, (1 << 64) - 1),
                         dumpavailsize=len(avail))
    lay = hdr.layout()
    data = bytearray(lay.sparse + npages * PAGE_SIZE)
    data[0:PAGE_SIZE] = hdr.pack()
    data[lay.dump_avail:lay.dump_avail + len(avail)] = avail
    data[lay.bitmap:lay.bitmap + len(bitmap)] = bitmap
    data[lay.pmap:lay.pmap + len(pmap)] = pmap
    data[lay.sparse:] = _random_tables(rng, npages)
    cut = rng.choice((len(data), len(data) - rng.randrange(1, npages * PAGE_SIZE)))
    return bytes(data[:cut]), kernbase, dmapbase


def test_fuzz_random_minidumps(native):
    """Hostile pmap entries, bitmaps (odd lengths), dump_avail and truncation: same outcomes, no crash."""
    rng = random.Random(4242)
    parsed = 0
    for _ in range(60):
        data, kernbase, dmapbase = _random_minidump(rng)
        try:
            dump = detect(BytesSource(data))
        except DumpFormatError:
            continue
        parsed += 1
        pair = Pair(dump, data=data, root=rng.choice((0, rng.randrange(0, 300) << 12)), canon48=rng.random() < 0.5)
        for _ in range(100):
            va = rng.choice((kernbase + rng.randrange(0, 1 << 31), dmapbase + rng.randrange(0, 1 << 24),
                             rng.getrandbits(64), A.KERNBASE + rng.randrange(0, 1 << 30)))
            va &= (1 << 64) - 1
            n = min(rng.choice((1, 8, 4096, 9000)), (1 << 64) - va)
            pair.same("read", va, n)
            pair.same("read", va, n, True)
            pair.same("translate", va)
            pair.same("mapping", va & ~0xFFF, rng.choice((PAGE_SIZE, 16 * PAGE_SIZE)), True)
            pair.same_phys(rng.randrange(0, 1 << 30), n)
        list(pair.c.mapping(kernbase & ~0xFFF, 1 << 36, True))
    assert parsed >= 30


# ----------------------------------------------------------- the index -----


def test_bitmap_rank_index_is_small_and_exact(native):
    """The C rank index: at most bitmap/64 bytes, and every page where the twin's index puts it."""
    rng = random.Random(7)
    for nbytes in (1, 9, 255, 256, 257, 8191, 8192, 8193, 70000):
        bitmap = bytes(rng.getrandbits(8) & rng.choice((0xFF, 0x01, 0x00)) for _ in range(nbytes))
        ranges = [(0x1000, 0x9F000), (0x100000, 0x100000 + nbytes * 8 * PAGE_SIZE)]
        hdr = MinidumpHeader(version=3, bitmapsize=nbytes, dumpavailsize=len(ranges) * 16 + 16)
        lay = hdr.layout()
        data = bytearray(lay.sparse + PAGE_SIZE * 16)
        data[:PAGE_SIZE] = hdr.pack()
        data[lay.dump_avail:lay.dump_avail + 48] = b"".join(DUMP_AVAIL_PAIR.pack(s, e) for s, e in ranges + [(0, 0)])
        data[lay.bitmap:lay.bitmap + nbytes] = bitmap
        dump = detect(BytesSource(bytes(data)))
        phys_c = engine.open_phys(dump, data=bytes(data), pure=False)
        assert phys_c.index_bytes() <= max(16, nbytes // 64 + 16)
        index = dump.bitmap_index
        for bit in list(range(0, min(nbytes * 8, 3000))) + [rng.randrange(nbytes * 8) for _ in range(2000)]:
            pa = index.avail.pa_of_bit(bit)
            if pa is None:
                continue
            assert phys_c.lookup(pa + 5) == index.pa_to_offset(pa + 5), (nbytes, bit)
        assert phys_c.lookup(0xA0000) is None  # the dump_avail hole


def test_implementation_is_reported(native, monkeypatch):
    monkeypatch.delenv("KVM_VOL_PURE", raising=False)  # the suite may run with the twin forced
    assert engine.implementation() == "C core (cffi)"
    monkeypatch.setenv("KVM_VOL_PURE", "1")
    assert engine.implementation() == "pure-Python twin (KVM_VOL_PURE is set)"
    assert not engine.use_native()


def test_info_names_the_core(native, section12, capsys, monkeypatch):
    """``kvm-vol info`` says which translation core serves this installation."""
    import argparse
    import json

    from kvm_vol.formats import info

    _m, paths = section12
    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    monkeypatch.setenv("KVM_VOL_PURE", "0")
    info.run(parser.parse_args([paths["v3"]]))
    assert "  translation core  C core (cffi)" in capsys.readouterr().out.splitlines()
    monkeypatch.setenv("KVM_VOL_PURE", "1")
    info.run(parser.parse_args([paths["v3"], "--json"]))
    assert json.loads(capsys.readouterr().out)["translation_core"] == "pure-Python twin (KVM_VOL_PURE is set)"


def test_spaces_over_one_dump_share_its_pmap_and_keep_their_own(native, section12):
    """Process layers share the dump's pmap table (kept by the kv_phys); a space given other
    entries gets its own copy, and freeing any space leaves the others' tables intact."""
    mod = engine.native_module()
    ffi, lib = mod.ffi, mod.lib
    _m, paths = section12
    with open_dump(paths["v3"]) as dump:
        phys = engine._NativePhys(dump, path=paths["v3"])
        first = engine._NativeSpace(phys, 0, 4, True, True)
        want = first.read(dk.VERSION_VA, len(dk.VERSION_STR))
        assert want == dk.VERSION_STR
        hdr = dump.header
        other = engine._NativeSpace(phys, 0, 4, True, False)
        blank = ffi.from_buffer(bytes(len(dump._pmap)))
        assert lib.kv_space_set_minidump(other._h, hdr.version, hdr.kernbase, hdr.dmapbase, hdr.dmapend,
                                         blank, dump.pmap_entries) == 0
        with pytest.raises(TranslationError, match="pde not valid"):
            other.read(dk.VERSION_VA, 8)
        again = engine._NativeSpace(phys, 0, 4, True, True)
        del first, other  # the table the first space created stays with the phys
        assert again.read(dk.VERSION_VA, len(dk.VERSION_STR)) == want
        phys = again = None
