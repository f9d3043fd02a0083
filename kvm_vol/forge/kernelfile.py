"""The forge kernel as files and memory see it without DWARF.

* :func:`write_kernel_file` writes what ``/boot/kernel/kernel`` is on a
  machine without the kernel-dbg package: an ELF64 ``ET_EXEC`` for
  ``EM_X86_64`` with ``EI_OSABI`` = FreeBSD, a PT_LOAD at the image's link
  addresses (``p_vaddr`` KERNSTART, ``p_paddr`` KERNLOAD, as amd64's
  ``ldscript.amd64`` links it) whose contents are the image (so ``version``,
  ``osreldate`` and the self-describing ``const int`` offsets can be read
  from the file), the ``/red/herring`` PT_INTERP, and ``.symtab``/``.strtab``
  /``.shstrtab`` - and no debug sections.
* :func:`place_loader_symtab` puts into the machine's memory what
  ``loader(8)`` leaves there: the same tables behind the image at
  ``ssym = roundup(_end, sizeof(long))`` (:mod:`kvm_vol.symbols.memsyms`).

Both write the kernel's ELF and program headers into the first page of the
image, as the first PT_LOAD of a real kernel maps them.  Call them after the
machine is complete: the image ends at the last global placed so far.
"""

import os
from typing import Dict, List, Tuple

from kvm_vol.core.amd64 import KERNLOAD, KERNSTART, PAGE_SIZE
from kvm_vol.symbols.memsyms import EHDR, PHDR, SHDR, SYM, loader_layout

__all__ = ["image_end", "kernel_elf_bytes", "place_loader_symtab", "symbol_tables", "write_kernel_file"]

ELFOSABI_FREEBSD = 9
ET_EXEC, EM_X86_64 = 2, 62
PT_LOAD, PT_INTERP = 1, 3
PF_X, PF_W, PF_R = 1, 2, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_GLOBAL = 1
STT_NOTYPE, STT_OBJECT = 0, 1
SHN_ABS = 0xFFF1
INTERP = b"/red/herring\0"
INTERP_OFFSET = 0x200
#: Where the forge's text ends and its data (rodata, data, bss) begins.
_DATA_START = KERNSTART + 0x80000
_TEXT_SECTION, _DATA_SECTION = 1, 2
_SHSTRTAB = b"\0.text\0.data\0.symtab\0.strtab\0.shstrtab\0"


def _name_off(name: bytes) -> int:
    return _SHSTRTAB.index(b"\0" + name + b"\0") + 1


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _symbol_sizes(forged) -> Dict[str, int]:
    layout, types = forged.machine.layout, forged.machine.symbol_types
    sizes = {}
    for name in forged.machine.symbols:
        try:
            sizes[name] = layout.type_size(types[name]) if name in types else 0
        except KeyError:
            sizes[name] = 0
    return sizes


def _amd64_only(forged) -> None:
    """The file layout here is amd64's (ELF64 x86-64 linked at KERNSTART, loader's LP64 symtab)."""
    if forged.machine.ARCH != "amd64":
        raise ValueError(f"forge: the kernel file and loader symbol table are written for amd64 kernels, "
                         f"not {forged.machine.ARCH}")


def image_end(forged) -> int:
    """``_end``: one past the last byte of the image's globals, page-rounded (as ldscript aligns .bss)."""
    _amd64_only(forged)
    sizes = _symbol_sizes(forged)
    limit = KERNSTART + forged.machine.KERNEL_IMAGE_SIZE
    ends = [va + sizes[n] for n, va in forged.machine.symbols.items() if KERNSTART <= va < limit]
    return _round_up(max(ends), PAGE_SIZE)


def symbol_tables(forged, end: int) -> Tuple[bytes, bytes]:
    """``(.symtab, .strtab)`` of every forge kernel symbol, sorted by address."""
    sizes = _symbol_sizes(forged)
    strtab = bytearray(b"\0")
    symtab = bytearray(SYM.size)  # STN_UNDEF
    for name, va in sorted(forged.machine.symbols.items(), key=lambda kv: (kv[1], kv[0])):
        if KERNSTART + PAGE_SIZE <= va < _DATA_START:
            shndx, kind = _TEXT_SECTION, STT_OBJECT
        elif _DATA_START <= va < end:
            shndx, kind = _DATA_SECTION, STT_OBJECT
        else:
            shndx, kind = SHN_ABS, STT_NOTYPE  # kernbase and other linker-defined constants
        symtab += SYM.pack(len(strtab), (STB_GLOBAL << 4) | kind, 0, shndx, va & ((1 << 64) - 1), sizes[name])
        strtab += name.encode() + b"\0"
    return bytes(symtab), bytes(strtab)


