"""``kvm-vol info IMAGE [--json]``: what a dump file is and how it is laid out.

Prints the format and version, the section offsets and sizes, kernbase and
the direct-map window, dump_avail, the number of dumped pages, the
kerneldumpheader if there is one, and any non-fatal problems found.  Offsets
are those of the file named on the command line, ready for a hex editor.
Unreadable input raises :class:`kvm_vol.errors.DumpFormatError`, which the
CLI prints on one line.
"""

import argparse
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
    from kvm_vol.formats import textdump

    td = textdump.probe_file(args.image)
    if td is not None:  # not memory, but worth describing rather than refusing
        with td:
            info = td.info()
        print(json.dumps(info, indent=2) if args.json else format_textdump(info))
        return 0
    encrypted = _encrypted_info(args.image)
    if encrypted is not None:  # the container is fine, only its contents are out of reach
        print(json.dumps(encrypted, indent=2) if args.json else format_encrypted(encrypted))
        return 0
    with open_dump(args.image) as dump:
        info = dump.info()
        info["decompressed_from"] = dump.decompressed_from
    info["translation_core"] = engine.implementation()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


def _size(n: int) -> str:
    return f"{n:#x} ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:#x}"


def _ranges(ranges) -> str:
    return " ".join(f"[{s:#x}, {e:#x})" for s, e in ranges)


def format_textdump(info: dict) -> str:
    """Human-readable rendering of :meth:`kvm_vol.formats.textdump.TextDump.info`."""
    from kvm_vol.formats.textdump import format_time

    lines: List[str] = [info["path"]]
    form = ("tar written backwards behind a kerneldumpheader (a dump-device copy)" if info["form"] == "device"
            else "ustar archive (as savecore saves it)")
    lines.append(f"  {'format':<18}FreeBSD textdump (ddb output, not memory): {form}")
    lines.append(f"  {'file size':<18}{_size(info['file_size'])}")
    if info["kerneldumpheader"] is not None:
        lines.append(f"  {'kerneldumpheader':<18}{info['kerneldumpheader']['magic']!r} at offset "
                     f"{info['kerneldumpheader_offset']:#x}")
        lines.extend(_kdh_rows(info["kerneldumpheader"]))
    lines.append(f"  {'archive':<18}{_size(info['archive_length'])}, {len(info['members'])} files")
    for m in info["members"]:
        name = m["name"] if m["name"].isprintable() else repr(m["name"])
        lines.append(f"  {'':<18}{m['size']:>9}  {format_time(m['mtime'])}  {name}")
    lines.append(f"  {'problems':<18}{len(info['problems']) or 'none'}")
    lines.extend(f"  {'':<18}{p}" for p in info["problems"])
    lines.append(f"  {'':<18}list or extract with 'kvm-vol textdump list|extract {info['path']}'")
    return "\n".join(lines)


def _encrypted_info(path: str):
    """Facts about an encrypted dump (``dumpon -k``), or None if ``path`` is not one."""
    from kvm_vol.formats import _find_leader, read_dump_key
    from kvm_vol.formats.source import FileSource

    with FileSource.open(path) as source:
        found = _find_leader(source) if source.size else None
        if found is None or found[0].kind != "kernel" or not found[0].dumpkeysize:
            return None
        kdh, leader = found
        key = read_dump_key(source, kdh, leader)
        return {"path": path, "format": "encrypted", "file_size": source.size, "kerneldumpheader_offset": leader,
                "kerneldumpheader": kdh.to_dict(), "key_offset": leader + kdh.blocksize,
                "cipher": None if key is None else key.cipher,
                "encrypted_key_size": None if key is None else key.encryptedkeysize,
                "iv": None if key is None else key.iv.hex(), "dump_offset": leader + kdh.dump_offset}


def format_encrypted(info: dict) -> str:
    """Human-readable rendering of :func:`_encrypted_info`."""
    kdh = info["kerneldumpheader"]
    what = (f"{info['cipher']}, {info['encrypted_key_size']}-byte encrypted key" if info["cipher"]
            else "key section too short to name the cipher")
    lines = [info["path"],
             f"  {'format':<18}encrypted kernel dump (dumpon -k): {what}; memory unreadable without the private key",
             f"  {'file size':<18}{_size(info['file_size'])}",
             f"  {'kerneldumpheader':<18}{kdh['magic']!r} at offset {info['kerneldumpheader_offset']:#x}"]
    lines.extend(_kdh_rows(kdh))
    lines.append(f"  {'key section':<18}{kdh['dumpkeysize']} bytes at offset {info['key_offset']:#x}"
                 + (f", IV {info['iv']}" if info["iv"] else ""))
    lines.append(f"  {'dump':<18}{_size(kdh['dumplength'])} of ciphertext at offset {info['dump_offset']:#x}")
    lines.append(f"  {'':<18}decrypt with decryptcore(8) -p PRIVATE.pem -k key.N -e {info['path']} -c vmcore.N "
                 "(key.N is the key section, as savecore saves it)")
    return "\n".join(lines)


