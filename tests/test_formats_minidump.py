"""amd64 minidump parsing, kerneldumpheader containers and format detection.

The images are the synthetic core of ``vmcore-formats.md`` §12 written by
the forge writers; the expected answers are those of §12 except where
kvm-vol deliberately differs from libkvm (§10).
"""

import os
import shutil
import struct

import pytest

import dumpkit as dk
from kvm_vol.core.amd64 import (
    DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, KERNBASE, NBPDR, PAGE_SIZE, PG_PS, PG_V, VM_MIN_KERNEL_ADDRESS,
)
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import wrap_kdh, write_minidump
from kvm_vol.formats import detect, open_dump
from kvm_vol.formats.kdh import KDH_SIZE, TEXTDUMPMAGIC, KernelDumpHeader
from kvm_vol.formats.minidump import Layout, Minidump, MinidumpHeader
from kvm_vol.formats.source import BytesSource, FileSource

NOT_DUMPED = dk.NOT_DUMPED_PA
MSGBUF = (b"<6>Copyright (c) 1992-2024 The FreeBSD Project.\n" * 2048)[:0x18000]


@pytest.fixture(scope="module")
def machine():
    return dk.build_machine()


@pytest.fixture(scope="module")
def images(machine, tmp_path_factory):
    """{version: path} of minidumps of the §12 machine, plus "kdh": v3 behind a kerneldumpheader."""
    d = tmp_path_factory.mktemp("minidumps")
    paths = {}
    for version in (1, 2, 3):
        paths[version] = str(d / f"vmcore.v{version}")
        write_minidump(machine.mem, paths[version], version=version, kpml4phys=machine.kpml4phys, kva_end=1 << 64,
                       exclude_pfns=machine.excluded_pfns, msgbuf=MSGBUF)
    paths["kdh"] = str(d / "dumpdev.v3")
    wrap_kdh(paths[3], paths["kdh"], versionstring=dk.VERSION_STR.decode() + "\n", hostname="crashbox",
             panicstring="page fault", dumptime=1700000000)
    return paths


def copy_of(images, key, tmp_path):
    dst = tmp_path / f"copy-{key}"
    shutil.copyfile(images[key], dst)
    return str(dst)


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def open_error(path) -> DumpFormatError:
    with pytest.raises(DumpFormatError) as exc:
        open_dump(path)
    return exc.value


# ------------------------------------------------------------- header ------

def test_section_layout_worked_example():
    """vmcore-formats.md §3.1."""
    hdr = MinidumpHeader(version=3, msgbufsize=0x18000, bitmapsize=0x1000, pmapsize=0x800000, dumpavailsize=0x1000)
    assert hdr.layout() == Layout(msgbuf=0x1000, dump_avail=0x19000, bitmap=0x1A000, pmap=0x1B000, sparse=0x81B000)
    v2 = MinidumpHeader(version=2, msgbufsize=0x18001, bitmapsize=0x10, pmapsize=0x1000, dumpavailsize=0x1000)
    assert v2.layout() == Layout(0x1000, 0x1A000, 0x1A000, 0x1B000, 0x1C000)  # dumpavailsize ignored before v3


def test_every_header_field_v3(images):
    with open_dump(images[3]) as d:
        assert isinstance(d, Minidump) and d.kind == "minidump" and d.arch == "amd64" and d.kdh is None
        h = d.header
        assert (h.version, h.msgbufsize, h.bitmapsize, h.pmapsize) == (3, 0x18000, 0x1000, 0x800000)
        assert (h.kernbase, h.dmapbase, h.dmapend, h.dumpavailsize) == (
            VM_MIN_KERNEL_ADDRESS, DMAP_MIN_ADDRESS, DMAP_MAX_ADDRESS, 0x1000)
        assert h.size == 72
        assert d.layout == Layout(0x1000, 0x19000, 0x1A000, 0x1B000, 0x81B000)
        assert d.dump_avail == dk.RANGES
        assert d.pmap_entries == 0x800000 // 8
        assert d.msgbuf() == MSGBUF
        sections = d.sections()
        assert sections["bitmap"] == {"offset": 0x1A000, "size": 0x1000, "length": 0x1000}
        assert sections["page data"]["offset"] == 0x81B000
        # all of RAM (1 GiB page over PA 0) but the excluded page
        pages = (0x9F000 - 0x1000 + 0x2000000 - 0x100000) // PAGE_SIZE - 1
        assert d.bitmap_index.count == d.bitmap_index.present == pages
        assert d.problems() == []


