"""``kvm-vol info IMAGE [--json]``: what a dump file is and how it is laid out.

Prints the format and version, the section offsets and sizes, kernbase and
the direct-map window, dump_avail, the number of dumped pages, the
kerneldumpheader if there is one, and any non-fatal problems found.  Offsets
are those of the file named on the command line, ready for a hex editor.
Unreadable input raises :class:`kvm_vol.errors.DumpFormatError`, which the
CLI prints on one line.
"""

import argparse
import datetime
import json
from typing import List

from kvm_vol.core import engine
from kvm_vol.core.amd64 import PAGE_SIZE
from kvm_vol.formats import open_dump

__all__ = ["add_arguments", "run", "format_text"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE",
                        help="vmcore (minidump), ELF full dump, raw image, or a dump behind a kerneldumpheader")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON (integers, not hex strings)")


def run(args: argparse.Namespace) -> int:
    with open_dump(args.image) as dump:
        info = dump.info()
    info["translation_core"] = engine.implementation()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


def _size(n: int) -> str:
    return f"{n:#x} ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:#x}"


def _ranges(ranges) -> str:
    return " ".join(f"[{s:#x}, {e:#x})" for s, e in ranges)


def format_text(info: dict) -> str:
    """Human-readable rendering of :meth:`kvm_vol.formats.Dump.info`."""
    fmt = info["format"]
    lines: List[str] = [info["path"]]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<18}{value}")

    if fmt == "minidump":
        row("format", f"{info['arch']} minidump, version {info['version']}")
    elif fmt == "elf":
        row("format", f"{info['arch']} ELF full dump (EI_OSABI {info['osabi']} {info['osabi_name']})")
    else:
        row("format", "raw physical memory image")
    row("file size", _size(info["file_size"]))
    kdh = info["kerneldumpheader"]
    if kdh is None:
        row("kerneldumpheader", "none")
    else:
        row("kerneldumpheader", f"{kdh['magic']!r}, dump at offset {info['dump_offset']:#x}")
        when = datetime.datetime.fromtimestamp(kdh["dumptime"], datetime.timezone.utc).isoformat()
        for label, value in (
            ("  architecture", f"{kdh['architecture']} (architectureversion {kdh['architectureversion']})"),
            ("  version", str(kdh["version"])),
            ("  dumplength", _size(kdh["dumplength"])),
            ("  dumpextent", _size(kdh["dumpextent"])),
            ("  dumptime", f"{kdh['dumptime']} ({when})"),
            ("  blocksize", str(kdh["blocksize"])),
            ("  dumpkeysize", str(kdh["dumpkeysize"])),
            ("  compression", kdh["compression_name"]),
            ("  hostname", kdh["hostname"]),
            ("  versionstring", kdh["versionstring"].strip()),
            ("  panicstring", kdh["panicstring"]),
            ("  parity", "ok" if kdh["parity_ok"] else f"BAD (stored {kdh['parity']:#010x})"),
        ):
            row(label, value)
    if fmt == "minidump":
        entry = "PTEs" if info["version"] == 1 else "PDEs"
        row("kernbase", f"{info['kernbase']:#x} ({info['pmap_entries']} pmap entries, "
                        f"{entry} covering {info['pmap_entry_span']:#x} bytes each)")
        row("direct map", _ranges([info["dmap"]]))
        row("sections", f"{'offset':<14}{'size':<14}length")
        for name, sec in info["sections"].items():
            row(f"  {name}", f"{sec['offset']:<#14x}{sec['size']:<#14x}{sec['length']:#x}")
        avail = info["dump_avail"]
        row("dump_avail", "none (bit = page frame number)" if avail is None else _ranges(avail))
        missing = info["dumped_pages"] - info["pages_in_file"]
        where = "all in the file" if not missing else f"{missing} missing from the file"
        row("dumped pages", f"{info['dumped_pages']} ({info['dumped_pages'] * PAGE_SIZE / 2**20:.1f} MiB), {where}")
    elif fmt == "elf":
        row("segments", f"{len(info['segments'])} PT_LOAD of {info['phnum']} program headers")
        for seg in info["segments"]:
            row("", f"PA [{seg['paddr']:#x}, {seg['paddr'] + seg['memsz']:#x}) at offset {seg['offset']:#x}")
    row("physical runs", f"{info['phys_runs']} covering {_size(info['dumped_bytes'])}")
    if "translation_core" in info:
        row("translation core", info["translation_core"])
    problems = info["problems"]
    row("problems", "none" if not problems else str(len(problems)))
    for p in problems:
        row("", f"{p['field']} at offset {p['offset']:#x}: {p['message']}")
    return "\n".join(lines)
