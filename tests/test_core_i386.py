"""FreeBSD/i386 translation: every rule, in both implementations, on every i386 format.

A hand-made i386 machine (non-PAE and PAE) is built with the forge's
``pmap_cold``-style page tables (:mod:`kvm_vol.forge.pmap_i386`) in tagged
memory (each qword holds ``TAG | its own PA``), then written as minidump v1
and v2, an ELF32 full dump and a raw image, and each behind a
kerneldumpheader.  Every check runs the C core and the pure-Python twin on the
same dump and demands the same bytes or the same error (address and reason),
and that the bytes are the tagged memory the page tables say.
"""

import random
import struct

import pytest

import dumpkit as dk
from nativekit import SpacePair, ensure_native
from kvm_vol.core import i386 as I
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.pmap_i386 import I386PageTables
from kvm_vol.forge.writers import wrap_kdh, write_raw
from kvm_vol.forge.writers_i386 import write_elf_i386, write_minidump_i386
from kvm_vol.formats import open_dump
from kvm_vol.formats.elfcore import ElfCore
from kvm_vol.formats.info import format_text
from kvm_vol.formats.minidump_i386 import MinidumpI386, MinidumpI386Header

PAGE = I.PAGE_SIZE
RAM = [(0x1000, 0x9F000), (0x100000, 0x4000000)]
HIGH_RAM = (0x100000000, 0x100200000)  #: PAE only: RAM above 4 GiB
KERNEND = 0xC00000  #: the image: [KERNBASE, 12 MiB), a multiple of both NBPDRs
POOL = 0x3000000  #: page-table pages come from here
KMEM = 0x1000000  #: kernel_map pages (4 KiB PTEs)
KVA_END = 0x1800000  #: kernel_vm_end: what the minidump's pmap section covers
BEYOND = 0x2000000  #: mapped, but above kernel_vm_end
USER_VA = 0x08048000


class Machine:
    """The hand-made i386 machine of one pmap mode, with what each VA should read."""

    def __init__(self, mode):
        self.mode = mode
        ranges = RAM + ([HIGH_RAM] if mode.pae else [])
        self.mem = PhysMem(ranges)
        for start, end in ranges:
            if start < 0x100000000:
                dk.fill_tagged(self.mem, start, min(end, 0x2000000))
            else:
                dk.fill_tagged(self.mem, start, end)
        self._next = POOL

        def alloc():
            pa, self._next = self._next, self._next + PAGE
            return pa

        self.kernel = I386PageTables.kernel(self.mem, mode, alloc, KERNEND)
        rng = random.Random(8)
        frames = list(range(0x1400000, 0x2000000, PAGE))
        rng.shuffle(frames)
        self.kmem = {}
        for i in range(48):  # contiguous KVA, shuffled PAs, crossing a PDE boundary in both modes
            va = KMEM + 0x3F0000 + i * PAGE
            self.kernel.map_page(va, frames[i])
            self.kmem[va] = frames[i]
        self.hole_va = KMEM + 0x100000  # PTE into the dump_avail hole
        self.kernel.map_page(self.hole_va, 0xA0000)
        self.noram_va = self.hole_va + PAGE  # PTE past the end of RAM
        self.kernel.map_page(self.noram_va, 0x8000000)
        self.kernel.map_page(BEYOND, frames[100])
        self.kmem[BEYOND] = frames[100]
        if mode.pae:
            self.high_va = self.noram_va + PAGE
            self.kernel.map_page(self.high_va, HIGH_RAM[0] + 0x3000)
            self.kmem[self.high_va] = HIGH_RAM[0] + 0x3000
        self.user = self.kernel.user()
        for i in range(4):
            self.user.map_page(USER_VA + i * PAGE, frames[200 + i], user=True)
        self.user_pages = {USER_VA + i * PAGE: frames[200 + i] for i in range(4)}

    def write(self, directory):
        paths = {}
        for version in (1, 2):
            path = str(directory / f"md{version}.vmcore")
            write_minidump_i386(self.mem, path, version=version, ptd=self.kernel.ptd, mode=self.mode,
                                kva_end=KVA_END, msgbuf=b"i386 msgbuf\n")
            paths[f"minidump-v{version}"] = path
        paths["full"] = str(directory / "full.elf")
        # ELF32 program headers are 32-bit: the full dump holds the RAM below 4 GiB only
        low = PhysMem(RAM)
        low.pages = {pfn: page for pfn, page in self.mem.pages.items() if pfn < 1 << 20}
        write_elf_i386(low, paths["full"])
        paths["raw"] = str(directory / "raw.img")  # PAE: 4 GiB + 2 MiB, sparse
        write_raw(self.mem, paths["raw"])
        for inner in ("minidump-v2", "full"):
            paths[f"kdh-{inner}"] = str(directory / f"kdh-{inner}")
            wrap_kdh(paths[inner], paths[f"kdh-{inner}"], versionstring="FreeBSD 14.3-RELEASE i386",
                     architecture="i386")
        return paths