@pytest.mark.parametrize("version,kernbase,size", [(1, KERNBASE, 64), (2, VM_MIN_KERNEL_ADDRESS, 64)])
def test_header_fields_v1_v2(images, version, kernbase, size):
    with open_dump(images[version]) as d:
        h = d.header
        assert (h.version, h.kernbase, h.dumpavailsize, h.size) == (version, kernbase, 0, size)
        assert d.dump_avail is None
        assert d.layout.dump_avail == d.layout.bitmap == 0x19000
        assert h.bitmapsize == 0x1000  # PFN-indexed bitmap for 32 MiB, rounded to a page
        assert h.pmapsize == (0x400000 if version == 1 else 0x800000)  # PTEs over 2 GiB / PDEs over 2 TiB


def test_phys_runs(images):
    expect = [
        (0x1000, 0x81B000, 0x9E000),
        (0x100000, 0x81B000 + 0x9E000, NOT_DUMPED - 0x100000),
        (NOT_DUMPED + PAGE_SIZE, 0x81B000 + 0x9E000 + NOT_DUMPED - 0x100000, 0x2000000 - NOT_DUMPED - PAGE_SIZE),
    ]
    with open_dump(images[3]) as d:
        assert list(d.phys_runs()) == expect
        assert d.pa_to_offset(0x100008) == 0x81B000 + 0x9E008
        assert d.pa_to_offset(dk.HOLE_PA) is None
        assert d.read_phys(0x9EFF8, 8) == dk.tagged(0x9EFF8, 8)
        with pytest.raises(TranslationError) as exc:  # runs off the end of the first range
            d.read_phys(0x9EFF8, 16)
        assert exc.value.address == 0x9F000 and "0x9f000 not in the minidump" in exc.value.reason


# ------------------------------------------------------- translation -------

@pytest.mark.parametrize("version", [1, 2, 3])
def test_kernel_image_reads(images, version):
    with open_dump(images[version]) as d:
        tr = d.translator()
        assert tr.read(dk.VERSION_VA, 40) == dk.VERSION_STR[:40]
        assert struct.unpack("<Q", tr.read(dk.KPML4_VAR_VA, 8))[0] == dk.KPML4
        assert tr.read(dk.STRADDLE_2M_VA, 20) == b"STRADDLE-2M-BOUNDARY"
        assert tr.read(dk.GIG_VA + dk.LOW_PA, 23) == dk.LOW_STR
        assert tr.read(DMAP_MIN_ADDRESS + dk.LOW_PA, 23) == dk.LOW_STR
        assert tr.read(KERNBASE + 0x500000, 64) == dk.tagged(0x500000, 64)


@pytest.mark.parametrize("version", [2, 3])
def test_scattered_pages(images, machine, version):
    with open_dump(images[version]) as d:
        tr = d.translator()
        assert tr.read(dk.CROSS_4K_VA, 16) == b"CROSS-4K-PAGE!!\0"
        off, pa, avail = tr.kvatop(dk.CROSS_4K_VA)
        assert (pa, avail) == (machine.scattered[0][1] + 0xFF8, 8)
        assert d.source.read(off, 8) == b"CROSS-4K"
        va = dk.SCATTER_VA + 0x800
        expect = b"".join(machine.mem.read(pa + (0x800 if i == 0 else 0), PAGE_SIZE - (0x800 if i == 0 else 0))
                          for i, (_, pa) in enumerate(machine.scattered[:4]))
        expect += machine.mem.read(machine.scattered[4][1], 0x800)
        assert tr.read(va, 16384) == expect


@pytest.mark.parametrize("version", [2, 3])
def test_translation_failures_keep_specific_reasons(images, version):
    with open_dump(images[version]) as d:
        tr = d.translator()
        cases = {
            dk.NOT_DUMPED_VA: f"physical address {NOT_DUMPED:#x} not in minidump",
            dk.INVALID_PTE_VA: "pte not valid",
            dk.INVALID_PDE_VA: "pde not valid",
            dk.UNMAPPED_GIB_VA: "pde not valid",  # zero page written for an invalid PDPE
            0x1000: "virtual address 0x1000 not minidumped",
            0xFFFF800000000000: "virtual address 0xffff800000000000 not minidumped",
            DMAP_MIN_ADDRESS + 0x4000000: f"direct map address {DMAP_MIN_ADDRESS + 0x4000000:#x} not in minidump",
            dk.GIG_VA + 0x3000000: "physical address 0x3000000 not in minidump",
        }
        for va, reason in cases.items():
            with pytest.raises(TranslationError) as exc:
                tr.read(va, 8)
            assert (exc.value.address, exc.value.reason) == (va, reason)
        assert tr.read(dk.READONLY_VA, 8) == dk.tagged(0x1101000, 8)


