"""The kernel's symbol table as the loader left it in kernel memory.

``loader(8)`` copies the kernel's ``.symtab`` and ``.strtab`` right behind
the loaded image (``stand/common/load_elf.c``, ``elf_loadimage``): at
``ssym = roundup(end of the last PT_LOAD, sizeof(long))`` it stores the
symbol table's size as an ``Elf_Size``, the table, the string table's size,
the string table, each rounded up to ``sizeof(long)``, and passes ``ssym``
and ``esym`` to the kernel as ``MODINFOMD_SSYM``/``MODINFOMD_ESYM``.  The
kernel keeps using that copy: ``link_elf_preload_parse_symbols()`` points
the kernel linker file's ``ddbsymtab``/``ddbstrtab`` at it and DDB's
``db_fetch_ksymtab()`` reads it.  It is part of the kernel image mapping, so
every dump that holds the kernel image (minidumps included) holds it.

To find it without any symbol, :func:`find_loader_symtab` reads the kernel's
ELF header, which the first PT_LOAD maps at the start of the image
(``KERNSTART`` on amd64), takes the end of the image from its program
headers, and checks what lies at ``ssym`` thoroughly: a null first entry,
sizes that fit, a NUL-framed string table, names inside it.  Callers then
check that the table's ``version`` symbol points at the banner in memory.

The ELF64 structures here are also what the forge writes (one definition).
"""

import struct
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from kvm_vol.errors import KvmVolError

__all__ = ["EHDR", "PHDR", "SHDR", "SYM", "LoaderSymtab", "NoSymtab", "find_loader_symtab", "loader_layout",
           "parse_symbols"]

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
#: Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size.
SYM = struct.Struct("<IBBHQQ")
ELF_SIZE = struct.Struct("<Q")  # Elf_Size / long on LP64: the loader's length words

ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
STT_SECTION = 3
STT_FILE = 4
SHN_UNDEF = 0
SHN_COMMON = 0xFFF2

#: Upper bounds on the loader's tables (a GENERIC amd64 kernel has ~2.5 MiB of
#: symbols and ~2 MiB of strings); larger sizes mean this is not a symbol table.
MAX_SYMTAB = 64 << 20
MAX_STRTAB = 64 << 20
_MAX_PHNUM = 64

ReadKva = Callable[[int, int], Optional[bytes]]


class LoaderSymtab(NamedTuple):
    ssym: int  #: kernel VA of the symbol table's length word
    esym: int  #: end of the tables (roundup, as the loader computes it)
    image_end: int  #: end of the last PT_LOAD (``_end``)
    symbols: Dict[str, int]


class NoSymtab(KvmVolError):
    """The image holds no loader copy of the kernel's symbol table (the reason says why)."""


