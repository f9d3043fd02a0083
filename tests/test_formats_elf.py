"""amd64 ELF full dumps (and raw images) of the §12 machine, read through a page-table walk."""

import os
import shutil
import struct

import pytest

import dumpkit as dk
from kvm_vol.core.amd64 import DMAP_MIN_ADDRESS, PAGE_SIZE, PageTableTranslator
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.forge.writers import wrap_kdh, write_elf, write_minidump, write_raw
from kvm_vol.formats import detect, open_dump
from kvm_vol.formats.elfcore import (
    EHDR, ELFOSABI_FREEBSD, ELFOSABI_STANDALONE, ELFOSABI_SYSV, PF_R, PHDR, PT_LOAD, PT_NOTE, ElfCore, Phdr,
    looks_like_freebsd_core, pack_ehdr, pack_phdr,
)
from kvm_vol.formats.kdh import KDH_SIZE
from kvm_vol.formats.raw import RawDump
from kvm_vol.formats.source import BytesSource, FileSource


@pytest.fixture(scope="module")
def machine():
    return dk.build_machine()


@pytest.fixture(scope="module")
def images(machine, tmp_path_factory):
    d = tmp_path_factory.mktemp("elf")
    paths = {"elf": str(d / "vmcore.elf"), "raw": str(d / "mem.raw"), "minidump": str(d / "vmcore.md"),
             "kdh": str(d / "dumpdev.elf")}
    write_elf(machine.mem, paths["elf"])
    write_raw(machine.mem, paths["raw"])
    write_minidump(machine.mem, paths["minidump"], version=3, kpml4phys=machine.kpml4phys, kva_end=1 << 64,
                   exclude_pfns=machine.excluded_pfns)
    wrap_kdh(paths["elf"], paths["kdh"], versionstring="FreeBSD 14.1")
    return paths


def elf_bytes(phdrs, osabi=ELFOSABI_STANDALONE, data_size=0x3000):
    head = pack_ehdr(len(phdrs), osabi) + b"".join(pack_phdr(p) for p in phdrs)
    return head + bytes(data_size - len(head))


def load(paddr, offset, size):
    return Phdr(PT_LOAD, PF_R, offset, paddr, paddr, size, size, PAGE_SIZE)


def test_elf_core_layout(images):
    with open_dump(images["elf"]) as d:
        assert isinstance(d, ElfCore) and d.kind == "elf" and d.osabi == ELFOSABI_STANDALONE
        assert [(p.paddr, p.offset, p.filesz, p.flags, p.align) for p in d.segments] == [
            (0x1000, 0x1000, 0x9E000, PF_R, PAGE_SIZE), (0x100000, 0x9F000, 0x1F00000, PF_R, PAGE_SIZE)]
        assert list(d.phys_runs()) == [(0x1000, 0x1000, 0x9E000), (0x100000, 0x9F000, 0x1F00000)]
        assert d.read_phys(0x9EFF0, 16) == dk.tagged(0x9EFF0, 16)
        assert d.read_phys(0x1100000, 8) == dk.tagged(0x1100000, 8)  # a full dump has every page
        with pytest.raises(TranslationError) as exc:
            d.read_phys(0x9EFF8, 16)
        assert exc.value.address == 0x9F000 and exc.value.reason == "physical page 0x9f000 not in the ELF core"
        info = d.info()
        assert info["osabi_name"] == "STANDALONE" and info["phnum"] == 2 and info["dumped_bytes"] == 0x1F9E000


def test_large_page_at_segment_end_does_not_run_into_next_segment(images):
    """§10 quirk 5: libkvm returns 0x9ef good bytes and then PA 0x100000's data."""
    with open_dump(images["elf"]) as d:
        tr = PageTableTranslator(d.read_phys, dk.KPML4)
        for base in (DMAP_MIN_ADDRESS, dk.GIG_VA):  # 1 GiB leaves, both
            va = base + 0x9E611
            with pytest.raises(TranslationError) as exc:
                tr.read(va, 4096)
            assert exc.value.address == base + 0x9F000
            assert exc.value.reason == "physical page 0x9f000 not in the ELF core"
            assert tr.read(va, 4096, pad=True) == dk.tagged(0x9E611, 0x9EF) + bytes(4096 - 0x9EF)
            assert tr.kvatop(va) == (0x9E611, PAGE_SIZE - 0x611)