def test_read_straddling_into_missing_page_names_that_page(images):
    """libkvm fails the whole read with the second page's VA and a generic text (§12)."""
    with open_dump(images[3]) as d:
        tr = d.translator()
        with pytest.raises(TranslationError) as exc:
            tr.read(dk.NOT_DUMPED_VA - 8, 16)
        assert exc.value.address == dk.NOT_DUMPED_VA
        assert exc.value.reason == f"physical address {NOT_DUMPED:#x} not in minidump"
        assert tr.read(dk.NOT_DUMPED_VA - 8, 16, pad=True) == tr.read(dk.NOT_DUMPED_VA - 8, 8) + bytes(8)


def test_dump_avail_hole_is_invalid_not_another_page(images):
    """§12: libkvm returns PA 0x3f000's data for the direct-map address of PA 0xa0000."""
    with open_dump(images[3]) as d:
        tr = d.translator()
        assert tr.read(DMAP_MIN_ADDRESS + 0x3F000, 16) == dk.tagged(0x3F000, 16)
        with pytest.raises(TranslationError) as exc:
            tr.read(DMAP_MIN_ADDRESS + dk.HOLE_PA, 16)
        assert exc.value.reason == f"direct map address {DMAP_MIN_ADDRESS + dk.HOLE_PA:#x} not in minidump"


def test_pmap_entries(images, machine):
    with open_dump(images[3]) as d:
        gig = (dk.GIG_VA - VM_MIN_KERNEL_ADDRESS) >> 21
        assert d.pmap_entry(gig) == PG_V | PG_PS | 0x2  # the fake PD of the 1 GiB page: the PDPE itself...
        assert d.pmap_entry(gig + 5) == (5 * NBPDR) | PG_V | PG_PS | 0x2  # ...plus 2 MiB per entry
        assert d.pmap_entry(d.pmap_entries - 1) == (511 * NBPDR) | PG_V | PG_PS | 0x2
        assert d.pmap_entry(d.pmap_entries) is None and d.pmap_entry(-1) is None
        assert d.pmap_entry((dk.INVALID_PDE_VA - VM_MIN_KERNEL_ADDRESS) >> 21) == 0x1234000


# --------------------------------------------------- kerneldumpheader ------

def test_kerneldumpheader_prefix(images):
    with open_dump(images[3]) as plain, open_dump(images["kdh"]) as d:
        assert d.origin == KDH_SIZE and d.kdh.kind == "kernel" and d.kdh.parity_ok
        assert (d.kdh.hostname, d.kdh.panicstring, d.kdh.dumptime) == ("crashbox", "page fault", 1700000000)
        assert d.kdh.dumplength == d.kdh.dumpextent == os.path.getsize(images[3])
        assert [(pa, off - KDH_SIZE, n) for pa, off, n in d.phys_runs()] == list(plain.phys_runs())
        assert d.sections()["pmap"]["offset"] == 0x1B000 + KDH_SIZE
        tr = d.translator()
        off, pa, _ = tr.kvatop(dk.VERSION_VA)
        assert off == plain.translator().kvatop(dk.VERSION_VA)[0] + KDH_SIZE
        assert tr.read(dk.VERSION_VA, 40) == dk.VERSION_STR[:40]
        assert d.read_phys(0x100000, 32) == dk.tagged(0x100000, 32)
        assert d.info()["kerneldumpheader"]["versionstring"] == dk.VERSION_STR.decode() + "\n"


def test_copy_of_dump_device_found_from_trailer(images, tmp_path):
    """dd of a whole dump partition: the leader is found from the trailer in the last block."""
    path = tmp_path / "swap.img"
    with open(images["kdh"], "rb") as src, open(path, "wb") as f:
        f.write(b"\xa5" * 0x10000)  # SIZEOF_METADATA and whatever else precedes the dump
        f.write(src.read())
    with open_dump(str(path)) as d:
        assert d.origin == 0x10000 + KDH_SIZE
        assert d.translator().read(dk.VERSION_VA, 40) == dk.VERSION_STR[:40]


