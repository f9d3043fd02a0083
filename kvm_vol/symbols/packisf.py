"""Kernel ISFs without DWARF: a kernel's symbol table + a release type pack.

Most FreeBSD machines have ``/boot/kernel/kernel`` (which keeps its ELF
symbol table) but not ``kernel.debug``.  The symbol table gives every
address; the types come from the shipped type pack of the kernel's release
(:mod:`kvm_vol.symbols.typepacks`), chosen from the kernel's ``osreldate``
(``__FreeBSD_version``) and machine.  Before the pair is trusted, the pack's
offsets are compared with the kernel's self-describing symbols
(:mod:`kvm_vol.symbols.layoutcheck`): a kernel built with different options
or headers is refused, never read with the wrong layout.

The symbols can come from the kernel file (:func:`from_kernel_file`) or from
the copy of the symbol table the loader left in kernel memory
(:mod:`kvm_vol.symbols.memsyms`); both end in :func:`make_pack_isf`.
"""

import re
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from kvm_vol.errors import SymbolError
from kvm_vol.symbols import elfsyms, layoutcheck, typepacks
from kvm_vol.symbols.isf import make_kernel_isf

__all__ = ["AUTO", "ELF_MACHINES", "from_kernel_file", "make_pack_isf", "osreldate_from_banner", "pick_pack"]

#: ``--types`` value that picks the pack from the kernel's osreldate and machine.
AUTO = "auto"

#: ELF ``e_machine`` -> FreeBSD MACHINE_ARCH as used in pack names.
ELF_MACHINES = {"EM_X86_64": "amd64", "EM_386": "i386", "EM_AARCH64": "arm64"}

_BANNER_RELEASE = re.compile(rb"^FreeBSD (\d+)\.(\d+)-")


def osreldate_from_banner(banner: bytes) -> Optional[int]:
    """``MMmm000`` from a banner's ``FreeBSD MM.mm-...``, or None (for kernels without ``osreldate``)."""
    m = _BANNER_RELEASE.match(banner)
    return typepacks.freebsd_version(int(m.group(1)), int(m.group(2))) if m else None


def pick_pack(spec: str, osreldate: Optional[int], arch: str, banner: bytes) -> str:
    """The pack to use: ``spec`` itself, or for ``auto`` the one :func:`typepacks.choose` picks.

    A pack named explicitly must at least be of the kernel's architecture;
    its release is left to the layout check, which is the real arbiter.
    """
    if spec != AUTO:
        _major, _minor, pack_arch = typepacks.parse_name(spec)
        if pack_arch != arch:
            raise SymbolError(f"type pack {spec} is for {pack_arch}, but the kernel is {arch}")
        typepacks.load(spec)  # fail now, naming the available packs, if it does not exist
        return spec
    release = osreldate if osreldate else osreldate_from_banner(banner)
    if release is None:
        raise SymbolError("cannot tell the kernel's release (no 'osreldate' symbol and the banner does "
                          "not start with 'FreeBSD X.Y-'); name a pack with --types")
    return typepacks.choose(release, arch)


def make_pack_isf(symbols: Mapping[str, int], banner: bytes, pack: str,
                  read_int: Callable[[str], Optional[int]], source: Mapping[str, Any]) -> Dict[str, Any]:
    """A kernel ISF from ``symbols`` and the types of ``pack``, after checking the layouts.

    ``read_int(symbol)`` reads one of the kernel's self-describing ``int``
    symbols (None when absent).  Raises
    :class:`~kvm_vol.symbols.layoutcheck.LayoutMismatch` when the pack and
    the kernel disagree, and :class:`SymbolError` when the kernel has none of
    those symbols (nothing would vouch for the pack).
    """
    types = typepacks.load(pack)
    expected = layoutcheck.expectations(types)
    checked = layoutcheck.require_match(f"the layouts of type pack {pack}", expected, read_int)
    if checked == 0:
        raise SymbolError(f"the kernel has none of the self-describing symbols ({', '.join(layoutcheck.SYMBOLS)}) "
                          f"that vouch for a type pack; use its kernel.debug instead")
    isf = make_kernel_isf(types, symbols, banner)
    prov = isf["metadata"]["producer"]["kvm_vol"]
    prov["type_pack"] = pack
    prov["layout_checked"] = checked
    prov["symbols_source"] = dict(source)
    return isf


def _kernel_file_machine(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            machine = ELFFile(fh)["e_machine"]
    except OSError as exc:
        raise SymbolError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    except (ELFError, ELFParseError) as exc:
        raise SymbolError(f"{path}: not an ELF file: {exc}") from exc
    arch = ELF_MACHINES.get(machine)
    if arch is None:
        raise SymbolError(f"{path}: machine {machine} has no FreeBSD type packs (amd64, i386, arm64)")
    return arch


def _file_int(path: Path, symbols: Mapping[str, int]) -> Callable[[str], Optional[int]]:
    """``read_int`` over the initialised data of a kernel file (const ints live in .rodata)."""

    def read_int(name: str) -> Optional[int]:
        if name not in symbols:
            return None
        try:
            return layoutcheck.read_int_le(elfsyms.read_symbol_bytes(path, name)[:4])
        except SymbolError:
            return None

    return read_int


def from_kernel_file(path, types: str = AUTO) -> Tuple[Dict[str, Any], str]:
    """``(ISF, pack name)`` for the kernel ELF at ``path`` (needs its ``.symtab``, not DWARF)."""
    p = Path(path)
    arch = _kernel_file_machine(p)
    banner = elfsyms.read_version(p)
    symbols = elfsyms.read_symbols(p)
    read_int = _file_int(p, symbols)
    osreldate = read_int("osreldate")
    pack = pick_pack(types, osreldate, arch, banner)
    from kvm_vol.symbols.isfcmd import file_identity  # noqa: E402 (isfcmd imports this module lazily)

    isf = make_pack_isf(symbols, banner, pack, read_int, {"kind": "kernel-file", **file_identity(p)})
    return isf, pack

