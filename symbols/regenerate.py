"""Rebuild the type packs in symbols/types/ from symbols/types.c.

Usage (from the repository root)::

    python symbols/regenerate.py installed /opt/zig17

Each argument names a ziglang toolchain: ``installed`` is the ``ziglang``
package of the running interpreter, any other value is a directory put on
``PYTHONPATH`` that contains a ``ziglang`` package (an unpacked wheel).  For
every toolchain, types.c is compiled with ``-g`` for amd64, i386 and arm64,
the DWARF is converted by :mod:`kvm_vol.symbols.dwarf2isf`, and the result is
written as ``symbols/types/freebsd-<major>.<minor>-<arch>.json.xz``.

The FreeBSD release of a toolchain's headers cannot be read from them: zig
patches ``__FreeBSD_version`` out of ``sys/param.h`` and ``osreldate.h`` and
defines it from the ``-target`` version (as major * 100000 + 500, whatever
the minor).  So :data:`HEADER_RELEASES` records it per ziglang version, with
the evidence; a toolchain not listed there is refused rather than guessed.
The target is spelled with that release (``x86_64-freebsd.14.3``) so the
headers' version checks see the right major.

Packs are post-processed so that nobody can mistake one for a kernel ISF:
``producer.kvm_vol.kind`` is ``type-pack``, every symbol address is 0 and
no symbol carries ``constant_data``.  The helper aggregate that makes
types.c emit its structures (``struct kvm_vol_types``) is removed.  Output is
deterministic: regenerating with the same toolchains gives the same bytes.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvm_vol.symbols.dwarf2isf import dwarf_to_isf  # noqa: E402
from kvm_vol.symbols.isf import ISF_FORMAT, KIND_TYPE_PACK, producer, write_isf  # noqa: E402
from kvm_vol.symbols.typepacks import freebsd_version, pack_name  # noqa: E402

SOURCE = HERE / "types.c"
OUTPUT = HERE / "types"

#: ziglang version -> (major, minor) of the FreeBSD release its headers come from.
#:  * 0.15.2: 14.3, the newest 14.x release the toolchain declares
#:    (lib/std/Target.zig, FreeBSD max version 14.3.0); its headers have the
#:    14.x layouts (struct proc 1376 bytes on amd64, cr_gid aliasing
#:    cr_groups[0]).
#:  * 0.17.1: 15.0.  The wheel's headers are those of 15.0 (separate cr_gid,
#:    cr_smallgroups; SYS_MAXSYSCALL 599 as in releng/15.0) although its
#:    Target.zig already names 15.1 as the newest supported release.
HEADER_RELEASES: Dict[str, Tuple[int, int]] = {
    "0.15.2": (14, 3),
    "0.17.1": (15, 0),
}

#: FreeBSD architecture name -> zig target CPU.
ARCHES: Dict[str, str] = {"amd64": "x86_64", "i386": "x86", "arm64": "aarch64"}

#: The aggregates in types.c that exist only to make the compiler emit types
#: (``kvm_vol_types`` and every ``kvm_vol_types_<area>`` appended later).
HELPER = "kvm_vol_types"


def is_helper(name: str) -> bool:
    return name == HELPER or name.startswith(HELPER + "_")


class Toolchain:
    """One ziglang installation, run as ``python -m ziglang`` (optionally on a PYTHONPATH)."""

    def __init__(self, spec: str):
        self.spec = spec
        self.env = dict(os.environ)
        if spec != "installed":
            self.env["PYTHONPATH"] = os.pathsep.join([spec] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.version = self._run(["version"]).strip()
        if self.version not in HEADER_RELEASES:
            raise SystemExit(
                f"regenerate: ziglang {self.version} ({spec}) is not in HEADER_RELEASES; "
                "find out which FreeBSD release its headers come from and add it"
            )
        self.release = HEADER_RELEASES[self.version]

    def _run(self, args: Sequence[str], cwd: Optional[Path] = None) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "ziglang", *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"regenerate: zig {' '.join(args)} failed ({self.spec}):\n{proc.stderr}")
        return proc.stdout

    def compile(self, target: str, output: Path) -> None:
        """Compile types.c for ``target`` with the source directory mapped to '.' in the DWARF."""
        self._run(
            [
                "cc",
                "-target",
                target,
                "-g",
                "-O0",
                "-fno-sanitize=all",
                f"-ffile-prefix-map={HERE}=.",
                "-c",
                SOURCE.name,
                "-o",
                str(output),
            ],
            cwd=HERE,
        )


def make_pack(toolchain: Toolchain, arch: str, workdir: Path) -> Tuple[str, Dict[str, Any]]:
    """Compile, convert and post-process one pack; return its name and ISF."""
    major, minor = toolchain.release
    target = f"{ARCHES[arch]}-freebsd.{major}.{minor}"
    obj = workdir / f"types-{toolchain.version}-{arch}.o"
    toolchain.compile(target, obj)
    isf = dwarf_to_isf(obj)

    for name in [n for n in isf["user_types"] if is_helper(n)]:
        del isf["user_types"][name]
    symbols = {}
    for name, entry in isf["symbols"].items():
        if is_helper(name):
            continue
        symbols[name] = {"address": 0, "type": entry["type"]}
    isf["symbols"] = symbols

    dwarf = dict(isf["metadata"]["producer"]["kvm_vol"])
    for key in ("kind", "source"):
        dwarf.pop(key)
    provenance = {
        "kind": KIND_TYPE_PACK,
        "release": f"{major}.{minor}",
        "freebsd_version": freebsd_version(major, minor),
        "arch": arch,
        "target": target,
        "ziglang": toolchain.version,
        "source": {"name": SOURCE.name, "sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest()},
        "dwarf": dwarf,
    }
    isf["metadata"] = {"format": ISF_FORMAT, "producer": producer(provenance)}
    return pack_name(major, minor, arch), isf


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "toolchains",
        nargs="*",
        default=["installed"],
        help="'installed' or a directory containing a ziglang package (default: installed)",
    )
    args = parser.parse_args(argv)
    toolchains = [Toolchain(spec) for spec in args.toolchains]
    OUTPUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvm-vol-types-") as tmp:
        for toolchain in toolchains:
            for arch in ARCHES:
                name, isf = make_pack(toolchain, arch, Path(tmp))
                path = write_isf(isf, OUTPUT / f"{name}.json.xz")
                users = isf["user_types"]
                print(
                    f"{path.relative_to(HERE.parent)}: {path.stat().st_size} bytes, "
                    f"{len(users)} types, {len(isf['symbols'])} symbols, "
                    f"proc {users['proc']['size']}, thread {users['thread']['size']} (ziglang {toolchain.version})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
