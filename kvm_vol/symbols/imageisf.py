"""A kernel ISF from the image alone: the loader's symbol table in memory + a type pack.

When neither ``kernel.debug`` nor ``/boot/kernel/kernel`` is at hand, the
dump itself usually holds the kernel's symbol table: ``loader(8)`` copies it
behind the kernel image and the kernel keeps it for DDB and the kernel
linker (:mod:`kvm_vol.symbols.memsyms`).  With it, the kernel's banner and
``osreldate`` are read from memory, the release's type pack is chosen and
checked against the kernel's self-describing offsets exactly as for a kernel
file (:mod:`kvm_vol.symbols.packisf`).

This module reads memory through a ``read_kva(va, length) -> bytes | None``
callable, so it serves both ``kvm-vol isf --image`` (through
:mod:`kvm_vol.formats`) and the Volatility kernel stacker.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from kvm_vol.core.amd64 import KERNSTART, canonical
from kvm_vol.symbols import layoutcheck, memsyms, packisf

__all__ = ["BANNER_MAX", "find_kernphys", "isf_from_memory", "kernel_reader", "reader_for_dump"]

ReadKva = Callable[[int, int], Optional[bytes]]
#: Longest banner read from ``version`` (newvers.sh builds ~200 bytes).
BANNER_MAX = 1024
_NBPDR = 1 << 21
#: How far below a banner the kernel's first page may lie (the image is far smaller).
_KERNEL_SPAN = 256 << 20
_ELF_KERNEL_IDENT = b"\x7fELF\x02\x01\x01"


def kernel_reader(read_phys: Callable[[int, int], Optional[bytes]], kernphys: int) -> ReadKva:
    """``read_kva`` for the kernel image mapping: ``pa = kernphys + (va - KERNSTART)``.

    The loader places the image and the symbol tables behind it in one
    physically contiguous run (also when a UEFI loader stages the kernel
    elsewhere), and the kernel maps that run linearly from KERNSTART.
    """

    def read_kva(va: int, length: int) -> Optional[bytes]:
        va = canonical(va)
        if va < KERNSTART or length < 0:
            return None
        return read_phys(kernphys + (va - KERNSTART), length)

    return read_kva


def _looks_like_kernel_header(head: Optional[bytes]) -> bool:
    return bool(head) and len(head) >= 20 and head[:7] == _ELF_KERNEL_IDENT and head[16:20] == b"\x02\x00\x3e\x00"


def find_kernphys(read_phys: Callable[[int, int], Optional[bytes]], candidates) -> Optional[int]:
    """The first 2 MiB-aligned physical address in ``candidates`` holding an amd64 ELF ET_EXEC header."""
    for pa in candidates:
        if pa % _NBPDR == 0 and _looks_like_kernel_header(read_phys(pa, 64)):
            return pa
    return None


def candidates_below(banner_pa: int):
    """2 MiB-aligned addresses from the banner's page down, as far as a kernel image reaches."""
    top = banner_pa - banner_pa % _NBPDR
    return range(top, max(-1, top - _KERNEL_SPAN), -_NBPDR)


def _read_banner(read_kva: ReadKva, va: int) -> bytes:
    for length in (BANNER_MAX, 256, 64):  # the string may end near an unreadable page
        data = read_kva(va, length)
        if data is not None:
            text = data.split(b"\0", 1)[0]
            if text.startswith(b"FreeBSD "):
                return text
            break
    raise memsyms.NoSymtab(f"the symbol table's 'version' ({va:#x}) does not hold a FreeBSD banner; "
                           "the table found is not this kernel's")


def isf_from_memory(read_kva: ReadKva, types: str = packisf.AUTO,
                    source: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, Any], str, bytes]:
    """``(ISF, pack, banner)`` from the kernel in memory.

    Raises :class:`~kvm_vol.symbols.memsyms.NoSymtab` when the image holds
    no loader symbol table, :class:`~kvm_vol.symbols.layoutcheck.LayoutMismatch`
    when the pack disagrees with the kernel, :class:`~kvm_vol.errors.SymbolError` otherwise.
    """
    table = memsyms.find_loader_symtab(read_kva, KERNSTART)
    symbols = table.symbols
    if "version" not in symbols:
        raise memsyms.NoSymtab(f"the symbol table at {table.ssym:#x} has no 'version' symbol")
    banner = _read_banner(read_kva, symbols["version"])

    def read_int(name: str) -> Optional[int]:
        return layoutcheck.read_int_le(read_kva(symbols[name], 4)) if name in symbols else None

    pack = packisf.pick_pack(types, read_int("osreldate"), "amd64", banner)
    prov = {"kind": "kernel-memory", "ssym": table.ssym, "esym": table.esym, **dict(source or {})}
    isf = packisf.make_pack_isf(symbols, banner, pack, read_int, prov)
    return isf, pack, banner


def reader_for_dump(dump) -> ReadKva:
    """``read_kva`` for a parsed :mod:`kvm_vol.formats` dump (minidump, ELF full dump or raw image)."""
    from kvm_vol.errors import KvmVolError

    if dump.kind == "minidump":
        translator = dump.translator()

        def read_md(va: int, length: int) -> Optional[bytes]:
            try:
                return translator.read(canonical(va), length)
            except KvmVolError:
                return None

        return read_md

    def read_phys(pa: int, length: int) -> Optional[bytes]:
        try:
            return dump.read_phys(pa, length)
        except KvmVolError:
            return None

    end = max((pa + length for pa, _off, length in dump.phys_runs()), default=0)
    kernphys = find_kernphys(read_phys, range(0, end, _NBPDR))
    if kernphys is None:
        raise memsyms.NoSymtab("no amd64 kernel ELF header at any 2 MiB-aligned physical address")
    return kernel_reader(read_phys, kernphys)

