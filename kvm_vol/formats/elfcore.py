"""amd64 and i386 ELF full dumps: what ``dumpsys_generic`` writes when ``debug.minidump=0``.

An ELF64 (amd64, EM_X86_64) or ELF32 (i386, EM_386) little-endian ET_CORE
(``sys/kern/kern_dump.c`` uses the kernel's own ``Elf_Ehdr``/``Elf_Phdr``)
with one PT_LOAD per chunk of physical memory (``p_paddr`` = physical start, ``p_filesz = p_memsz``),
the data page-aligned after the headers (``sys/kern/kern_dump.c``,
``vmcore-formats.md`` §8).  FreeBSD writes ``EI_OSABI`` =
ELFOSABI_STANDALONE and no PT_NOTE; Linux kdump and QEMU cores carry notes
and another OSABI, which is how :func:`looks_like_freebsd_core` leaves them
to Volatility's own ELF stacker.

The packing helpers are used by the forge writer, so the layout is written
down once.
"""

import struct
from typing import List, NamedTuple, Optional, Tuple

from kvm_vol.formats import Dump, Run
from kvm_vol.formats.kdh import KernelDumpHeader
from kvm_vol.formats.source import Source

__all__ = [
    "ELF_MAGIC", "ELFCLASS32", "ELFCLASS64", "EM_386", "ElfLayout", "ELF32", "ELF64", "ELFDATA2LSB", "EV_CURRENT",
    "ELFOSABI_SYSV", "ELFOSABI_FREEBSD",
    "ELFOSABI_STANDALONE", "ET_CORE", "EM_X86_64", "PT_LOAD", "PT_NOTE", "PF_R", "EHDR", "PHDR",
    "Phdr", "pack_ehdr", "pack_phdr", "looks_like_freebsd_core", "ElfCore",
]

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
ELFOSABI_FREEBSD = 9
ELFOSABI_STANDALONE = 255
_OSABI_NAMES = {ELFOSABI_SYSV: "SYSV", ELFOSABI_FREEBSD: "FreeBSD", ELFOSABI_STANDALONE: "STANDALONE"}
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4
_ET_NAMES = {1: "ET_REL", ET_EXEC: "ET_EXEC", ET_DYN: "ET_DYN", ET_CORE: "ET_CORE"}
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_R = 4
PN_XNUM = 0xFFFF  #: e_phnum escape: the real count is in section header 0's sh_info

_E_TYPE_OFFSET = 16
_E_MACHINE_OFFSET = 18


