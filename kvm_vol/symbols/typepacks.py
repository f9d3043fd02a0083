"""The shipped type packs: kernel structure layouts from FreeBSD release headers.

A type pack (``freebsd-<major>.<minor>-<arch>.json.xz`` in
:func:`kvm_vol.paths.type_packs_dir`) is an ISF holding the types of one
FreeBSD release on one architecture, plus the kernel globals kvm-vol uses
with their types at address 0.  It is built by ``symbols/regenerate.py`` from
``symbols/types.c``.  Combined with a kernel's ELF symbol table
(:func:`kvm_vol.symbols.isf.make_kernel_isf`) it stands in for DWARF when
only a stripped kernel is available; on its own it is never a kernel ISF
(no addresses, no banner), and :func:`load` refuses files that are not
marked as packs.

Structure layouts follow the kernel ABI of a stable branch, which FreeBSD
keeps fixed across minor releases, so :func:`choose` accepts the closest
release of the same major version but never crosses majors.
"""

import functools
import re
from typing import Any, Dict, List, Optional, Tuple

from kvm_vol.errors import SymbolError
from kvm_vol.paths import type_packs_dir
from kvm_vol.symbols.isf import KIND_TYPE_PACK, isf_kind, load_isf

__all__ = ["ARCH_ALIASES", "available", "choose", "freebsd_version", "load", "pack_name", "parse_name"]

_SUFFIX = ".json.xz"
_NAME = re.compile(r"^freebsd-(\d+)\.(\d+)-([a-z0-9_]+)$")

#: Spellings accepted by :func:`choose` -> FreeBSD's MACHINE_ARCH-style names used in pack names.
ARCH_ALIASES = {
    "amd64": "amd64",
    "x86_64": "amd64",
    "i386": "i386",
    "x86": "i386",
    "i686": "i386",
    "arm64": "arm64",
    "aarch64": "arm64",
}


def pack_name(major: int, minor: int, arch: str) -> str:
    """``freebsd-<major>.<minor>-<arch>``, the name (and file stem) of a pack."""
    return f"freebsd-{major}.{minor}-{arch}"


def parse_name(name: str) -> Tuple[int, int, str]:
    """``(major, minor, arch)`` of a pack name; :class:`SymbolError` if malformed."""
    m = _NAME.match(name)
    if not m:
        raise SymbolError(f"{name!r} is not a type pack name (freebsd-<major>.<minor>-<arch>)")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def freebsd_version(major: int, minor: int) -> int:
    """``__FreeBSD_version`` of a minor release: ``MMmm000`` (14.3-RELEASE is 1403000).

    x.0 releases carry a value from their branch instead (15.0-RELEASE is
    1500068); for them this gives the branch base ``MM00000``, which still
    orders correctly against every later release of the major.
    """
    return major * 100000 + minor * 1000


def available() -> List[str]:
    """Names of the installed packs, sorted (e.g. ``"freebsd-14.3-amd64"``)."""
    directory = type_packs_dir()
    if not directory.is_dir():
        return []
    names = [p.name[: -len(_SUFFIX)] for p in directory.iterdir() if p.name.endswith(_SUFFIX)]
    return sorted(n for n in names if _NAME.match(n))


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Dict[str, Any]:
    parse_name(name)
    path = type_packs_dir() / (name + _SUFFIX)
    if not path.is_file():
        raise SymbolError(f"no type pack {name!r} in {type_packs_dir()} (available: {', '.join(available()) or 'none'})")
    isf = load_isf(path)
    if isf_kind(isf) != KIND_TYPE_PACK:
        raise SymbolError(f"{path}: not a kvm-vol type pack")
    return isf


def load(name: str) -> Dict[str, Any]:
    """The pack's ISF dictionary, loaded once per process.

    The same object is returned on every call: treat it as read-only
    (:func:`kvm_vol.symbols.isf.make_kernel_isf` copies what it uses).
    """
    return _load(name)


def choose(osreldate: int, arch: str) -> str:
    """The pack for a kernel with ``osreldate`` (``__FreeBSD_version``) on ``arch``.

    Picks the release of the same major version closest to the kernel's
    (``osreldate // 1000 % 100`` is the kernel's minor); on a tie the newer
    pack wins.  Raises :class:`SymbolError` when no pack of that major
    version exists for the architecture: layouts change between majors, and
    a wrong layout would produce plausible garbage.
    """
    canonical: Optional[str] = ARCH_ALIASES.get(arch.lower())
    if canonical is None:
        raise SymbolError(f"unknown architecture {arch!r} (known: {', '.join(sorted(set(ARCH_ALIASES.values())))})")
    major, minor = osreldate // 100000, osreldate // 1000 % 100
    candidates = []
    for name in available():
        p_major, p_minor, p_arch = parse_name(name)
        if p_arch == canonical and p_major == major:
            candidates.append((abs(p_minor - minor), -p_minor, name))
    if not candidates:
        have = ", ".join(n for n in available() if parse_name(n)[2] == canonical) or "none"
        raise SymbolError(f"no type pack for FreeBSD {major}.x on {canonical} (osreldate {osreldate}; packs for {canonical}: {have})")
    return min(candidates)[2]