def _roundup(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def parse_symbols(symtab: bytes, strtab: bytes) -> Dict[str, int]:
    """``{name: value}`` of an Elf64 symbol table, with :mod:`kvm_vol.symbols.elfsyms`' rules.

    Undefined and common entries, section and file symbols and unnamed ones
    are skipped; the first definition of a name wins (libkvm's resolver).
    Raises :class:`NoSymtab` if a name lies outside the string table.
    """
    out: Dict[str, int] = {}
    for index in range(1, len(symtab) // SYM.size):
        st_name, st_info, _other, st_shndx, st_value, _size = SYM.unpack_from(symtab, index * SYM.size)
        if st_name >= len(strtab):
            raise NoSymtab(f"symbol {index}: name offset {st_name:#x} beyond the string table ({len(strtab):#x} bytes)")
        if st_name == 0 or st_shndx in (SHN_UNDEF, SHN_COMMON) or (st_info & 0xF) in (STT_SECTION, STT_FILE):
            continue
        end = strtab.find(b"\0", st_name)
        name = strtab[st_name:end].decode("latin-1")
        if name:
            out.setdefault(name, st_value)
    return out


def _read(read_kva: ReadKva, va: int, length: int, what: str) -> bytes:
    data = read_kva(va, length)
    if data is None or len(data) != length:
        raise NoSymtab(f"{what} at {va:#x} is not in the image")
    return data


def find_loader_symtab(read_kva: ReadKva, kernstart: int) -> LoaderSymtab:
    """Locate and parse the loader's copy of ``.symtab``/``.strtab`` (amd64 kernels).

    ``read_kva(va, length)`` returns the kernel's bytes or None where they
    are not in the image.  Raises :class:`NoSymtab` with the reason when the
    image has no such copy (kernel loaded without symbols, a stripped
    kernel, or memory that is not a FreeBSD/amd64 kernel).
    """
    ehdr = EHDR.unpack(_read(read_kva, kernstart, EHDR.size, "the kernel's ELF header"))
    ident, e_type, e_machine, _ver, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum = ehdr[:11]
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1 or e_type != ET_EXEC or e_machine != EM_X86_64:
        raise NoSymtab(f"no amd64 kernel ELF header at {kernstart:#x}")
    if e_phentsize != PHDR.size or not 0 < e_phnum <= _MAX_PHNUM or e_phoff > 4096:
        raise NoSymtab(f"the kernel ELF header at {kernstart:#x} has no usable program headers")
    phdrs = _read(read_kva, kernstart + e_phoff, e_phnum * PHDR.size, "the kernel's program headers")
    image_end = 0
    for i in range(e_phnum):
        p_type, _flags, _off, p_vaddr, _paddr, _filesz, p_memsz, _align = PHDR.unpack_from(phdrs, i * PHDR.size)
        if p_type == PT_LOAD:
            image_end = max(image_end, p_vaddr + p_memsz)
    if image_end <= kernstart:
        raise NoSymtab("the kernel ELF header has no PT_LOAD")
    ssym = _roundup(image_end, ELF_SIZE.size)
    try:
        symtab_size = ELF_SIZE.unpack(_read(read_kva, ssym, 8, "the symbol table size"))[0]
    except NoSymtab as exc:
        raise NoSymtab(f"nothing follows the kernel image ({exc}); the loader did not keep its symbols") from None
    if not SYM.size <= symtab_size <= MAX_SYMTAB or symtab_size % SYM.size:
        raise NoSymtab(f"no symbol table after the kernel image at {ssym:#x} (the loader kept none, or it was overwritten)")
    symtab = _read(read_kva, ssym + 8, symtab_size, "the symbol table")
    if symtab[:SYM.size] != bytes(SYM.size):
        raise NoSymtab(f"the table at {ssym:#x} does not start with the null symbol")
    str_at = _roundup(ssym + 8 + symtab_size, ELF_SIZE.size)
    strtab_size = ELF_SIZE.unpack(_read(read_kva, str_at, 8, "the string table size"))[0]
    if not 1 <= strtab_size <= MAX_STRTAB:
        raise NoSymtab(f"implausible string table size {strtab_size:#x} at {str_at:#x}")
    strtab = _read(read_kva, str_at + 8, strtab_size, "the string table")
    if strtab[0] != 0 or strtab[-1] != 0:
        raise NoSymtab(f"the string table at {str_at + 8:#x} is not NUL-framed")
    symbols = parse_symbols(symtab, strtab)
    esym = _roundup(str_at + 8 + strtab_size, ELF_SIZE.size)
    return LoaderSymtab(ssym, esym, image_end, symbols)


def loader_layout(symtab: bytes, strtab: bytes) -> Tuple[bytes, int]:
    """The bytes the loader stores at ``ssym`` for these tables, and the offset of the strtab's size word."""
    blob = ELF_SIZE.pack(len(symtab)) + symtab
    blob += bytes(_roundup(len(blob), ELF_SIZE.size) - len(blob))
    str_off = len(blob)
    blob += ELF_SIZE.pack(len(strtab)) + strtab
    blob += bytes(_roundup(len(blob), ELF_SIZE.size) - len(blob))
    return blob, str_off