@pytest.fixture(scope="module", params=[I.NOPAE, I.PAE], ids=["nopae", "pae"])
def machine(request, tmp_path_factory):
    m = Machine(request.param)
    m.paths = m.write(tmp_path_factory.mktemp(f"i386-{request.param.name}"))
    return m


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    return ensure_native(str(tmp_path_factory.mktemp("native")))


# ------------------------------------------------------------ the walk itself --


def test_constants_are_freebsds():
    """The 4/4G split layout of sys/i386/include (FreeBSD 12 and later)."""
    assert I.KERNBASE == I.KERNLOAD == 0x800000
    assert (I.NOPAE.nbpdr, I.PAE.nbpdr) == (4 << 20, 2 << 20)
    assert (I.NOPAE.ptdptdi, I.NOPAE.trptdi) == (1022, 1023)
    assert (I.PAE.ptdptdi, I.PAE.trptdi) == (2042, 2046)
    assert I.VM_MAXUSER_ADDRESS == I.NOPAE.trptdi << I.NOPAE.pdrshift == I.PAE.trptdi << I.PAE.pdrshift
    assert I.PAE.pg_ps_frame & (1 << 12) == 0  # PG_PDE_PAT is not a frame bit
    assert I.pmap_mode(1) is I.PAE and I.pmap_mode(0) is I.NOPAE


def test_walk_every_rule(machine):
    m, mode = machine, machine.mode
    read = m.mem.read
    # kernel image: a superpage, VA == PA
    pa, size = I.walk(read, m.kernel.root, I.KERNBASE + 0x123456, mode)
    assert (pa, size) == (I.KERNBASE + 0x123456, mode.nbpdr)
    for va, frame in m.kmem.items():
        assert I.walk(read, m.kernel.root, va + 0x7F8, mode) == (frame + 0x7F8, PAGE)
    # user pages only in the process pmap (4/4G split: the kernel pmap has no user mappings)
    assert I.walk(read, m.user.root, USER_VA + 4, mode)[0] == m.user_pages[USER_VA] + 4
    with pytest.raises(TranslationError, match="pde not valid"):
        I.walk(read, m.kernel.root, USER_VA, mode)
    with pytest.raises(TranslationError, match="pde not valid"):  # and no kernel mappings in the user pmap
        I.walk(read, m.user.root, I.KERNBASE, mode)
    with pytest.raises(TranslationError, match="pte not valid"):
        I.walk(read, m.kernel.root, KMEM + 0x3F0000 - PAGE, mode)
    with pytest.raises(TranslationError, match=I.REASON_VA32):
        I.walk(read, m.kernel.root, 1 << 32, mode)
    # the recursive mapping: PTmap maps the page directory onto itself
    ptd_va = (mode.ptdptdi << mode.pdrshift) + mode.ptdptdi * PAGE
    assert I.walk(read, m.kernel.root, ptd_va, mode)[0] == m.kernel.ptd
    # the trampoline PDEs are shared by the kernel and the process pmap
    assert m.user.pde(I.VM_MAXUSER_ADDRESS) == m.kernel.pde(I.VM_MAXUSER_ADDRESS)
    if mode.pae:
        assert I.walk(read, m.kernel.root, m.high_va, mode)[0] == HIGH_RAM[0] + 0x3000
        # an invalid PDPT entry is named as such; a process PDPT need only be 32-byte aligned
        m.mem.write(m.kernel.pdpt + 3 * 8, bytes(8))
        try:
            with pytest.raises(TranslationError, match="pdpe not valid"):
                I.walk(read, m.kernel.root, 0xC0000000, mode)
        finally:
            m.mem.write(m.kernel.pdpt + 3 * 8, struct.pack("<Q", (m.kernel.ptd + 3 * PAGE) | I.PG_V))
        moved = POOL - 0x60
        m.mem.write(moved, m.mem.read(m.kernel.pdpt, 32))
        assert I.walk(read, moved, KMEM + 0x3F0000, mode)[0] == m.kmem[KMEM + 0x3F0000]
    else:
        # a 4 MiB PDE keeps bits 12-21 of the VA
        assert I.walk(read, m.kernel.root, I.KERNBASE + 0x3FF004, mode)[0] == I.KERNBASE + 0x3FF004


