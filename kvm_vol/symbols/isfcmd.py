"""``kvm-vol isf``: make a Volatility kernel ISF from a FreeBSD kernel.

    kvm-vol isf --elf kernel.debug [--elf-symbols kernel] [-o FILE]
    kvm-vol isf --elf-symbols kernel [--types auto|freebsd-15.0-amd64] [-o FILE]
    kvm-vol isf --image vmcore [--types auto|freebsd-15.0-amd64] [-o FILE]

Types and variables come from the DWARF of ``--elf``; symbol addresses from
the ELF symbol table of ``--elf-symbols`` (default: ``--elf``); the banner
from the ``version`` string of the same file as the symbols, because a
``kernel.debug`` split off with ``objcopy --only-keep-debug`` has no data
contents.  This does what ``dwarf2json linux --elf ... --elf-symbols ...``
does with dwarf2json PR #64 applied, without Go or an unmerged patch.

Without ``--elf`` (no ``kernel.debug`` at hand) the types come from a shipped
type pack instead: ``--types auto`` picks it from the kernel's ``osreldate``
and machine, and the pack is used only if its offsets agree with the
kernel's self-describing symbols (:mod:`kvm_vol.symbols.packisf`).  With
``--image`` the symbols come from the copy of the symbol table the loader
left in the dump (:mod:`kvm_vol.symbols.imageisf`).

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
from kvm_vol.symbols.isf import banner_of, make_kernel_isf, write_isf

__all__ = ["add_arguments", "default_output", "run"]

#: Longest file-name stem taken from a banner, before the hash suffix.
_STEM_MAX = 96


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``isf`` sub-command's options on ``parser``."""
    parser.add_argument("--elf", metavar="KERNEL_DEBUG", help="kernel ELF with DWARF (kernel.debug, or a kernel built with debug info)")
    parser.add_argument(
        "--elf-symbols",
        metavar="KERNEL",
        help="kernel ELF whose symbol table and 'version' string to use (default: --elf)",
    )
    parser.add_argument(
        "--image",
        metavar="DUMP",
        help="take the kernel's symbols from the loader's copy in this dump (vmcore, full dump, raw image)",
    )
    parser.add_argument(
        "--types",
        metavar="PACK",
        help="without --elf: the type pack to use, 'auto' (default: chosen from the kernel's osreldate) "
             "or a name such as freebsd-15.0-amd64",
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


def file_identity(path: Path) -> dict:
    """Name and SHA-256 of a file, for the ISF's provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "sha256": digest.hexdigest()}


def run(args: argparse.Namespace) -> int:
    """Build and write the ISF; print its path and the banner.  Returns 0."""
    from kvm_vol.errors import SymbolError

    if getattr(args, "image", None):
        if args.elf or args.elf_symbols:
            raise SymbolError("--image takes the symbols from the dump; do not combine it with --elf/--elf-symbols")
        return _run_with_pack(args)
    if not args.elf:
        if not args.elf_symbols:
            raise SymbolError("give --elf KERNEL_DEBUG (DWARF types), --elf-symbols KERNEL or --image DUMP "
                              "(types from a type pack)")
        return _run_with_pack(args)
    if args.types:
        raise SymbolError("--types applies only without --elf (the DWARF of --elf already gives the types)")
    symbols_file = args.elf_symbols or args.elf
    banner = elfsyms.read_version(symbols_file)
    symbols = elfsyms.read_symbols(symbols_file)
    types = dwarf_to_isf(args.elf)
    isf = make_kernel_isf(types, symbols, banner)
    isf["metadata"]["producer"]["kvm_vol"]["symbols_source"] = file_identity(Path(symbols_file))
    output = Path(args.output) if args.output else default_output(banner)
    write_isf(isf, output)
    print(output)
    print(banner.decode("ascii", "replace").rstrip("\n"))
    return 0


def _run_with_pack(args: argparse.Namespace) -> int:
    """``--elf-symbols`` alone or ``--image``: kernel symbols + the (checked) release type pack."""
    from kvm_vol.symbols import packisf

    if getattr(args, "image", None):
        from kvm_vol import formats
        from kvm_vol.symbols import imageisf

        with formats.open_dump(args.image) as dump:
            source = {"name": Path(args.image).name, "dump_kind": dump.kind}
            isf, pack, _banner = imageisf.isf_from_memory(imageisf.reader_for_dump(dump),
                                                          args.types or packisf.AUTO, source)
    else:
        isf, pack = packisf.from_kernel_file(args.elf_symbols, args.types or packisf.AUTO)
    banner = banner_of(isf).rstrip(b"\0")
    output = Path(args.output) if args.output else default_output(banner)
    write_isf(isf, output)
    print(output)
    print(banner.decode("ascii", "replace").rstrip("\n"))
    print(f"types: {pack} (checked against {isf['metadata']['producer']['kvm_vol']['layout_checked']} "
          "self-describing kernel symbols)")
    return 0