def test_elf_and_minidump_agree(images):
    with open_dump(images["elf"]) as elf, open_dump(images["minidump"]) as md:
        walk = PageTableTranslator(elf.read_phys, dk.KPML4)
        mini = md.translator()
        for va, n in ((dk.VERSION_VA, 64), (dk.KPML4_VAR_VA, 8), (dk.STRADDLE_2M_VA, 20),
                      (dk.CROSS_4K_VA, 16), (dk.SCATTER_VA + 0x800, 16384), (dk.GIG_VA + dk.LOW_PA, 23),
                      (DMAP_MIN_ADDRESS + 0x1FFFF8, 16), (dk.READONLY_VA, 4096)):
            assert walk.read(va, n) == mini.read(va, n), hex(va)
        # Pages the minidump left out are still in the full dump; holes are in neither.
        assert walk.read(dk.NOT_DUMPED_VA, 8) == dk.tagged(dk.NOT_DUMPED_PA, 8)
        with pytest.raises(TranslationError, match="pte not valid"):
            walk.read(dk.INVALID_PTE_VA, 8)
        with pytest.raises(TranslationError, match="pde not valid"):
            walk.read(dk.INVALID_PDE_VA, 8)
        with pytest.raises(TranslationError, match="pdpe not valid"):
            walk.read(dk.UNMAPPED_GIB_VA, 8)
        with pytest.raises(TranslationError, match="physical page 0xa0000 not in the ELF core"):
            walk.read(DMAP_MIN_ADDRESS + dk.HOLE_PA, 8)


def test_elf_behind_kerneldumpheader(images):
    with open_dump(images["kdh"]) as d:
        assert d.kind == "elf" and d.origin == KDH_SIZE
        assert list(d.phys_runs()) == [(0x1000, 0x1000 + KDH_SIZE, 0x9E000), (0x100000, 0x9F000 + KDH_SIZE, 0x1F00000)]
        assert d.info()["segments"][1]["offset"] == 0x9F000 + KDH_SIZE
        assert PageTableTranslator(d.read_phys, dk.KPML4).read(dk.VERSION_VA, 40) == dk.VERSION_STR[:40]


def test_raw_image(images):
    with open_dump(images["raw"]) as d:
        assert isinstance(d, RawDump) and d.kind == "raw"
        assert list(d.phys_runs()) == [(0, 0, 0x2000000)]
        assert d.read_phys(dk.HOLE_PA, 8) == bytes(8)  # a raw image has no holes, only zeros
        with pytest.raises(TranslationError) as exc:
            d.read_phys(0x1FFFFF8, 16)
        assert exc.value.address == 0x2000000
        assert PageTableTranslator(d.read_phys, dk.KPML4).read(dk.VERSION_VA, 40) == dk.VERSION_STR[:40]


@pytest.mark.parametrize("osabi,note,claimed", [
    (ELFOSABI_STANDALONE, False, True),
    (ELFOSABI_FREEBSD, True, True),
    (ELFOSABI_SYSV, False, True),
    (ELFOSABI_SYSV, True, False),  # Linux kdump / QEMU: notes and SYSV
])
def test_looks_like_freebsd_core(osabi, note, claimed):
    phdrs = [load(0, 0x1000, 0x1000)] + ([Phdr(PT_NOTE, 0, 0x2000, 0, 0, 0x10, 0, 4)] if note else [])
    assert looks_like_freebsd_core(BytesSource(elf_bytes(phdrs, osabi))) is claimed


def test_looks_like_freebsd_core_rejects_others(images):
    src = FileSource.open(images["elf"])
    with src:
        assert looks_like_freebsd_core(src)
    core = bytearray(elf_bytes([load(0, 0x1000, 0x1000)], ELFOSABI_SYSV))
    for offset, value in ((16, 2), (18, 3)):  # ET_EXEC, EM_386
        bad = bytearray(core)
        struct.pack_into("<H", bad, offset, value)
        assert not looks_like_freebsd_core(BytesSource(bytes(bad)))
    assert not looks_like_freebsd_core(BytesSource(bytes(core[:40])))
    assert not looks_like_freebsd_core(BytesSource(b"minidump FreeBSD/amd64" + bytes(100)))
    struct.pack_into("<Q", core, 32, 0x100000)  # program headers past the end, no OSABI hint
    assert not looks_like_freebsd_core(BytesSource(bytes(core)))


