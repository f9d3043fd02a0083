"""Build a synthetic FreeBSD machine and write it in every dump format.

``build()`` lays out a machine on a release's real struct layouts (a shipped
type pack) and returns a :class:`Forged` holding the memory, the manifest (the
ground truth) and the kernel ISF (the pack's types plus the forge kernel's
symbols and banner).  ``Forged.write()`` produces the files.

The machine class comes from the pack's architecture
(:func:`kvm_vol.forge.arches.machine_class`); each class says which formats
it writes (``Machine.FORMATS``) and writes them (``Machine.write_image``);
only the kerneldumpheader wrapping, which is the same on every
architecture, is done here.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

from kvm_vol.forge import arches, files, system, writers
from kvm_vol.forge.kernel import Kernel, ProcSpec
from kvm_vol.forge.layout import Layout
from kvm_vol.forge.machine import Machine
from kvm_vol.forge.scenario import demo_processes
from kvm_vol.symbols import isf as isfmod
from kvm_vol.symbols import typepacks

#: Every image format the forge writes for amd64, by file suffix (other architectures:
#: their machine's ``FORMATS``, or :func:`kvm_vol.forge.arches.formats_for`).
FORMATS = Machine.FORMATS
DEMO_FORMATS = Machine.DEMO_FORMATS
#: A format "kdh-X" is format X behind a kerneldumpheader (as read straight off a dump device).
KDH_PREFIX = "kdh-"

# Source revisions in the style of a reproducible release build banner.
_REVISIONS = {14: "n271432-8c9ce319fef7", 15: "n280995-7aedc8de6446"}


def banner_for(release: str, arch: str = "amd64", ident: str = "GENERIC") -> str:
    """The ``version`` string of a release build of kernel config ``ident`` for ``arch``.

    As ``sys/conf/newvers.sh`` makes it: the release line, then the builder
    and the kernel's object directory, ``/usr/obj/usr/src/<TARGET>.<TARGET_ARCH>
    /sys/<ident>``.  The second line is what tells the same release's kernels
    of different architectures apart: kernel ISFs are identified by the whole
    string, so an amd64 and an i386 ISF of 14.3 can be installed side by side.
    """
    major = int(release.split(".")[0])
    rev = _REVISIONS.get(major, "n100000-000000000000")
    target = f"{arch}.{arches.machine_class(arch).KDH_ARCHITECTURE}"  # e.g. arm64.aarch64
    return (f"FreeBSD {release}-RELEASE releng/{release}-{rev} {ident}\n"
            f"    root@releng3.nyi.freebsd.org:/usr/obj/usr/src/{target}/sys/{ident}\n")


@dataclass
class Forged:
    """A built machine: memory, kernel bookkeeping, manifest and ISF."""

    pack: str
    machine: Machine
    kernel: Kernel
    isf: Dict[str, Any]
    extra_manifest: Dict[str, Any] = field(default_factory=dict)  # system state: loadavg, msgbuf, swap ...

    @property
    def manifest(self) -> Dict[str, Any]:
        man = self.kernel.manifest()
        man["type_pack"] = self.pack
        man.update(self.extra_manifest)
        return man

    @property
    def arch(self) -> str:
        return self.machine.ARCH

    def write(self, directory: str, stem: str = "freebsd", formats: Optional[Iterable[str]] = None) -> Dict[str, str]:
        """Write the requested formats (default: the machine's DEMO_FORMATS) plus ``manifest.json``.

        Returns {format: path}.
        """
        os.makedirs(directory, exist_ok=True)
        m = self.machine
        paths: Dict[str, str] = {}
        for fmt in (m.DEMO_FORMATS if formats is None else formats):
            if fmt not in m.FORMATS:
                raise ValueError(f"unknown forge format {fmt!r} for {m.ARCH}; choose from {', '.join(m.FORMATS)}")
            path = os.path.join(directory, f"{stem}.{fmt}")
            inner = fmt[len(KDH_PREFIX):] if fmt.startswith(KDH_PREFIX) else fmt
            target = path + ".inner" if inner != fmt else path
            m.write_image(inner, target, self.kernel)
            if inner != fmt:
                writers.wrap_kdh(target, path, versionstring=self.kernel.banner, hostname="forge.example.org",
                                 panicstring="forge: synthetic dump", architecture=m.KDH_ARCHITECTURE)
                os.unlink(target)
            paths[fmt] = path
        man = self.manifest
        man["images"] = {fmt: os.path.basename(p) for fmt, p in paths.items()}
        with open(os.path.join(directory, "manifest.json"), "w") as fh:
            json.dump(man, fh, indent=1, sort_keys=True)
        return paths

    def write_isf(self, path: str) -> str:
        isfmod.write_isf(self.isf, path)
        return path


def build(pack: str = "freebsd-14.3-amd64", *, processes: Optional[List[ProcSpec]] = None,
          ram_size: int = 64 << 20, kernphys: Optional[int] = None, seed: int = 1,
          banner: Optional[str] = None, swap: Optional[Sequence[system.SwapSpec]] = None,
          **machine_options: Any) -> Forged:
    """Lay out a FreeBSD machine on the layouts of type pack ``pack``.

    The machine class is the pack's architecture's
    (:func:`kvm_vol.forge.arches.machine_class`); ``kernphys`` None is its
    default load address, and ``machine_options`` go to it (amd64:
    ``dmap_1g``).  ``banner`` overrides the kernel's ``version`` string
    (default: a release build banner for the pack's release), e.g. to make a
    kernel no ISF knows.  ``swap`` replaces the default swap devices
    (:data:`system.DEFAULT_SWAP`).
    """
    types = typepacks.load(pack)
    meta = types["metadata"]["producer"]["kvm_vol"]
    release = meta["release"]
    osreldate = int(meta["freebsd_version"])
    layout = Layout(types)
    machine_cls = arches.machine_class(arches.arch_of_types(types, pack))
    machine = machine_cls(layout, ram_size=ram_size, kernphys=kernphys, seed=seed, **machine_options)
    banner = banner or banner_for(release, machine.ARCH)
    kernel = Kernel(machine, release, osreldate, banner, symbol_types=types.get("symbols", {}))
    for spec in (processes if processes is not None else demo_processes()):
        kernel.add_process(spec)
    extra_manifest = system.populate(kernel, swap=swap)
    extra_manifest.update(files.populate(kernel))
    symbol_types = {name: {"type": desc} for name, desc in machine.symbol_types.items()}
    kernel_isf = isfmod.make_kernel_isf(types, machine.symbols, kernel.banner.encode(), symbol_types)
    return Forged(pack=pack, machine=machine, kernel=kernel, isf=kernel_isf, extra_manifest=extra_manifest)