class Phdr(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


class ElfLayout(NamedTuple):
    """One ELF class as a FreeBSD kernel writes its cores: the structures and the machine.

    ``ehdr`` fields are in the same order in both classes (e_ident, e_type,
    e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx); ELF32 program
    headers put ``p_flags`` after ``p_memsz`` (:meth:`unpack_phdr` hides it).
    """

    elfclass: int
    machine: int
    arch: str
    ehdr: struct.Struct
    phdr: struct.Struct
    shdr: struct.Struct
    sh_info_offset: int  #: of section header 0 (PN_XNUM)
    e_phoff_offset: int
    e_phentsize_offset: int

    def unpack_phdr(self, raw: bytes, offset: int = 0) -> Phdr:
        f = self.phdr.unpack_from(raw, offset)
        if self.elfclass == ELFCLASS64:
            return Phdr(*f)
        return Phdr(f[0], f[6], f[1], f[2], f[3], f[4], f[5], f[7])

    def pack_phdr(self, p: Phdr) -> bytes:
        if self.elfclass == ELFCLASS64:
            return self.phdr.pack(*p)
        if max(p.offset, p.vaddr, p.paddr + p.memsz - 1 if p.memsz else p.paddr) >> 32:
            raise ValueError(f"an ELF32 program header cannot describe [{p.paddr:#x}, {p.paddr + p.memsz:#x}) "
                             f"at offset {p.offset:#x}: its fields are 32-bit")
        return self.phdr.pack(p.type, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.flags, p.align)


ELF64 = ElfLayout(ELFCLASS64, EM_X86_64, "amd64", struct.Struct("<16sHHIQQQIHHHHHH"), struct.Struct("<IIQQQQQQ"),
                  struct.Struct("<IIQQQQIIQQ"), sh_info_offset=44, e_phoff_offset=32, e_phentsize_offset=54)
ELF32 = ElfLayout(ELFCLASS32, EM_386, "i386", struct.Struct("<16sHHIIIIIHHHHHH"), struct.Struct("<IIIIIIII"),
                  struct.Struct("<IIIIIIIIII"), sh_info_offset=28, e_phoff_offset=28, e_phentsize_offset=42)
#: The layouts by e_machine (the machine fixes the class: there is no 64-bit i386 nor 32-bit amd64 core).
_BY_MACHINE = {layout.machine: layout for layout in (ELF64, ELF32)}
_BY_CLASS = {layout.elfclass: layout for layout in (ELF64, ELF32)}
#: The amd64 structures under their historical names.
EHDR = ELF64.ehdr
PHDR = ELF64.phdr


def pack_ehdr(phnum: int, osabi: int = ELFOSABI_STANDALONE, layout: ElfLayout = ELF64) -> bytes:
    """An ET_CORE header of ``layout``'s class and machine with ``phnum`` program headers right after it."""
    ident = ELF_MAGIC + bytes([layout.elfclass, ELFDATA2LSB, EV_CURRENT, osabi]) + bytes(8)
    return layout.ehdr.pack(ident, ET_CORE, layout.machine, EV_CURRENT, 0, layout.ehdr.size, 0, 0,
                            layout.ehdr.size, layout.phdr.size, phnum, layout.shdr.size, 0, 0)


def pack_phdr(phdr: Phdr, layout: ElfLayout = ELF64) -> bytes:
    return layout.pack_phdr(phdr)


class _HeaderError(Exception):
    """A bad ELF header field: ``(field, message)``, turned into DumpFormatError by the caller."""


def _read_phdrs(view: Source, ehdr: tuple, layout: ElfLayout = ELF64) -> Tuple[List[Phdr], int]:
    """Program headers and their count; raises :class:`_HeaderError` naming the field at fault."""
    phoff, shoff, phentsize, phnum = ehdr[5], ehdr[6], ehdr[9], ehdr[10]
    size = layout.phdr.size
    if phnum == PN_XNUM:
        raw = view.read(shoff, layout.shdr.size)
        if len(raw) != layout.shdr.size:
            raise _HeaderError("e_shoff", f"e_phnum is PN_XNUM but section header 0 at {shoff:#x} is past the end")
        phnum = struct.unpack_from("<I", raw, layout.sh_info_offset)[0]
    if phnum and phentsize != size:
        raise _HeaderError("e_phentsize", f"program header size {phentsize}, expected {size}")
    raw = view.read(phoff, phnum * size)
    if len(raw) != phnum * size:
        raise _HeaderError("e_phoff", f"{phnum} program headers at {phoff:#x} extend past the end of the file")
    return [layout.unpack_phdr(raw, i * size) for i in range(phnum)], phnum


def looks_like_freebsd_core(source: Source) -> bool:
    """Whether ``source`` is an amd64 or i386 ELF core that a FreeBSD kernel could have written.

    True for ELF64 LE ET_CORE EM_X86_64 (or ELF32 EM_386) files whose EI_OSABI is STANDALONE
    (what ``dumpsys_generic`` writes) or FreeBSD, or that have no PT_NOTE (a
    kernel dump needs none, while Linux kdump and QEMU cores always carry
    notes).  Never raises: anything unreadable is simply not ours.
    """
    ident = source.read(0, 16)
    layout = _BY_CLASS.get(ident[4]) if len(ident) == 16 and ident.startswith(ELF_MAGIC) else None
    if layout is None:
        return False
    raw = source.read(0, layout.ehdr.size)
    if len(raw) != layout.ehdr.size:
        return False
    ehdr = layout.ehdr.unpack(raw)
    if ident[5] != ELFDATA2LSB or ehdr[1] != ET_CORE or ehdr[2] != layout.machine:
        return False
    if ident[7] in (ELFOSABI_STANDALONE, ELFOSABI_FREEBSD):
        return True
    try:
        phdrs, _ = _read_phdrs(source, ehdr, layout)
    except _HeaderError:
        return False
    return not any(p.type == PT_NOTE for p in phdrs)


class ElfCore(Dump):
    """An amd64 (ELF64) or i386 (ELF32) full dump; every PT_LOAD's ``p_paddr`` is a physical address.

    :attr:`arch` and :attr:`layout` come from ``e_machine``.  Raises
    :class:`DumpFormatError` (naming the header field or ``phdr[i]``) for: a
    short header, a class that is not the machine's, another byte order or machine,
    a file that is not a core (e.g. the kernel given instead of the vmcore),
    no PT_LOAD, a segment past the end of the file or longer in the file
    than in memory, and segments that overlap in physical memory.
    ``p_memsz`` beyond ``p_filesz`` is not in the dump.
    """

    kind = "elf"
    what = "the ELF core"

    def __init__(self, view: Source, kdh: Optional[KernelDumpHeader] = None):
        super().__init__(view, kdh)
        head = view.read(0, ELF32.ehdr.size)  # the smaller header: e_type and e_machine are at the same place
        if len(head) != ELF32.ehdr.size or not head.startswith(ELF_MAGIC):
            raise self._error(f"truncated or missing ELF header ({len(head)} bytes)", 0, "e_ident")
        e_type, machine = struct.unpack_from("<HH", head, _E_TYPE_OFFSET)
        if e_type != ET_CORE:
            name = _ET_NAMES.get(e_type, str(e_type))
            raise self._error(f"not an ELF core (e_type {name}); is this the kernel rather than the vmcore?",
                              _E_TYPE_OFFSET, "e_type")
        layout = _BY_MACHINE.get(machine)
        if layout is None:
            raise self._error(f"e_machine {machine}: kvm-vol reads amd64 (EM_X86_64, {EM_X86_64}) and "
                              f"i386 (EM_386, {EM_386}) dumps", _E_MACHINE_OFFSET, "e_machine")
        if head[4] != layout.elfclass:
            raise self._error(f"ELF class {head[4]}: {layout.arch} full dumps are ELFCLASS{32 * layout.elfclass} "
                              f"({layout.elfclass})", 4, "e_ident[EI_CLASS]")
        if head[5] != ELFDATA2LSB:
            raise self._error(f"ELF data encoding {head[5]}: {layout.arch} dumps are little-endian (1)", 5,
                              "e_ident[EI_DATA]")
        raw = view.read(0, layout.ehdr.size)
        if len(raw) != layout.ehdr.size:
            raise self._error(f"truncated or missing ELF header ({len(raw)} bytes)", 0, "e_ident")
        ehdr = layout.ehdr.unpack(raw)
        ident = ehdr[0]
        #: The ELF class and machine of this core; ``arch`` is the machine's FreeBSD name.
        self.layout = layout
        self.arch = layout.arch
        try:
            self.phdrs, phnum = _read_phdrs(view, ehdr, layout)
        except _HeaderError as exc:
            field, message = exc.args
            offset = layout.e_phentsize_offset if field == "e_phentsize" else layout.e_phoff_offset
            raise self._error(message, offset, field) from None
        self.osabi = ident[7]
        self._phoff = ehdr[5]
        self.segments = [p for p in self.phdrs if p.type == PT_LOAD]
        if not self.segments:
            raise self._error(f"no PT_LOAD program header among {phnum}: the core holds no memory",
                              self._phoff, "program headers")
        self._check_segments()

    def _phdr_field(self, i: int) -> Tuple[int, str]:
        """File offset (relative to the dump) and name of program header ``i``."""
        return self._phoff + i * self.layout.phdr.size, f"phdr[{i}]"

    def _check_segments(self) -> None:
        loads = [(i, p) for i, p in enumerate(self.phdrs) if p.type == PT_LOAD]
        # A kernel's own address arithmetic is modulo the word size: a segment
        # that would wrap past the top of the physical address space is damage
        # (found by fuzzing: p_paddr 0xffffffffffffffff put the "banner" at
        # physical 0x1000...).
        limit = 1 << (32 * self.layout.elfclass)
        for i, p in loads:
            if p.paddr + p.memsz > limit:
                offset, field = self._phdr_field(i)
                raise self._error(f"PT_LOAD at physical {p.paddr:#x} with p_memsz {p.memsz:#x} runs past the top "
                                  f"of the physical address space ({limit:#x})", offset, field)
            if p.filesz > p.memsz:
                offset, field = self._phdr_field(i)
                raise self._error(f"PT_LOAD p_filesz {p.filesz:#x} exceeds p_memsz {p.memsz:#x}", offset, field)
            if p.offset + p.filesz > self.view.size:
                offset, field = self._phdr_field(i)
                raise self._error(
                    f"PT_LOAD for physical {p.paddr:#x} has data [{self.origin + p.offset:#x}, "
                    f"{self.origin + p.offset + p.filesz:#x}) past the end of the file "
                    f"at {self.origin + self.view.size:#x}",
                    offset, field)
        ordered = sorted(((i, p) for i, p in loads if p.memsz), key=lambda item: item[1].paddr)
        for (_, prev), (i, cur) in zip(ordered, ordered[1:]):
            if cur.paddr < prev.paddr + prev.memsz:
                offset, field = self._phdr_field(i)
                raise self._error(
                    f"PT_LOAD [{cur.paddr:#x}, {cur.paddr + cur.memsz:#x}) overlaps "
                    f"[{prev.paddr:#x}, {prev.paddr + prev.memsz:#x}) in physical memory", offset, field)

    def _compute_runs(self) -> List[Run]:
        runs: List[Run] = []
        for p in sorted(self.segments, key=lambda p: p.paddr):
            if not p.filesz:
                continue
            off = self.origin + p.offset
            if runs and runs[-1][0] + runs[-1][2] == p.paddr and runs[-1][1] + runs[-1][2] == off:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + p.filesz)
            else:
                runs.append((p.paddr, off, p.filesz))
        return runs

    def info(self) -> dict:
        info = super().info()
        info.update({
            "osabi": self.osabi,
            "osabi_name": _OSABI_NAMES.get(self.osabi, "other"),
            "phnum": len(self.phdrs),
            "segments": [
                {"paddr": p.paddr, "offset": self.origin + p.offset, "filesz": p.filesz, "memsz": p.memsz}
                for p in self.segments
            ],
        })
        return info
