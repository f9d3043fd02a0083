"""Build a synthetic FreeBSD machine and write it in every dump format.

``build()`` lays out a machine on a release's real struct layouts (a shipped
type pack) and returns a :class:`Forged` holding the memory, the manifest (the
ground truth) and the kernel ISF (the pack's types plus the forge kernel's
symbols and banner).  ``Forged.write()`` produces the files.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from kvm_vol.core import amd64 as A
from kvm_vol.forge import files, system, writers
from kvm_vol.forge.kernel import Kernel, ProcSpec
from kvm_vol.forge.layout import Layout
from kvm_vol.forge.machine import Machine
from kvm_vol.forge.scenario import demo_processes
from kvm_vol.symbols import isf as isfmod
from kvm_vol.symbols import typepacks

#: Every image format the forge writes, by file suffix.
FORMATS = ("vmcore", "full", "raw", "minidump-v1", "minidump-v2", "kdh-vmcore", "kdh-full")
DEMO_FORMATS = ("vmcore", "full", "raw")

# Source revisions in the style of a reproducible release build banner.
_REVISIONS = {14: "n271432-8c9ce319fef7", 15: "n280995-7aedc8de6446"}


def banner_for(release: str) -> str:
    major = int(release.split(".")[0])
    rev = _REVISIONS.get(major, "n100000-000000000000")
    return f"FreeBSD {release}-RELEASE releng/{release}-{rev} GENERIC\n"


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

    def write(self, directory: str, stem: str = "freebsd", formats: Iterable[str] = DEMO_FORMATS) -> Dict[str, str]:
        """Write the requested formats plus ``manifest.json``; returns {format: path}."""
        os.makedirs(directory, exist_ok=True)
        m = self.machine
        paths: Dict[str, str] = {}
        for fmt in formats:
            if fmt not in FORMATS:
                raise ValueError(f"unknown forge format {fmt!r}; choose from {', '.join(FORMATS)}")
            path = os.path.join(directory, f"{stem}.{fmt}")
            if fmt in ("vmcore", "minidump-v1", "minidump-v2", "kdh-vmcore"):
                version = {"minidump-v1": 1, "minidump-v2": 2}.get(fmt, 3)
                target = path + ".inner" if fmt.startswith("kdh") else path
                writers.write_minidump(m.mem, target, version=version, kpml4phys=m.kpml4phys,
                                       kva_end=m.kva_end, extra_pfns=sorted(m.uma_pfns),
                                       msgbuf=self.kernel.msgbuf_bytes())
            elif fmt in ("full", "kdh-full"):
                target = path + ".inner" if fmt.startswith("kdh") else path
                writers.write_elf(m.mem, target)
            else:
                target = path
                writers.write_raw(m.mem, path)
            if fmt.startswith("kdh"):
                writers.wrap_kdh(target, path, versionstring=self.kernel.banner, hostname="forge.example.org",
                                 panicstring="forge: synthetic dump")
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
          ram_size: int = 64 << 20, kernphys: int = A.KERNLOAD, dmap_1g: bool = False, seed: int = 1,
          banner: Optional[str] = None) -> Forged:
    """Lay out a FreeBSD machine on the layouts of type pack ``pack``.

    ``banner`` overrides the kernel's ``version`` string (default: a release
    build banner for the pack's release), e.g. to make a kernel no ISF knows.
    """
    types = typepacks.load(pack)
    meta = types["metadata"]["producer"]["kvm_vol"]
    release = meta["release"]
    osreldate = int(meta["freebsd_version"])
    layout = Layout(types)
    machine = Machine(layout, ram_size=ram_size, kernphys=kernphys, dmap_1g=dmap_1g, seed=seed)
    kernel = Kernel(machine, release, osreldate, banner or banner_for(release), symbol_types=types.get("symbols", {}))
    for spec in (processes if processes is not None else demo_processes()):
        kernel.add_process(spec)
    extra_manifest = system.populate(kernel)
    extra_manifest.update(files.populate(kernel))
    symbol_types = {name: {"type": desc} for name, desc in machine.symbol_types.items()}
    kernel_isf = isfmod.make_kernel_isf(types, machine.symbols, kernel.banner.encode(), symbol_types)
    return Forged(pack=pack, machine=machine, kernel=kernel, isf=kernel_isf, extra_manifest=extra_manifest)