def test_unreadable_containers_are_named(images, tmp_path):
    inner = images[3]

    def wrapped(name, **kw):
        path = str(tmp_path / name)
        wrap_kdh(inner, path, versionstring="FreeBSD 14.1", **kw)
        return path

    assert "compressed (gzip)" in open_error(wrapped("gz", compression=1)).message
    assert "compressed (zstd)" in open_error(wrapped("zst", compression=2)).message
    err = open_error(wrapped("enc", dumpkey=b"K" * 300))
    assert "encrypted (dumpkeysize 512)" in err.message and "decryptcore" in err.message
    assert "textdump" in open_error(wrapped("text", magic=TEXTDUMPMAGIC)).message
    # Compressed files are decompressed into kvm-vol's cache (formats/compressed.py);
    # a broken stream is named as such.
    for name, head in (("vmcore.0.gz", b"\x1f\x8b\x08\x00"), ("vmcore.0.zst", b"\x28\xb5\x2f\xfd")):
        path = tmp_path / name
        path.write_bytes(head + bytes(4096))
        err = open_error(str(path))
        assert "stream is corrupt" in err.message and err.field == "compressed data" and err.path == str(path)
    tar = tmp_path / "textdump.tar.0"
    tar.write_bytes(b"ddb.txt".ljust(257, b"\0") + b"ustar\x0000" + bytes(4096))
    assert "tar archive" in open_error(str(tar)).message
    junk = tmp_path / "kdh-then-junk"
    junk.write_bytes(KernelDumpHeader(dumplength=4096, dumpextent=4096).pack() + b"\x42" * 4096)
    err = open_error(str(junk))
    assert "not followed by a minidump or an ELF core" in err.message and err.offset == KDH_SIZE
    arch = tmp_path / "powerpc64"
    arch.write_bytes(KernelDumpHeader(architecture="powerpc64", dumplength=4096).pack() + bytes(4096))
    assert "'powerpc64'" in open_error(str(arch)).message


def test_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    err = open_error(str(tmp_path / "empty"))
    assert err.path.endswith("empty") and err.message == "empty file"


# ------------------------------------------------------------ damage -------

def test_truncated_page_data_is_reported_but_readable(images, tmp_path):
    path = copy_of(images, 3, tmp_path)
    keep_pages = 0x9E + 0x100  # all of the first range and 1 MiB of the second
    os.truncate(path, 0x81B000 + keep_pages * PAGE_SIZE + 100)
    with open_dump(path) as d:
        idx = d.bitmap_index
        assert idx.present == keep_pages and idx.missing == idx.count - keep_pages
        tr = d.translator()
        assert tr.read(DMAP_MIN_ADDRESS + 0x1FFFF8, 8) == dk.tagged(0x1FFFF8, 8)
        with pytest.raises(TranslationError, match="physical address 0x201000 not in minidump"):
            tr.read(dk.VERSION_VA, 8)
        assert d.phys_runs()[-1] == (0x100000, 0x81B000 + 0x9E000, 0x100000)
        truncated, orphans = d.problems()  # the page-table pages at 0x600000 were cut off too
        assert truncated.field == "page data" and truncated.offset == 0x81B000 + keep_pages * PAGE_SIZE
        assert "truncated" in truncated.message and truncated.path == path
        assert orphans.field.startswith("pmap[") and "not in the dump" in orphans.message
        with pytest.raises(DumpFormatError, match="page data"):
            d.verify()


def test_pde_pointing_outside_the_dump(tmp_path):
    """A PDE whose page-table page was not dumped: verify() names pmap[i]; reads say why."""
    mem = PhysMem([(0, 0x400000)])
    dk.fill_tagged(mem, 0x100000, 0x400000)
    pt = dk.PageTables(mem, 0x10000, 0x100000)
    pt.map(VM_MIN_KERNEL_ADDRESS + 3 * NBPDR, 0x200000)
    ptpage = mem.read_u64(pt.entry_pa(VM_MIN_KERNEL_ADDRESS + 3 * NBPDR, 2)) & ~0xFFF
    path = str(tmp_path / "orphan")
    write_minidump(mem, path, version=3, kpml4phys=0x10000, kva_end=VM_MIN_KERNEL_ADDRESS + (1 << 30),
                   exclude_pfns=[ptpage >> 12])
    with open_dump(path) as d:
        (problem,) = d.problems()
        assert problem.field == "pmap[3]" and problem.offset == d.layout.pmap + 3 * 8
        assert f"page-table page {ptpage:#x}" in problem.message and path in str(problem)
        with pytest.raises(DumpFormatError) as exc:
            d.verify()
        assert exc.value.field == "pmap[3]"
        with pytest.raises(TranslationError, match=f"page-table page {ptpage:#x} not in minidump"):
            d.translator().read(VM_MIN_KERNEL_ADDRESS + 3 * NBPDR, 8)


