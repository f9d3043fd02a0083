"""Forge writers: raw, ELF, minidump (pmap section, dumped-page selection) and the kdh wrapper."""

import os
import struct
import time

import pytest

import dumpkit as dk
from kvm_vol.core.amd64 import (
    DMAP_MIN_ADDRESS, KERNBASE, NBPDP, NBPDR, PAGE_SIZE, PG_A, PG_M, PG_NX, PG_PS, PG_RW, PG_V,
    VM_MIN_KERNEL_ADDRESS,
)
from kvm_vol.errors import DumpFormatError
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import build_pmap_section, wrap_kdh, write_elf, write_minidump, write_raw
from kvm_vol.formats import open_dump
from kvm_vol.formats.elfcore import EHDR, ELFOSABI_FREEBSD
from kvm_vol.formats.kdh import KDH_SIZE, KernelDumpHeader, compute_parity

GIB_PAGES = NBPDP // PAGE_SIZE


def small_machine():
    """RAM [0x1000, 0x9f000) + [0x100000, 0x1000000), tables at 0x10000, a few mappings."""
    mem = PhysMem([(0x1000, 0x9F000), (0x100000, 0x1000000)])
    dk.fill_tagged(mem, 0x100000, 0x1000000)
    pt = dk.PageTables(mem, 0x10000, 0x90000)
    pt.map(VM_MIN_KERNEL_ADDRESS, 0x300000)  # 4 KiB
    pt.map(VM_MIN_KERNEL_ADDRESS + PAGE_SIZE, 0x2000000)  # outside RAM: never dumped
    pt.map(VM_MIN_KERNEL_ADDRESS + NBPDR, 0x400000, NBPDR)  # 2 MiB
    pt.map(KERNBASE + 0x200000, 0x200000, NBPDR, PG_V | PG_RW | PG_NX)
    return mem, pt


def dumped_pages(d):
    return {pa + i for pa, _off, n in d.phys_runs() for i in range(0, n, PAGE_SIZE)}


def test_write_raw(tmp_path):
    mem, _ = small_machine()
    path = str(tmp_path / "raw")
    write_raw(mem, path)
    assert os.path.getsize(path) == 0x1000000
    with open(path, "rb") as f:
        data = f.read()
    assert data[0x345678:0x345688] == dk.tagged(0x345678, 16)
    slot = 0x10000 + 508 * 8  # PML4 entry for VM_MIN_KERNEL_ADDRESS
    assert data[slot:slot + 8] == mem.read(slot, 8) != bytes(8)
    assert data[0xA0000:0xA1000] == bytes(PAGE_SIZE)  # hole between the ranges: zeros


def test_write_elf_layout(tmp_path):
    mem, _ = small_machine()
    path = str(tmp_path / "core")
    phdrs = write_elf(mem, path, osabi=ELFOSABI_FREEBSD)
    with open(path, "rb") as f:
        head = f.read(EHDR.size)
    ident, e_type, e_machine, _v, _entry, phoff, _sh, _fl, ehsize, phentsize, phnum, shentsize, _shnum, _ = (
        EHDR.unpack(head))
    assert ident[:8] == b"\x7fELF\x02\x01\x01\x09" and (e_type, e_machine) == (4, 62)
    assert (phoff, ehsize, phentsize, phnum, shentsize) == (64, 64, 56, 2, 64)
    assert [(p.paddr, p.vaddr, p.offset, p.filesz, p.memsz) for p in phdrs] == [
        (0x1000, 0x1000, 0x1000, 0x9E000, 0x9E000), (0x100000, 0x100000, 0x9F000, 0xF00000, 0xF00000)]
    assert os.path.getsize(path) == 0x9F000 + 0xF00000
    with open_dump(path) as d:
        assert d.osabi == ELFOSABI_FREEBSD
        assert d.read_phys(0x345678, 16) == dk.tagged(0x345678, 16)


def test_write_elf_unaligned_ranges(tmp_path):
    mem = PhysMem([(0x1800, 0x2800), (0x3000, 0x3400)])
    mem.pages[1] = bytearray(b"\x11" * PAGE_SIZE)  # straddles the start of the first range
    mem.pages[2] = bytearray(b"\x22" * PAGE_SIZE)  # straddles its end
    mem.pages[3] = bytearray(b"\x33" * PAGE_SIZE)  # only 0x400 bytes of it are RAM
    path = str(tmp_path / "odd.core")
    write_elf(mem, path)
    with open_dump(path) as d:
        assert list(d.phys_runs()) == [(0x1800, 0x1000, 0x1000), (0x3000, 0x2000, 0x400)]
        assert d.read_phys(0x1800, 0x1000) == b"\x11" * 0x800 + b"\x22" * 0x800
        assert d.read_phys(0x3000, 0x400) == b"\x33" * 0x400
    assert os.path.getsize(path) == 0x2400