# -------------------------------------------------------------- the formats --


def test_minidump_headers_and_sections(machine):
    for version in (1, 2):
        with open_dump(machine.paths[f"minidump-v{version}"]) as dump:
            assert isinstance(dump, MinidumpI386) and dump.arch == "i386"
            hdr = dump.header
            assert (hdr.version, hdr.kernbase, hdr.paemode) == (version, I.KERNBASE, int(machine.mode.pae))
            # one page of PTEs per NBPDR from KERNBASE to kernel_vm_end
            assert hdr.ptesize == (KVA_END - I.KERNBASE) // machine.mode.nbpdr * PAGE
            assert dump.pmap_entries == (KVA_END - I.KERNBASE) // PAGE
            assert dump.dump_avail == (None if version == 1 else dump.dump_avail)
            if version == 2:
                assert dump.dump_avail == sorted(machine.mem.ranges)
            info = dump.info()
            assert info["header"]["magic"] == "minidump FreeBSD/i386" and info["dmap"] is None
            assert info["pmap"] == machine.mode.name and dump.msgbuf() == b"i386 msgbuf\n"
            assert ("dump_avail" in info["sections"]) == (version == 2)
            assert dump.problems() == []
            text = format_text(info)  # kvm-vol info
            assert f"i386 minidump, version {version}" in text and "direct map        none" in text
            assert f"{machine.mode.entry_size}-byte {machine.mode.name} PTEs covering 0x1000 bytes each" in text


def test_elf32_full_dump(machine):
    with open_dump(machine.paths["full"]) as dump:
        assert isinstance(dump, ElfCore) and dump.arch == "i386" and dump.layout.elfclass == 1
        assert [(s.paddr, s.filesz) for s in dump.segments] == [(s, e - s) for s, e in RAM]
        assert dump.read_phys(KMEM + 0x123, 8) == dk.tagged(KMEM + 0x123, 8)


def test_kerneldumpheader_wrapping(machine):
    for inner, cls in (("minidump-v2", MinidumpI386), ("full", ElfCore)):
        with open_dump(machine.paths[f"kdh-{inner}"]) as dump:
            assert isinstance(dump, cls) and dump.kdh.architecture == "i386" and dump.arch == "i386"
            assert dump.origin == 512


