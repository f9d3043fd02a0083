"""Which forge machine imitates which FreeBSD architecture.

The forge builds a machine on a type pack's layouts, and the pack says which
architecture its headers were compiled for (``metadata.producer.kvm_vol.arch``,
from the ziglang target; pack names end in ``-amd64``/``-i386``/``-arm64``).
:func:`machine_class` maps that name to the :class:`kvm_vol.forge.machine.Machine`
subclass that knows the architecture's page tables, kernel addresses and dump
formats.  The classes are imported lazily, so an architecture whose machine
module does not exist yet is one clear error at build time rather than an
import failure of the whole forge.

The contract each machine class fulfils is in ``/work/notes/arch-hooks.md``
(and :class:`kvm_vol.forge.machine.Machine`'s docstrings).
"""

import importlib
from typing import Any, Dict, Optional, Tuple

from kvm_vol.errors import KvmVolError

__all__ = ["ARCHES", "MACHINES", "arch_of_types", "formats_for", "machine_class"]

#: Every architecture kvm-vol knows, in the order the README lists them.
ARCHES = ("amd64", "i386", "arm64")

#: arch -> (module, class) of its forge machine.
MACHINES: Dict[str, Tuple[str, str]] = {
    "amd64": ("kvm_vol.forge.machine", "Machine"),
    "i386": ("kvm_vol.forge.machine_i386", "MachineI386"),
    "arm64": ("kvm_vol.forge.machine_arm64", "MachineArm64"),
}


def machine_class(arch: str) -> type:
    """The forge machine class of ``arch`` (KvmVolError if kvm-vol has none)."""
    if arch not in MACHINES:
        raise KvmVolError(f"forge: unknown architecture {arch!r}; kvm-vol knows {', '.join(ARCHES)}")
    module_name, class_name = MACHINES[arch]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but something it imports does not: a real bug
        raise KvmVolError(f"forge: no {arch} machine yet ({module_name} is missing)") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise KvmVolError(f"forge: {module_name} defines no {class_name}") from None


def arch_of_types(types: Dict[str, Any], pack: Optional[str] = None) -> str:
    """The architecture a type pack (or kernel ISF) describes.

    The pack's own metadata says it; a pack without it (older packs, ISFs made
    elsewhere) is named ``freebsd-<release>-<arch>``.  ``amd64`` when neither
    tells, which is what every ISF before issue #8 was.
    """
    meta = types.get("metadata", {}).get("producer", {}).get("kvm_vol", {})
    arch = meta.get("arch")
    if arch:
        return arch
    if pack:
        suffix = pack.rsplit("-", 1)[-1]
        if suffix in ARCHES:
            return suffix
    return "amd64"


def formats_for(arch: str) -> Tuple[str, ...]:
    """The image formats the forge writes for ``arch`` (its machine's ``FORMATS``)."""
    return tuple(machine_class(arch).FORMATS)