def test_pmap_section_v2_v3(tmp_path):
    mem, pt = small_machine()
    pt.map(VM_MIN_KERNEL_ADDRESS + 2 * NBPDP, 0x40000000, NBPDP, PG_V | PG_RW | PG_NX)  # a 1 GiB page
    pt.set_entry(VM_MIN_KERNEL_ADDRESS + 3 * NBPDP, 3, 0x500000 | PG_V)  # PD page in RAM: copied as is
    pt.set_entry(VM_MIN_KERNEL_ADDRESS + 4 * NBPDP, 3, 0x3000000 | PG_V)  # PD page outside RAM
    section = build_pmap_section(mem, 0x10000, VM_MIN_KERNEL_ADDRESS, VM_MIN_KERNEL_ADDRESS + 5 * NBPDP + 1, 3)
    assert len(section) == 6 * PAGE_SIZE  # one page per GiB begun
    pages = [section[i:i + PAGE_SIZE] for i in range(0, len(section), PAGE_SIZE)]
    pd_pa = mem.read_u64(pt.entry_pa(VM_MIN_KERNEL_ADDRESS, 3)) & ~0xFFF
    assert pages[0] == mem.read(pd_pa, PAGE_SIZE)  # the real PD page
    assert pages[1] == bytes(PAGE_SIZE)  # invalid PDPE
    fake = struct.unpack("<512Q", pages[2])
    assert fake == tuple((0x40000000 + j * NBPDR) | PG_V | PG_RW | PG_PS | PG_NX for j in range(512))
    assert pages[3] == mem.read(0x500000, PAGE_SIZE)
    assert pages[4] == pages[5] == bytes(PAGE_SIZE)  # PD outside RAM is written as zeros, like the kernel


def test_pmap_section_v1(tmp_path):
    mem, pt = small_machine()
    pt.map(KERNBASE + 0x400000, 0x600000)
    section = build_pmap_section(mem, 0x10000, KERNBASE, KERNBASE + 0x600000, 1)
    ptes = struct.unpack(f"<{len(section) // 8}Q", section)
    assert len(ptes) == 3 * 512  # one page of PTEs per 2 MiB
    assert ptes[:512] == (0,) * 512
    assert ptes[512:1024] == tuple((0x200000 + k * PAGE_SIZE) | PG_V | PG_RW | PG_A | PG_M for k in range(512))
    assert ptes[1024] == 0x600000 | PG_V | PG_RW and ptes[1025] == 0


@pytest.mark.parametrize("version", [1, 2, 3])
def test_minidump_dumps_what_the_kernel_would(tmp_path, version):
    mem, pt = small_machine()
    path = str(tmp_path / f"md{version}")
    uma = [0x800 + i for i in range(4)]  # direct-map-only pages (dump_add_page)
    write_minidump(mem, path, version=version, kpml4phys=0x10000, kva_end=KERNBASE + 0x400000,
                   extra_pfns=uma + [0x9F, 0x5000], exclude_pfns=[0x401], msgbuf=b"boot\n")
    kernel = set(range(0x200000, 0x400000, PAGE_SIZE))
    if version == 1:
        expect = kernel  # v1 covers KERNBASE up only and keeps its PTEs in the pmap section
    else:
        pt_page = mem.read_u64(pt.entry_pa(VM_MIN_KERNEL_ADDRESS, 2)) & ~0xFFF
        expect = kernel | {0x300000, pt_page} | set(range(0x400000, 0x600000, PAGE_SIZE))
    expect |= {pfn * PAGE_SIZE for pfn in uma}
    expect -= {0x401000}
    with open_dump(path) as d:
        assert dumped_pages(d) == expect  # 0x9f000 (hole) and 0x5000000 (past RAM) dropped
        h = d.header
        assert h.kernbase == (KERNBASE if version == 1 else VM_MIN_KERNEL_ADDRESS)
        assert h.bitmapsize % PAGE_SIZE == 0 and h.msgbufsize == 5 and d.msgbuf() == b"boot\n"
        if version == 3:
            assert d.dump_avail == [(0x1000, 0x9F000), (0x100000, 0x1000000)]
            assert h.dumpavailsize == PAGE_SIZE
            assert d.bitmap_index.avail.bit_id(0x100000) == 0x9E  # compressed numbering
        else:
            assert d.dump_avail is None and d.bitmap_index.avail.bit_id(0x100000) == 0x100
        for pa in sorted(expect):
            assert d.read_phys(pa, PAGE_SIZE) == mem.read(pa, PAGE_SIZE)
        tr = d.translator()
        assert tr.read(KERNBASE + 0x200ff8, 16) == dk.tagged(0x200FF8, 16)
        if version > 1:
            assert tr.read(VM_MIN_KERNEL_ADDRESS + 0x10, 8) == dk.tagged(0x300010, 8)
            assert tr.read(DMAP_MIN_ADDRESS + 0x800000, 8) == dk.tagged(0x800000, 8)


