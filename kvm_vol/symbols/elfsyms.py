"""Symbols and the ``version`` banner from a FreeBSD kernel's ELF file.

A kernel ISF needs the addresses of the kernel's symbols, which only the ELF
symbol table has (DWARF lacks functions' and linker symbols' addresses, and
``kernel.debug`` files may be paired with a separately stripped ``kernel``),
and the ``version`` string that identifies the kernel in a dump.

Lookup semantics follow libkvm's resolver (``kvm_nlist`` on a dead kernel):
undefined entries are ignored and the first definition of a name wins.
Section and file symbols are not variables or functions and are skipped;
absolute symbols (``kernbase``) are kept.  For relocatable objects the
values are section-relative, as in the file.
"""

from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from kvm_vol.errors import SymbolError

__all__ = ["read_symbols", "read_symbol_bytes", "read_version"]

PathLike = Union[str, Path]

#: Upper bound when a string symbol has no recorded size (``st_size`` 0).
_MAX_UNSIZED_STRING = 4096


def _open(path: PathLike) -> Tuple[Path, ELFFile, object]:
    p = Path(path)
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise SymbolError(f"{p}: cannot open: {exc.strerror or exc}") from exc
    try:
        return p, ELFFile(fh), fh
    except (ELFError, ELFParseError) as exc:
        fh.close()
        raise SymbolError(f"{p}: not an ELF file: {exc}") from exc


def _defined(elf: ELFFile) -> Iterator[Tuple[str, object]]:
    """Defined, named, non-section/file symbols of ``.symtab``, in file order."""
    for section in elf.iter_sections():
        if not isinstance(section, SymbolTableSection) or section.name != ".symtab":
            continue
        for sym in section.iter_symbols():
            shndx = sym["st_shndx"]
            if not sym.name or shndx in ("SHN_UNDEF", "SHN_COMMON"):
                continue
            if sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            yield sym.name, sym


def read_symbols(path: PathLike) -> Dict[str, int]:
    """``{name: value}`` for the defined symbols of ``path``'s ``.symtab``.

    Raises :class:`SymbolError` naming the file if it is not ELF or has no
    ``.symtab`` (a stripped kernel cannot provide addresses).
    """
    p, elf, fh = _open(path)
    try:
        if elf.get_section_by_name(".symtab") is None:
            raise SymbolError(f"{p}: no .symtab (stripped kernel?)")
        result: Dict[str, int] = {}
        for name, sym in _defined(elf):
            result.setdefault(name, int(sym["st_value"]))
        return result
    except (ELFError, ELFParseError) as exc:
        raise SymbolError(f"{p}: cannot read the symbol table: {exc}") from exc
    finally:
        fh.close()


def read_symbol_bytes(path: PathLike, name: str) -> bytes:
    """The ``st_size`` bytes that the symbol ``name`` occupies in the file.

    The section comes from the symbol's section index, so this works for
    linked files (offset = value - section address) and relocatable objects
    (offset = value).  Raises :class:`SymbolError` when the symbol is missing
    or its section has no file contents (``.bss``, or the ``SHT_NOBITS``
    data sections of a ``kernel.debug`` made by ``objcopy --only-keep-debug``).
    """
    p, elf, fh = _open(path)
    try:
        for sym_name, sym in _defined(elf):
            if sym_name == name:
                break
        else:
            raise SymbolError(f"{p}: no '{name}' symbol")
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int):
            raise SymbolError(f"{p}: symbol '{name}' is not in a section ({shndx})")
        section = elf.get_section(shndx)
        if section["sh_type"] == "SHT_NOBITS":
            raise SymbolError(f"{p}: symbol '{name}' is in {section.name}, which has no contents in this file")
        start = int(sym["st_value"]) - (section["sh_addr"] if elf["e_type"] != "ET_REL" else 0)
        data = section.data()
        if not 0 <= start < len(data):
            raise SymbolError(f"{p}: symbol '{name}' at {int(sym['st_value']):#x} lies outside {section.name}")
        size = int(sym["st_size"]) or _MAX_UNSIZED_STRING
        return data[start : start + size]
    except (ELFError, ELFParseError) as exc:
        raise SymbolError(f"{p}: cannot read symbol '{name}': {exc}") from exc
    finally:
        fh.close()


def read_version(path: PathLike) -> bytes:
    """The kernel banner: the C string stored at ``version`` (up to its first NUL).

    Raises :class:`SymbolError` naming the file if there is no ``version``
    symbol, its contents are not in the file, or the string is empty.
    """
    raw = read_symbol_bytes(path, "version")
    text = raw.split(b"\0", 1)[0]
    if not text:
        raise SymbolError(f"{Path(path)}: the 'version' string is empty")
    return text