def _kdh_rows(kdh: dict) -> List[str]:
    """The kerneldumpheader's fields, one indented row each."""
    from kvm_vol.freebsd import utc_time

    stamp = utc_time(kdh["dumptime"])
    when = "out of range" if stamp is None else stamp.isoformat()
    rows = (
        ("  architecture", f"{kdh['architecture']} (architectureversion {kdh['architectureversion']})"),
        ("  version", str(kdh["version"])),
        ("  dumplength", _size(kdh["dumplength"])),
        ("  dumpextent", _size(kdh["dumpextent"])),
        ("  dumptime", f"{kdh['dumptime']} ({when})"),
        ("  blocksize", str(kdh["blocksize"])),
        ("  dumpkeysize", str(kdh["dumpkeysize"])),
        ("  compression", kdh["compression_name"]),
        ("  hostname", kdh["hostname"]),
        ("  versionstring", kdh["versionstring"].strip().replace("\n", " | ")),
        ("  panicstring", kdh["panicstring"]),
        ("  parity", "ok" if kdh["parity_ok"] else f"BAD (stored {kdh['parity']:#010x})"),
    )
    return [f"  {label:<18}{value}" for label, value in rows]


def format_text(info: dict) -> str:
    """Human-readable rendering of :meth:`kvm_vol.formats.Dump.info`."""
    fmt = info["format"]
    comp = info.get("decompressed_from")
    lines: List[str] = [comp["path"] if comp else info["path"]]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<18}{value}")

    if fmt == "minidump":
        row("format", f"{info['arch']} minidump, version {info['version']}")
    elif fmt == "elf":
        row("format", f"{info['arch']} ELF full dump (EI_OSABI {info['osabi']} {info['osabi_name']})")
    else:
        row("format", "raw physical memory image")
    if comp:
        where = "" if comp["length"] is None else f" of {comp['length']:#x} bytes at offset {comp['offset']:#x}"
        row("compressed", f"{comp['method']} stream{where}; offsets below are those of the decompressed "
                          f"copy {comp['copy']}")
        row("decompressed size", _size(info["file_size"]))
    else:
        row("file size", _size(info["file_size"]))
    kdh = info["kerneldumpheader"]
    if kdh is None:
        row("kerneldumpheader", "none")
    elif comp and comp.get("kdh_offset") is not None:
        row("kerneldumpheader", f"{kdh['magic']!r} at offset {comp['kdh_offset']:#x} of {comp['path']}")
        lines.extend(_kdh_rows(kdh))
    else:
        row("kerneldumpheader", f"{kdh['magic']!r}, dump at offset {info['dump_offset']:#x}")
        lines.extend(_kdh_rows(kdh))
    if fmt == "minidump":
        entry = info.get("pmap_entry_kind") or ("PTEs" if info["version"] == 1 else "PDEs")
        row("kernbase", f"{info['kernbase']:#x} ({info['pmap_entries']} pmap entries, "
                        f"{entry} covering {info['pmap_entry_span']:#x} bytes each)")
        dmapphys = info.get("dmapphys")  # arm64: the direct map starts at dmap_phys_base
        if info["dmap"] is None:  # i386: PMAP_HAS_DMAP 0, nothing below kernbase is in a minidump
            row("direct map", "none")
        else:
            row("direct map", _ranges([info["dmap"]]) + ("" if dmapphys is None else f" from PA {dmapphys:#x}"))
        if "page_size" in info:
            row("page size", f"{info['page_size'] // 1024} KiB")
        row("sections", f"{'offset':<14}{'size':<14}length")
        for name, sec in info["sections"].items():
            row(f"  {name}", f"{sec['offset']:<#14x}{sec['size']:<#14x}{sec['length']:#x}")
        avail = info["dump_avail"]
        row("dump_avail", "none (bit = page frame number)" if avail is None else _ranges(avail))
        missing = info["dumped_pages"] - info["pages_in_file"]
        where = "all in the file" if not missing else f"{missing} missing from the file"
        page = info.get("page_size", PAGE_SIZE)
        row("dumped pages", f"{info['dumped_pages']} ({info['dumped_pages'] * page / 2**20:.1f} MiB), {where}")
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
