"""The ``kvm-vol`` command: ``demo``, ``isf``, ``info`` and ``textdump``.

Each sub-command lives beside the code it drives; this module only parses
arguments and turns :class:`kvm_vol.errors.KvmVolError` into a one-line
message and a non-zero exit status (no tracebacks for bad input).
"""

import argparse
import sys
from typing import List, Optional

from kvm_vol.errors import KvmVolError


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvm_vol.forge import demo

    return demo.run(args)


def _cmd_isf(args: argparse.Namespace) -> int:
    from kvm_vol.symbols import isfcmd

    return isfcmd.run(args)


def _cmd_info(args: argparse.Namespace) -> int:
    from kvm_vol.formats import info

    return info.run(args)


def _cmd_textdump(args: argparse.Namespace) -> int:
    from kvm_vol.formats import textdumpcmd

    return textdumpcmd.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvm-vol",
        description="FreeBSD kernel memory forensics for Volatility 3 (libkvm semantics).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from kvm_vol.forge import demo
    from kvm_vol.formats import info
    from kvm_vol.symbols import isfcmd

    p = sub.add_parser("demo", help="write a synthetic FreeBSD machine (vmcore, full dump, raw) and install its ISF")
    demo.add_arguments(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("isf", help="make a Volatility ISF from a FreeBSD kernel (DWARF and/or ELF symbols)")
    isfcmd.add_arguments(p)
    p.set_defaults(func=_cmd_isf)

    p = sub.add_parser("info", help="describe a FreeBSD dump file: format, version, sections")
    info.add_arguments(p)
    p.set_defaults(func=_cmd_info)

    from kvm_vol.formats import textdumpcmd

    p = sub.add_parser("textdump", help="list or safely extract the files of a textdump (ddb output)")
    textdumpcmd.add_arguments(p)
    p.set_defaults(func=_cmd_textdump)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KvmVolError as exc:
        print(f"kvm-vol: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing or unreadable file: one line, like any other bad input
        if isinstance(exc, BrokenPipeError):
            return 0
        print(f"kvm-vol: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
