"""``kvm-vol demo [DIR] [--arch amd64|i386|arm64]``: a synthetic FreeBSD machine to try kvm-vol on.

Writes the architecture's demo formats (its machine's ``DEMO_FORMATS``; for
amd64 ``DIR/freebsd-demo.vmcore``, a minidump v3 as savecore leaves it,
``DIR/freebsd-demo.full``, an ELF full dump as ``debug.minidump=0`` writes,
and ``DIR/freebsd-demo.raw``, raw physical memory) and ``DIR/manifest.json``
(the ground truth, with the architecture), installs the demo kernel's ISF in
the per-user symbol directory, and with ``--run`` also runs ``vol -f
DIR/freebsd-demo.<first format> freebsd.pslist``.
"""

import argparse
import os
import shutil
import subprocess
import sys

from kvm_vol import paths
from kvm_vol.forge import arches
from kvm_vol.forge import build as forge_build
from kvm_vol.symbols import typepacks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="kvm-vol-demo",
                        help="where to write the images (default: ./kvm-vol-demo)")
    parser.add_argument("--release", default="14",
                        help="FreeBSD release whose struct layouts to use: 14 or 15 (or a type pack name)")
    parser.add_argument("--arch", default="amd64", choices=arches.ARCHES,
                        help="FreeBSD architecture of the machine (default: amd64); a type pack name "
                             "given as --release brings its own")
    parser.add_argument("--run", action="store_true",
                        help="then run: vol -f DIR/freebsd-demo.<first image> freebsd.pslist")


def pack_for_release(release: str, arch: str = "amd64") -> str:
    """Type pack name for ``14``/``15``/``14.3`` on ``arch``, or a full pack name (used as is)."""
    names = typepacks.available()
    if release in names:
        return release
    matches = [n for n in names if n.endswith(f"-{arch}") and
               (n.split("-")[1] == release or n.split("-")[1].split(".")[0] == release)]
    if not matches:
        from kvm_vol.errors import KvmVolError

        raise KvmVolError(f"no {arch} type pack for release {release!r}; available: {', '.join(names)}")
    return sorted(matches)[-1]


def run(args: argparse.Namespace) -> int:
    pack = pack_for_release(args.release, getattr(args, "arch", "amd64"))
    forged = forge_build.build(pack)
    files = forged.write(args.directory, stem="freebsd-demo", formats=forged.machine.DEMO_FORMATS)
    isf_dir = paths.user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    isf_path = isf_dir / f"kvm-vol-demo-{pack}.json.xz"
    forged.write_isf(str(isf_path))
    man = forged.manifest
    print(f"FreeBSD/{man['arch']} demo machine ({man['banner'].splitlines()[0]}), {man['nprocs']} processes:")
    for fmt, path in files.items():
        print(f"  {fmt:7} {path}")
    print(f"  manifest {os.path.join(args.directory, 'manifest.json')}")
    print(f"  ISF     {isf_path}")
    vmcore = files[forged.machine.DEMO_FORMATS[0]]
    if args.run:
        vol = shutil.which("vol")
        cmd = [vol] if vol else [sys.executable, "-c", "from volatility3.cli import main; main()"]
        cmd += ["-f", vmcore, "freebsd.pslist"]
        print("$ vol -f " + vmcore + " freebsd.pslist", flush=True)
        return subprocess.call(cmd)
    print(f"Next: vol -f {vmcore} freebsd.pslist")
    return 0