def header_bytes(**fields) -> bytes:
    return MinidumpHeader(**fields).pack()


@pytest.mark.parametrize("data,field,offset,text", [
    (b"minidump FreeBSD/amd64\0\0\3\0", "header", 0, "truncated header"),
    (b"minidump FreeBSD/amd64\0\0" + struct.pack("<I", 3) + bytes(30), "header", 0, "a version 3 header needs 68"),
    (b"minidump FreeBSD/powerpc64\0\0\0" + bytes(4096), "magic", 0, "not a minidump for this platform"),
    (header_bytes(version=4), "version", 24, "wrong minidump version. expected 3 got 4"),
    (header_bytes(version=0), "version", 24, "wrong minidump version. expected 3 got 0"),
    (header_bytes(msgbufsize=0x18000), "msgbufsize", 0x1000, "msgbuf section of 0x18000 bytes extends past the end"),
    (header_bytes(bitmapsize=0x2000) + bytes(0x1000), "bitmapsize", 0x1000, "bitmap section of 0x2000 bytes"),
    (header_bytes(dmapbase=2, dmapend=1), "dmapend", 56, "below dmapbase"),
])
def test_bad_headers(tmp_path, data, field, offset, text):
    path = tmp_path / "bad.vmcore"
    path.write_bytes(data)
    err = open_error(str(path))
    assert (err.field, err.offset) == (field, offset)
    assert text in err.message
    assert str(err).startswith(f"{path}: {field} at offset {offset:#x}: ")


def test_pmap_larger_than_file(images, tmp_path):
    path = copy_of(images, 2, tmp_path)
    os.truncate(path, 0x19000 + 0x1000 + 0x400000)
    err = open_error(path)
    assert (err.field, err.offset) == ("pmapsize", 0x1A000)
    assert "pmap section of 0x800000 bytes extends past the end of the file" in err.message


def test_pmap_larger_than_file_behind_kdh(images, tmp_path):
    """Offsets in errors are offsets in the file the user has, header included."""
    path = copy_of(images, "kdh", tmp_path)
    patch(path, KDH_SIZE + 36, struct.pack("<I", 0x10000000))
    err = open_error(path)
    assert (err.field, err.offset) == ("pmapsize", KDH_SIZE + 0x1B000)


@pytest.mark.parametrize("pairs,index,text", [
    ([(0x100000, 0x200000), (0x1000, 0x9F000)], 1, "unsorted or overlapping"),
    ([(0x1000, 0x9F000), (0x9E000, 0x200000)], 1, "unsorted or overlapping"),
    ([(0x9F000, 0x1000)], 0, "inverted"),
    ([], 0, "dump_avail is empty"),
])
def test_bad_dump_avail(images, tmp_path, pairs, index, text):
    path = copy_of(images, 3, tmp_path)
    patch(path, 0x19000, b"".join(struct.pack("<QQ", *p) for p in pairs) + bytes(32))
    err = open_error(path)
    assert text in err.message
    assert err.offset == 0x19000 + 16 * index
    assert err.field == (f"dump_avail[{index}]" if pairs else "dump_avail")


def test_dump_avail_without_terminator_stops_at_dumpavailsize():
    pairs = [(0x1000 + i * 0x10000, 0x2000 + i * 0x10000) for i in range(256)]  # fills the page, no {0, 0}
    hdr = MinidumpHeader(version=3, bitmapsize=32, dumpavailsize=0x1000)
    data = hdr.pack() + b"".join(struct.pack("<QQ", *p) for p in pairs) + b"\xff" * 32
    d = detect(BytesSource(data, "mem.vmcore"))
    assert d.dump_avail == pairs and d.bitmap_index.avail.pages == 256
    assert d.bitmap_index.count == 256 and d.bitmap_index.present == 0


# ------------------------------------------------------------ read-only -----

def test_files_are_opened_read_only(images):
    before = {k: dk.sha256(p) for k, p in images.items()}
    for path in images.values():
        with open_dump(path) as d:
            d.info()
            d.phys_runs()
            d.translator().read(dk.VERSION_VA, 64)
            assert isinstance(d.source, FileSource)
    assert {k: dk.sha256(p) for k, p in images.items()} == before
    src = FileSource.open(images[3])
    try:
        with pytest.raises(TypeError):
            src._map[0:1] = b"X"  # the mapping itself refuses writes
    finally:
        src.close()
    assert src.closed