def _headers(end: int, shoff: int, shnum: int) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1, ELFOSABI_FREEBSD]) + bytes(8)
    phdrs = [
        PHDR.pack(PT_INTERP, PF_R, INTERP_OFFSET, KERNSTART + INTERP_OFFSET, KERNLOAD + INTERP_OFFSET,
                  len(INTERP), len(INTERP), 1),
        PHDR.pack(PT_LOAD, PF_R | PF_W | PF_X, 0, KERNSTART, KERNLOAD, end - KERNSTART, end - KERNSTART, 0x200000),
    ]
    ehdr = EHDR.pack(ident, ET_EXEC, EM_X86_64, 1, KERNSTART + PAGE_SIZE, EHDR.size, shoff, 0,
                     EHDR.size, PHDR.size, len(phdrs), SHDR.size, shnum, shnum - 1)
    return ehdr + b"".join(phdrs)


def _install_headers(forged, end: int, shoff: int, shnum: int) -> None:
    m = forged.machine
    m.write_kva(KERNSTART, _headers(end, shoff, shnum))
    m.write_kva(KERNSTART + INTERP_OFFSET, INTERP)


def kernel_elf_bytes(forged) -> bytes:
    """The kernel file (``/boot/kernel/kernel`` with its symbol table, without DWARF)."""
    end = image_end(forged)
    symtab, strtab = symbol_tables(forged, end)
    image_len = end - KERNSTART
    sym_off = image_len
    str_off = sym_off + len(symtab)
    shstr_off = str_off + len(strtab)
    shoff = _round_up(shstr_off + len(_SHSTRTAB), 8)
    sections: List[bytes] = [
        bytes(SHDR.size),
        SHDR.pack(_name_off(b".text"), SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, KERNSTART + PAGE_SIZE, PAGE_SIZE,
                  _DATA_START - KERNSTART - PAGE_SIZE, 0, 0, 16, 0),
        SHDR.pack(_name_off(b".data"), SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, _DATA_START, _DATA_START - KERNSTART,
                  end - _DATA_START, 0, 0, 64, 0),
        SHDR.pack(_name_off(b".symtab"), SHT_SYMTAB, 0, 0, sym_off, len(symtab), 4, 1, 8, SYM.size),
        SHDR.pack(_name_off(b".strtab"), SHT_STRTAB, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        SHDR.pack(_name_off(b".shstrtab"), SHT_STRTAB, 0, 0, shstr_off, len(_SHSTRTAB), 0, 0, 1, 0),
    ]
    _install_headers(forged, end, shoff, len(sections))
    image = forged.machine.read_kva(KERNSTART, image_len)
    out = bytearray(image)
    out += symtab + strtab + _SHSTRTAB
    out += bytes(shoff - len(out))
    out += b"".join(sections)
    return bytes(out)


def write_kernel_file(forged, path: str) -> str:
    """Write :func:`kernel_elf_bytes` to ``path``; returns the path."""
    data = kernel_elf_bytes(forged)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def place_loader_symtab(forged) -> Tuple[int, int]:
    """Copy the symbol tables behind the image as loader(8) does; returns ``(ssym, esym)``."""
    end = image_end(forged)
    symtab, strtab = symbol_tables(forged, end)
    blob, _str_off = loader_layout(symtab, strtab)
    ssym = _round_up(end, 8)
    if ssym + len(blob) > KERNSTART + forged.machine.KERNEL_IMAGE_SIZE:
        raise MemoryError("forge: the symbol tables do not fit behind the kernel image")
    kernel_elf_bytes(forged)  # the same ELF and program headers as the kernel file
    forged.machine.write_kva(ssym, blob)
    return ssym, ssym + len(blob)