def test_minidump_is_sparse(tmp_path):
    mem, _ = small_machine()
    path = str(tmp_path / "sparse")
    hdr = write_minidump(mem, path, version=3, kpml4phys=0x10000, kva_end=1 << 64)
    assert hdr.pmapsize == 2048 * PAGE_SIZE  # all of KVA: 8 MiB of mostly zero PD pages
    st = os.stat(path)
    assert st.st_size > hdr.pmapsize and st.st_blocks * 512 < st.st_size - hdr.pmapsize + 64 * PAGE_SIZE


def test_write_minidump_speed_64mib(tmp_path):
    """A fully populated 64 MiB machine with a 1 GiB mapping over it: well under 2 s."""
    mem = PhysMem([(0x1000, 0x9F000), (0x100000, 0x4000000)])
    for start, end in mem.ranges:
        dk.fill_tagged(mem, start, end)
    pt = dk.PageTables(mem, 0x10000, 0x20000)
    pt.map(0xFFFFFFFFC0000000, 0, NBPDP)
    pt.map(DMAP_MIN_ADDRESS, 0, NBPDP)
    path = str(tmp_path / "big")
    start = time.perf_counter()
    write_minidump(mem, path, version=3, kpml4phys=0x10000, kva_end=1 << 64)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"write_minidump took {elapsed:.2f} s"
    with open_dump(path) as d:
        assert d.bitmap_index.count == (0x9E000 + 0x3F00000) // PAGE_SIZE
        assert d.read_phys(0x3FFFFF8, 8) == dk.tagged(0x3FFFFF8, 8)


def test_kerneldumpheader_roundtrip():
    hdr = KernelDumpHeader(dumplength=0x1234000, dumptime=1700000000, dumpkeysize=0, blocksize=4096,
                           hostname="h" * 70, versionstring="FreeBSD 14.1-RELEASE\n", panicstring="p" * 200,
                           compression=2, dumpextent=0x2000000)
    raw = hdr.pack()
    assert len(raw) == KDH_SIZE and compute_parity(raw) == 0
    assert raw[:20] == b"FreeBSD Kernel Dump\0" and raw[20:26] == b"amd64\0"
    assert struct.unpack_from(">IIQQII", raw, 32) == (4, 2, 0x1234000, 1700000000, 0, 4096)
    assert raw[495] == 2 and struct.unpack_from(">Q", raw, 496)[0] == 0x2000000
    back = KernelDumpHeader.parse(raw, "x")
    assert back.hostname == "h" * 63 and back.panicstring == "p" * 174  # NUL-terminated like strlcpy
    assert (back.versionstring, back.compression, back.dumpextent, back.blocksize) == (
        "FreeBSD 14.1-RELEASE\n", 2, 0x2000000, 4096)
    assert back.parity_ok and back.kind == "kernel" and back.dump_offset == 4096
    broken = bytearray(raw)
    broken[100] ^= 1
    assert not KernelDumpHeader.parse(bytes(broken), "x").parity_ok


@pytest.mark.parametrize("raw,field,text", [
    (KernelDumpHeader().pack()[:100], "kerneldumpheader", "truncated"),
    (b"X" * KDH_SIZE, "kerneldumpheader.magic", "not a kerneldumpheader"),
    (KernelDumpHeader(version=1).pack(), "kerneldumpheader.version", "version 1 is not supported"),
    (KernelDumpHeader(blocksize=256).pack(), "kerneldumpheader.blocksize", "smaller than"),
])
def test_kerneldumpheader_errors(raw, field, text):
    with pytest.raises(DumpFormatError) as exc:
        KernelDumpHeader.parse(raw, "dev.img", 0x200)
    assert exc.value.field == field and text in exc.value.message and exc.value.path == "dev.img"


@pytest.mark.parametrize("blocksize", [512, 4096])
def test_wrap_kdh_device_layout(tmp_path, blocksize):
    inner = tmp_path / "inner"
    inner.write_bytes(b"\x5a" * 10000)
    out = str(tmp_path / "dev")
    hdr = wrap_kdh(str(inner), out, versionstring="v", dumpkey=b"K" * 100, blocksize=blocksize)
    extent = -(-10000 // blocksize) * blocksize
    assert (hdr.dumplength, hdr.dumpextent, hdr.dumpkeysize) == (10000, extent, blocksize)
    with open(out, "rb") as f:
        data = f.read()
    assert len(data) == blocksize + blocksize + extent + blocksize
    leader, trailer = data[:blocksize], data[-blocksize:]
    assert leader == trailer and leader[:KDH_SIZE] == hdr.pack() and leader[KDH_SIZE:] == bytes(blocksize - KDH_SIZE)
    assert data[blocksize:blocksize + 100] == b"K" * 100
    assert data[2 * blocksize:2 * blocksize + 10000] == b"\x5a" * 10000