def test_elf_core_e_phnum_pn_xnum():
    """More than 65534 program headers: the count lives in section header 0's sh_info."""
    raw = bytearray(elf_bytes([load(0, 0x2000, 0x1000)], data_size=0x3000))
    struct.pack_into("<H", raw, 60, 0xFFFF)  # e_phnum = PN_XNUM
    struct.pack_into("<Q", raw, 40, len(raw))  # e_shoff: a section header appended at the end
    raw += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 1, 0, 0)
    d = detect(BytesSource(bytes(raw), "xnum.core"))
    assert list(d.phys_runs()) == [(0, 0x2000, 0x1000)]


def bad_core(mutate):
    raw = bytearray(elf_bytes([load(0, 0x1000, 0x1000), load(0x100000, 0x2000, 0x1000)]))
    mutate(raw)
    return BytesSource(bytes(raw), "bad.core")


def set_phdr(raw, index, **fields):
    off = EHDR.size + index * PHDR.size
    struct.pack_into("<IIQQQQQQ", raw, off, *Phdr(*struct.unpack_from("<IIQQQQQQ", raw, off))._replace(**fields))


@pytest.mark.parametrize("mutate,field,offset,text", [
    (lambda r: r.__setitem__(4, 1), "e_ident[EI_CLASS]", 4, "ELFCLASS64"),
    (lambda r: r.__setitem__(5, 2), "e_ident[EI_DATA]", 5, "little-endian"),
    (lambda r: struct.pack_into("<H", r, 16, 2), "e_type", 16, "not an ELF core (e_type ET_EXEC)"),
    (lambda r: struct.pack_into("<H", r, 18, 183), "e_machine", 18, "e_machine 183"),
    # EM_386 fixes the class: an ELF64 header claiming i386 is damaged at EI_CLASS or e_machine
    (lambda r: struct.pack_into("<H", r, 18, 3), "e_ident[EI_CLASS]", 4, "i386 full dumps are ELFCLASS32 (1)"),
    (lambda r: struct.pack_into("<H", r, 54, 32), "e_phentsize", 54, "program header size 32"),
    (lambda r: struct.pack_into("<Q", r, 32, 0x2FF0), "e_phoff", 32, "extend past the end"),
    (lambda r: (set_phdr(r, 0, type=PT_NOTE), set_phdr(r, 1, type=6)), "program headers", 64, "no PT_LOAD"),
    (lambda r: set_phdr(r, 1, offset=0x2800), "phdr[1]", 64 + 56, "past the end of the file"),
    (lambda r: set_phdr(r, 1, filesz=0x2000), "phdr[1]", 64 + 56, "exceeds p_memsz"),
    (lambda r: set_phdr(r, 1, paddr=0x800), "phdr[1]", 64 + 56, "overlaps"),
])
def test_bad_elf_cores(mutate, field, offset, text):
    with pytest.raises(DumpFormatError) as exc:
        ElfCore(bad_core(mutate))
    err = exc.value
    assert (err.field, err.offset) == (field, offset) and text in err.message
    assert str(err).startswith(f"bad.core: {field} at offset {offset:#x}: ")


def test_truncated_full_dump_names_file_and_segment(images, tmp_path):
    path = str(tmp_path / "short.elf")
    shutil.copyfile(images["elf"], path)
    os.truncate(path, 0x1000000)
    with pytest.raises(DumpFormatError) as exc:
        open_dump(path)
    assert exc.value.path == path and exc.value.field == "phdr[1]" and "past the end of the file" in exc.value.message


def test_truncated_elf_header(tmp_path):
    path = tmp_path / "tiny.core"
    path.write_bytes(b"\x7fELF\x02\x01\x01")
    with pytest.raises(DumpFormatError, match="truncated or missing ELF header"):
        open_dump(str(path))


def test_elf_files_opened_read_only(images):
    before = dk.sha256(images["elf"])
    with open_dump(images["elf"]) as d:
        PageTableTranslator(d.read_phys, dk.KPML4).read(dk.VERSION_VA, 4096)
    assert dk.sha256(images["elf"]) == before