@pytest.mark.parametrize("mutate,field,offset,text", [
    (dict(version=3), "version", 24, "wrong minidump version. expected 2 got 3"),
    (dict(version=0), "version", 24, "wrong minidump version. expected 2 got 0"),
    (dict(paemode=2), "paemode", 44, "paemode 2 is neither 0"),
    (dict(bitmapsize=0x3000), "bitmapsize", 0x2000, "bitmap section of 0x3000 bytes extends past the end"),
])
def test_bad_minidump_headers(tmp_path, mutate, field, offset, text):
    path = tmp_path / "bad.vmcore"
    hdr = MinidumpI386Header(dumpavailsize=PAGE, **mutate)
    raw = bytearray(hdr.pack() + bytes(PAGE))
    if "version" in mutate:  # pack() writes any version; the parser must refuse it
        struct.pack_into("<I", raw, 24, mutate["version"])
    path.write_bytes(bytes(raw))
    with pytest.raises(DumpFormatError) as exc:
        open_dump(str(path))
    err = exc.value
    assert (err.field, err.offset) == (field, offset) and text in err.message
    assert str(err).startswith(f"{path}: {field} at offset {offset:#x}: ")


def _elf32_core():
    """A two-segment ELF32/EM_386 core (what dumpsys_generic writes on i386), as bytes."""
    from kvm_vol.formats.elfcore import ELF32, PF_R, PT_LOAD, Phdr, pack_ehdr, pack_phdr

    phdrs = [Phdr(PT_LOAD, PF_R, 0x1000, 0, 0, 0x1000, 0x1000, PAGE),
             Phdr(PT_LOAD, PF_R, 0x2000, 0x100000, 0x100000, 0x1000, 0x1000, PAGE)]
    head = pack_ehdr(len(phdrs), layout=ELF32) + b"".join(pack_phdr(p, ELF32) for p in phdrs)
    return bytearray(head.ljust(0x1000, b"\0") + bytes(0x2000))


def test_elf32_core_is_recognised():
    from kvm_vol.formats.elfcore import looks_like_freebsd_core
    from kvm_vol.formats.source import BytesSource

    raw = bytes(_elf32_core())
    assert looks_like_freebsd_core(BytesSource(raw, "i386.core"))
    core = ElfCore(BytesSource(raw, "i386.core"))
    assert core.arch == "i386" and core.phys_runs() == ((0, 0x1000, 0x1000), (0x100000, 0x2000, 0x1000))


@pytest.mark.parametrize("mutate,field,offset,text", [
    (lambda r: r.__setitem__(4, 2), "e_ident[EI_CLASS]", 4, "i386 full dumps are ELFCLASS32 (1)"),
    (lambda r: struct.pack_into("<H", r, 42, 56), "e_phentsize", 42, "program header size 56, expected 32"),
    (lambda r: struct.pack_into("<I", r, 28, 0x2FF0), "e_phoff", 28, "extend past the end"),
    (lambda r: struct.pack_into("<I", r, 52 + 32 + 4, 0x2800), "phdr[1]", 52 + 32, "past the end of the file"),
    (lambda r: struct.pack_into("<I", r, 52 + 32 + 12, 0x800), "phdr[1]", 52 + 32, "overlaps"),
])
def test_bad_elf32_cores(mutate, field, offset, text):
    """ELF32 damage is named with the ELF32 offsets (e_phoff at 28, e_phentsize at 42, 32-byte phdrs)."""
    from kvm_vol.formats.source import BytesSource

    raw = _elf32_core()
    mutate(raw)
    with pytest.raises(DumpFormatError) as exc:
        ElfCore(BytesSource(bytes(raw), "bad32.core"))
    err = exc.value
    assert (err.field, err.offset) == (field, offset) and text in err.message


def test_elf32_cannot_describe_ram_above_4g(tmp_path):
    mem = PhysMem([HIGH_RAM])
    with pytest.raises(ValueError, match="ELF32 program header cannot describe"):
        write_elf_i386(mem, str(tmp_path / "high.elf"))


