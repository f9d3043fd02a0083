"""``kvm-vol textdump list FILE`` and ``kvm-vol textdump extract FILE [-o DIR]``.

Both read either form of a textdump (:mod:`kvm_vol.formats.textdump`):
``textdump.tar.N`` as savecore saved it (``.gz`` too), or a copy of the dump
device where the archive still lies backwards behind its kerneldumpheader -
which tar(1) cannot read.

Extraction treats the archive as hostile: only regular files are written;
a name that is absolute, climbs out with ``..``, or holds control characters
is skipped with a message naming the member and its offset; files are
created with ``O_EXCL | O_NOFOLLOW`` and mode 0600 (nothing is overwritten,
no symlink is followed, no set-id bit is kept); DIR must be new or empty, so
no link planted beforehand can redirect a write; and every size is bounded by
the data actually in the file.  Exit status 1 if anything was skipped.
"""

import argparse
import json
import os
import sys

from kvm_vol.errors import KvmVolError
from kvm_vol.formats.textdump import format_time, open_textdump, safe_member_path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="textdump_command", required=True)
    p = sub.add_parser("list", help="list the files of a textdump")
    p.add_argument("file", metavar="FILE", help="textdump.tar.N[.gz], or a dump-device copy holding a textdump")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p = sub.add_parser("extract", help="extract the files of a textdump (safely) into a directory")
    p.add_argument("file", metavar="FILE", help="textdump.tar.N[.gz], or a dump-device copy holding a textdump")
    p.add_argument("-o", "--output", metavar="DIR", help="new or empty directory (default: ./FILE.files)")


def _describe(td) -> str:
    if td.form == "device":
        k = td.kdh
        return (f"FreeBSD textdump on a dump device: kerneldumpheader {k.magic.decode()!r} at offset "
                f"{td.kdh_offset:#x}, {td.length:#x} bytes of tar written backwards below the trailer; "
                f"host {k.hostname!r}, panic {k.panicstring!r}")
    return f"FreeBSD textdump saved by savecore (ustar archive, {td.length:#x} bytes)"


def _list(args) -> int:
    with open_textdump(args.file) as td:
        if args.json:
            print(json.dumps(td.info(), indent=2))
            return 1 if td.problems else 0
        print(f"{args.file}: {_describe(td)}")
        print(f"{'SIZE':>10}  {'MODIFIED':<23}  NAME")
        for m in td.members:
            kind = "" if m.is_regular else f"  (type {m.typeflag!r}, not a regular file)"
            cut = f"  (truncated: {m.declared_size} bytes declared)" if m.truncated else ""
            name = m.name if m.name.isprintable() else repr(m.name)  # no terminal escapes from the archive
            print(f"{m.size:>10}  {format_time(m.mtime):<23}  {name}{kind}{cut}")
        print(f"{len(td.members)} files")
        for problem in td.problems:
            print(f"kvm-vol: {args.file}: {problem}", file=sys.stderr)
        return 1 if td.problems else 0


def _prepare_dir(path: str) -> None:
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise KvmVolError(f"{path}: exists and is not a directory")
        if os.listdir(path):
            raise KvmVolError(f"{path}: directory is not empty (extraction never overwrites)")
    else:
        os.makedirs(path)


def _extract(args) -> int:
    out = args.output or os.path.basename(args.file) + ".files"
    skipped = 0
    with open_textdump(args.file) as td:
        _prepare_dir(out)
        for m in td.members:
            where = f"kvm-vol: {args.file}: tar member {m.index} at offset {td.file_offset(m.header_offset):#x}"
            rel = safe_member_path(m.name)
            if rel is None:
                print(f"{where}: name {m.name!r} is absolute, leaves the directory or holds control "
                      "characters; skipped", file=sys.stderr)
                skipped += 1
                continue
            if not m.is_regular:
                print(f"{where}: {m.name!r} is of type {m.typeflag!r}, not a regular file; skipped", file=sys.stderr)
                skipped += 1
                continue
            target = os.path.join(out, rel)
            parent = os.path.dirname(target)
            try:
                if parent != out:
                    os.makedirs(parent, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as exc:
                print(f"{where}: cannot create {target} ({exc.strerror}); skipped", file=sys.stderr)
                skipped += 1
                continue
            with os.fdopen(fd, "wb") as fh:
                for chunk in td.iter_data(m):
                    fh.write(chunk)
            try:
                os.utime(target, (m.mtime, m.mtime))
            except (OverflowError, OSError, ValueError):
                pass
            note = f" (truncated: {m.declared_size} bytes declared)" if m.truncated else ""
            print(f"{target}  {m.size} bytes{note}")
        for problem in td.problems:
            print(f"kvm-vol: {args.file}: {problem}", file=sys.stderr)
        return 1 if skipped or td.problems else 0


def run(args: argparse.Namespace) -> int:
    return _list(args) if args.textdump_command == "list" else _extract(args)
