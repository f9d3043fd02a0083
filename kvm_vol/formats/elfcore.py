"""amd64 ELF full dump: what ``dumpsys_generic`` writes when ``debug.minidump=0``.

An ELF64 little-endian ET_CORE for EM_X86_64 with one PT_LOAD per chunk of
physical memory (``p_paddr`` = physical start, ``p_filesz = p_memsz``),
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
    "ELF_MAGIC", "ELFCLASS64", "ELFDATA2LSB", "EV_CURRENT", "ELFOSABI_SYSV", "ELFOSABI_FREEBSD",
    "ELFOSABI_STANDALONE", "ET_CORE", "EM_X86_64", "PT_LOAD", "PT_NOTE", "PF_R", "EHDR", "PHDR",
    "Phdr", "pack_ehdr", "pack_phdr", "looks_like_freebsd_core", "ElfCore",
]

ELF_MAGIC = b"\x7fELF"
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
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_R = 4
PN_XNUM = 0xFFFF  #: e_phnum escape: the real count is in section header 0's sh_info

# e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
# e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SH_INFO_OFFSET = 44
_E_TYPE_OFFSET = 16
_E_MACHINE_OFFSET = 18
_E_PHOFF_OFFSET = 32
_E_PHENTSIZE_OFFSET = 54


class Phdr(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


def pack_ehdr(phnum: int, osabi: int = ELFOSABI_STANDALONE) -> bytes:
    """An ELF64 ET_CORE / EM_X86_64 header with ``phnum`` program headers right after it."""
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, osabi]) + bytes(8)
    return EHDR.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, EHDR.size, 0, 0,
                     EHDR.size, PHDR.size, phnum, _SHDR.size, 0, 0)


def pack_phdr(phdr: Phdr) -> bytes:
    return PHDR.pack(*phdr)


class _HeaderError(Exception):
    """A bad ELF header field: ``(field, message)``, turned into DumpFormatError by the caller."""


def _read_phdrs(view: Source, ehdr: tuple) -> Tuple[List[Phdr], int]:
    """Program headers and their count; raises :class:`_HeaderError` naming the field at fault."""
    phoff, shoff, phentsize, phnum = ehdr[5], ehdr[6], ehdr[9], ehdr[10]
    if phnum == PN_XNUM:
        raw = view.read(shoff, _SHDR.size)
        if len(raw) != _SHDR.size:
            raise _HeaderError("e_shoff", f"e_phnum is PN_XNUM but section header 0 at {shoff:#x} is past the end")
        phnum = struct.unpack_from("<I", raw, _SH_INFO_OFFSET)[0]
    if phnum and phentsize != PHDR.size:
        raise _HeaderError("e_phentsize", f"program header size {phentsize}, expected {PHDR.size}")
    raw = view.read(phoff, phnum * PHDR.size)
    if len(raw) != phnum * PHDR.size:
        raise _HeaderError("e_phoff", f"{phnum} program headers at {phoff:#x} extend past the end of the file")
    return [Phdr(*fields) for fields in PHDR.iter_unpack(raw)], phnum


def looks_like_freebsd_core(source: Source) -> bool:
    """Whether ``source`` is an amd64 ELF core that a FreeBSD kernel could have written.

    True for ELF64 LE ET_CORE EM_X86_64 files whose EI_OSABI is STANDALONE
    (what ``dumpsys_generic`` writes) or FreeBSD, or that have no PT_NOTE (a
    kernel dump needs none, while Linux kdump and QEMU cores always carry
    notes).  Never raises: anything unreadable is simply not ours.
    """
    raw = source.read(0, EHDR.size)
    if len(raw) != EHDR.size or not raw.startswith(ELF_MAGIC):
        return False
    ehdr = EHDR.unpack(raw)
    ident = ehdr[0]
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or ehdr[1] != ET_CORE or ehdr[2] != EM_X86_64:
        return False
    if ident[7] in (ELFOSABI_STANDALONE, ELFOSABI_FREEBSD):
        return True
    try:
        phdrs, _ = _read_phdrs(source, ehdr)
    except _HeaderError:
        return False
    return not any(p.type == PT_NOTE for p in phdrs)


class ElfCore(Dump):
    """An amd64 ELF full dump; every PT_LOAD's ``p_paddr`` is a physical address.

    Raises :class:`DumpFormatError` (naming the header field or
    ``phdr[i]``) for: a short header, another class, byte order or machine,
    a file that is not a core (e.g. the kernel given instead of the vmcore),
    no PT_LOAD, a segment past the end of the file or longer in the file
    than in memory, and segments that overlap in physical memory.
    ``p_memsz`` beyond ``p_filesz`` is not in the dump.
    """

    kind = "elf"
    what = "the ELF core"

    def __init__(self, view: Source, kdh: Optional[KernelDumpHeader] = None):
        super().__init__(view, kdh)
        raw = view.read(0, EHDR.size)
        if len(raw) != EHDR.size or not raw.startswith(ELF_MAGIC):
            raise self._error(f"truncated or missing ELF header ({len(raw)} bytes)", 0, "e_ident")
        ehdr = EHDR.unpack(raw)
        ident = ehdr[0]
        if ident[4] != ELFCLASS64:
            raise self._error(f"ELF class {ident[4]}: amd64 full dumps are ELFCLASS64 (2)", 4, "e_ident[EI_CLASS]")
        if ident[5] != ELFDATA2LSB:
            raise self._error(f"ELF data encoding {ident[5]}: amd64 dumps are little-endian (1)", 5, "e_ident[EI_DATA]")
        if ehdr[1] != ET_CORE:
            name = _ET_NAMES.get(ehdr[1], str(ehdr[1]))
            raise self._error(f"not an ELF core (e_type {name}); is this the kernel rather than the vmcore?",
                              _E_TYPE_OFFSET, "e_type")
        if ehdr[2] != EM_X86_64:
            raise self._error(f"e_machine {ehdr[2]}: kvm-vol reads amd64 (EM_X86_64, {EM_X86_64}) dumps",
                              _E_MACHINE_OFFSET, "e_machine")
        try:
            self.phdrs, phnum = _read_phdrs(view, ehdr)
        except _HeaderError as exc:
            field, message = exc.args
            offset = _E_PHENTSIZE_OFFSET if field == "e_phentsize" else _E_PHOFF_OFFSET
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
        return self._phoff + i * PHDR.size, f"phdr[{i}]"

    def _check_segments(self) -> None:
        loads = [(i, p) for i, p in enumerate(self.phdrs) if p.type == PT_LOAD]
        for i, p in loads:
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
