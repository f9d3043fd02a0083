"""``kvm-vol isf``: make a Volatility kernel ISF from a FreeBSD kernel.

    kvm-vol isf --elf kernel.debug [--elf-symbols kernel] [-o FILE]

Types and variables come from the DWARF of ``--elf``; symbol addresses from
the ELF symbol table of ``--elf-symbols`` (default: ``--elf``); the banner
from the ``version`` string of the same file as the symbols, because a
``kernel.debug`` split off with ``objcopy --only-keep-debug`` has no data
contents.  This does what ``dwarf2json linux --elf ... --elf-symbols ...``
does with dwarf2json PR #64 applied, without Go or an unmerged patch.

The ISF is written to ``-o FILE`` or, by default, to
``<user symbols dir>/freebsd/<name from the banner>.json.xz``, where
Volatility (with kvm-vol's glue) and ``kvm-vol`` find it.
"""

import argparse
import hashlib
import re
from pathlib import Path

from kvm_vol.paths import user_symbols_dir
from kvm_vol.symbols import elfsyms
from kvm_vol.symbols.dwarf2isf import dwarf_to_isf
from kvm_vol.symbols.isf import make_kernel_isf, write_isf

__all__ = ["add_arguments", "default_output", "run"]

#: Longest file-name stem taken from a banner, before the hash suffix.
_STEM_MAX = 96


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``isf`` sub-command's options on ``parser``."""
    parser.add_argument("--elf", required=True, metavar="KERNEL_DEBUG", help="kernel ELF with DWARF (kernel.debug, or a kernel built with debug info)")
    parser.add_argument(
        "--elf-symbols",
        metavar="KERNEL",
        help="kernel ELF whose symbol table and 'version' string to use (default: --elf)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="output ISF (.json, .json.xz or .json.gz; default: the user symbol directory)")


def default_output(banner: bytes) -> Path:
    """``<user symbols dir>/freebsd/<safe stem>-<hash>.json.xz`` for ``banner``.

    The stem is the banner's first line with every run of characters other
    than letters, digits, ``.``, ``_`` and ``-`` turned into ``_``; the
    first 8 hex digits of the banner's SHA-256 keep kernels whose first
    lines agree (same release, different build host or path) apart.
    """
    first = banner.split(b"\n", 1)[0].decode("ascii", "replace")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", first).strip("._-")[:_STEM_MAX].rstrip("._-") or "kernel"
    digest = hashlib.sha256(banner).hexdigest()[:8]
    return user_symbols_dir() / "freebsd" / f"{stem}-{digest}.json.xz"


def _file_identity(path: Path) -> dict:
    """Name and SHA-256 of a file, for the ISF's provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "sha256": digest.hexdigest()}


def run(args: argparse.Namespace) -> int:
    """Build and write the ISF; print its path and the banner.  Returns 0."""
    symbols_file = args.elf_symbols or args.elf
    banner = elfsyms.read_version(symbols_file)
    symbols = elfsyms.read_symbols(symbols_file)
    types = dwarf_to_isf(args.elf)
    isf = make_kernel_isf(types, symbols, banner)
    isf["metadata"]["producer"]["kvm_vol"]["symbols_source"] = _file_identity(Path(symbols_file))
    output = Path(args.output) if args.output else default_output(banner)
    write_isf(isf, output)
    print(output)
    print(banner.decode("ascii", "replace").rstrip("\n"))
    return 0