def test_v1_header_is_48_bytes():
    raw = MinidumpI386Header(version=1, dumpavailsize=PAGE).pack()
    assert raw[48:52] == bytes(4)  # v1 has no dumpavailsize field
    assert MinidumpI386Header(version=2, dumpavailsize=PAGE).pack()[48:52] == struct.pack("<I", PAGE)


# ------------------------------------------------------ C core against twin --


class Pair(SpacePair):
    def __init__(self, dump, path, root, pae, minidump):
        super().__init__(dump, path, None, root, arch="i386", pae=pae, minidump=minidump)


def expected(m, root_tables, va, n, minidump):
    """The bytes the machine holds at ``va`` (None when some page of it cannot be read)."""
    out = b""
    for page in range(va & ~0xFFF, va + n, PAGE):
        lo, hi = max(va, page), min(va + n, page + PAGE)
        if minidump and page >= I.KERNBASE:
            if page >= KVA_END:
                return None
        try:
            pa = root_tables.translate(page)
        except TranslationError:
            return None
        if not any(s <= pa < e for s, e in m.mem.ranges) or (pa >= 0x2000000 and pa < HIGH_RAM[0]) \
                or (pa >= HIGH_RAM[0] and not minidump):
            return None
        out += dk.tagged(pa + lo - page, hi - lo)
    return out


FORMATS = ("minidump-v1", "minidump-v2", "full", "raw", "kdh-minidump-v2", "kdh-full")


@pytest.mark.parametrize("fmt", FORMATS)
def test_native_matches_twin_and_memory(machine, native, fmt):
    m = machine
    md = "minidump" in fmt
    rng = random.Random(fmt)
    with open_dump(m.paths[fmt]) as dump:
        kernel = Pair(dump, m.paths[fmt], m.kernel.root, m.mode.pae, md)
        # 4/4G split: user VAs overlap kernel VAs (both above kernbase), so a process space never
        # takes the minidump's kernel rules: it walks its own page tables
        user = Pair(dump, m.paths[fmt], m.user.root, m.mode.pae, False)
        kva = sorted(m.kmem)
        pools = [
            lambda: I.KERNBASE + rng.randrange(0, KERNEND - I.KERNBASE),
            lambda: rng.choice(kva) + rng.randrange(-64, PAGE),
            lambda: rng.randrange(0, 1 << 32),
            lambda: rng.randrange(0, 1 << 40),
            lambda: m.hole_va + rng.randrange(0, 2 * PAGE),
        ]
        checked = 0
        for _ in range(300):
            va = rng.choice(pools)()
            n = rng.choice((1, 4, 8, 100, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE))
            got = kernel.check(va, n)
            if va + n <= 1 << 32:
                want = expected(m, m.kernel, va, n, md)
                if want is not None and not (md and va < I.KERNBASE):
                    assert got == ("ok", want), hex(va)
                    checked += 1
                elif got[0] == "ok":
                    assert md is False or va >= I.KERNBASE
        assert checked > 50
        # kernel VA named by rule
        if md:
            # libkvm's rule (no direct map: nothing below kernbase) ...
            with pytest.raises(TranslationError, match=f"virtual address {I.KERNBASE - PAGE:#x} not minidumped$"):
                dump.translator().read(I.KERNBASE - PAGE, 4)
            # ... while a space walks lower addresses from its root (process spaces), and the
            # kernel's page directory is not in a minidump
            below = kernel.same("read", I.KERNBASE - PAGE, 4)
            assert below[:3] == ("error", I.KERNBASE - PAGE, f"physical page {m.kernel.root:#x} not in the minidump")
            beyond = kernel.same("read", BEYOND, 4)
            assert beyond[2] == f"virtual address {BEYOND:#x} not minidumped (beyond the pmap section)"
            assert kernel.same("read", m.hole_va, 4)[2] == "physical address 0xa0000 not in minidump"
            assert kernel.same("read", KMEM + 0x3F0000 - PAGE, 4)[2] == "pte not valid"
        else:
            assert kernel.same("read", BEYOND, 8) == ("ok", dk.tagged(m.kmem[BEYOND], 8))
            if fmt == "raw":  # a raw image has no holes: the ISA hole reads as what it holds
                assert kernel.same("read", m.hole_va, 4) == ("ok", bytes(4))
            else:
                assert kernel.same("read", m.hole_va, 4)[2] == f"physical page 0xa0000 not in {dump.what}"
            if fmt == "raw" and 0x8000000 < m.mem.end:  # the PAE raw image runs to 4 GiB + 2 MiB
                assert kernel.same("read", m.noram_va, 4) == ("ok", bytes(4))
            else:
                assert kernel.same("read", m.noram_va, 4)[2] == f"physical page 0x8000000 not in {dump.what}"
            assert kernel.same("read", USER_VA, 4)[2] == "pde not valid"
        assert kernel.same("translate", 1 << 32)[:3] == ("error", 1 << 32, I.REASON_VA32)
        assert kernel.same("read", (1 << 32) + 5, 4)[:3] == ("error", (1 << 32) + 5, I.REASON_VA32)
        assert kernel.same("read", (1 << 32) - 2, 4, True) == ("ok", bytes(4))
        if m.mode.pae and "full" not in fmt:  # PAE: a frame above 4 GiB (absent from the ELF32 full dump)
            assert kernel.same("read", m.high_va + 8, 8) == ("ok", dk.tagged(HIGH_RAM[0] + 0x3008, 8))
        # a multi-page read names the first missing page, not libkvm's "invalid address"
        end = KMEM + 0x3F0000 + 48 * PAGE  # the first page after the kmem run is not mapped
        straddle = kernel.same("read", end - 4, 8)
        assert straddle[:3] == ("error", end, "pte not valid")
        # user space through the process pmap; a minidump holds only kernel-mapped pages, so
        # there the process's page directory itself is missing
        got = user.same("read", USER_VA + 0x10, 16)
        if md:
            assert got[:3] == ("error", USER_VA + 0x10, f"physical page {m.user.root:#x} not in the minidump")
        else:
            assert got == ("ok", dk.tagged(m.user_pages[USER_VA] + 0x10, 16))
        # mapping: the kmem run is contiguous in VA only page by page
        runs = kernel.same("mapping", KMEM + 0x3F0000, 48 * PAGE, True)[1]
        assert sum(n for _va, _pa, _off, n in runs) == 48 * PAGE
        assert all(m.kmem[va + k] == pa + k for va, pa, _off, n in runs for k in range(0, n, PAGE))


def test_hostile_page_tables_agree(native, tmp_path):
    """Garbage page tables and PTE sections: the two implementations agree and nothing crashes."""
    rng = random.Random(386)
    for mode in (I.NOPAE, I.PAE):
        mem = PhysMem([(0, 0x400000)])
        for pfn in range(0x400):
            mem.write(pfn << 12, bytes(rng.getrandbits(8) for _ in range(64)) * 64)
        raw = str(tmp_path / f"garbage-{mode.pae}.raw")
        write_raw(mem, raw)
        md = str(tmp_path / f"garbage-{mode.pae}.vmcore")
        ptd = 0x1000
        write_minidump_i386(mem, md, version=2, ptd=ptd, mode=mode, kva_end=I.KERNBASE + 4 * mode.nbpdr)
        for path, minidump in ((raw, False), (md, True)):
            with open_dump(path) as dump:
                pair = Pair(dump, path, rng.randrange(0, 0x400000) | rng.choice((0, 0x20)), mode.pae, minidump)
                for _ in range(200):
                    va = rng.randrange(0, 1 << 32)
                    pair.check(va, rng.choice((1, 8, PAGE + 3)))
                pair.same("mapping", I.KERNBASE, 64 << 20, True)
                pair.same("mapping", (1 << 32) - (8 << 20), 16 << 20, True)
