"""Per-architecture facts the readers need, in one small record per architecture.

The libkvm-style API (:mod:`kvm_vol.kvm`) and the plugins are written once
for every architecture; what differs between amd64, i386 and arm64 for them
is only

* whether the kernel has a **direct map** (``PHYS_TO_DMAP``), which lets
  :class:`kvm_vol.kvm.kmem.KernelMemory` read UMA items (procs, threads,
  creds ...) straight from physical memory, and its default range;
* how a **process's address space** is found: which ``struct vmspace``
  fields (``vm_pmap.pm_cr3`` on amd64, ``pm_pdpt_pae`` / ``pm_pdir_nopae``
  on i386, ``pm_l0_paddr`` on arm64) name its page-table root, and how a
  copy of the kernel layer is configured to translate through it;
* how kernel addresses are written (48-bit sign-extended on amd64 and
  arm64, plain 32-bit on i386).

Pointer and ``long`` sizes are *not* here: they come from the symbol table
(the ISF's ``pointer`` and ``long`` base types), which is the kernel's own
answer.  Hardware and VM constants stay in ``kvm_vol.core.<arch>``; an
:class:`Arch` only refers to them.

Nothing here imports Volatility: a kernel layer is passed in and used
through its ``translate()`` method and ``config`` only.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from kvm_vol.core import amd64 as _amd64
from kvm_vol.core import arm64 as _arm64
from kvm_vol.core import i386 as _i386

__all__ = ["Arch", "REGISTRY", "for_layer", "for_name", "METADATA_ARCHITECTURES"]


@dataclass(frozen=True)
class Arch:
    """What the readers must know about one FreeBSD architecture.

    ``vmspace_fields`` are StructReader fields (result name -> member path
    of ``struct vmspace``) that :attr:`process_config` receives as a record;
    ``process_config(kernel_layer, fields)`` returns the config keys to
    override in a copy of the kernel layer so that the copy translates the
    process's address space (and still the kernel's), or raises
    ``ValueError(reason)``.  ``process_layer_class(kernel_layer)`` gives the
    class of that copy when it is not the kernel layer's own.
    """

    name: str
    has_dmap: bool
    dmap: Optional[Tuple[int, int]]  # default [lo, hi) when the kernel layer does not say (its ``_dmap``)
    vmspace_fields: Dict[str, str]
    process_config: Callable[[Any, Any], Dict[str, Any]]
    process_layer_class: Optional[Callable[[Any], type]] = None
    address_bits: int = 48  # 48: sign-extend bit 47 (amd64); 32: plain u32 (i386); 64: never masked (arm64)
    page_size: int = 4096  # the common base page; a layer may know better (arm64 16 KiB granule)
    extra: Dict[str, Any] = field(default_factory=dict)

    def canonical(self, va: int) -> int:
        """A kernel address as the kernel prints it (Volatility hands out masked offsets)."""
        if self.address_bits == 48:
            return _amd64.canonical(va)
        return va & ((1 << self.address_bits) - 1)


def _amd64_process_config(kernel_layer, fields) -> Dict[str, Any]:
    """The process's PML4 (``pm_cr3``) as the copy's ``page_map_offset``.

    ``pmap_pinit()`` copies the kernel half into every PML4, so the copy
    translates kernel addresses too.
    """
    cr3 = fields.cr3
    if cr3 is None:
        raise ValueError("the symbol table has no pmap.pm_cr3 (not an amd64 kernel?)")
    dtb = cr3 & _amd64.PG_FRAME
    if not dtb:
        raise ValueError("pm_cr3 is 0")
    return {"page_map_offset": dtb}


def _i386_process_config(kernel_layer, fields) -> Dict[str, Any]:
    """``vtophys(pm_pdpt_pae)`` or ``vtophys(pm_pdir_nopae)`` by the kernel layer's pmap
    (:func:`kvm_vol.layers.kernel_i386.process_config`)."""
    from kvm_vol.layers.kernel_i386 import process_config

    return process_config(kernel_layer, fields)


def _i386_process_layer_class(kernel_layer) -> type:
    """The walking layer class: a minidump kernel layer's rules would hide user space (4/4G split)."""
    from kvm_vol.layers.kernel_i386 import process_layer_class

    return process_layer_class(kernel_layer)


def _arm64_process_config(kernel_layer, fields) -> Dict[str, Any]:
    """The process's TTBR0 L0 table (``pm_l0_paddr``) as the copy's ``page_map_offset``.

    The kernel half is translated by the kernel's TTBR1 table, which the copy
    keeps (``kernel_page_map_offset``); nothing of the kernel is in a
    process's L0 table on arm64.
    """
    l0 = fields.l0
    if l0 is None:
        raise ValueError("the symbol table has no pmap.pm_l0_paddr (not an arm64 kernel?)")
    l0 &= _arm64.BASE_MASK
    if not l0:
        raise ValueError("pm_l0_paddr is 0")
    if l0 == kernel_layer.config.get("kernel_page_map_offset"):
        raise ValueError("pm_l0_paddr is the kernel's own TTBR1 table")
    return {"page_map_offset": l0}


#: Architectures by the name FreeBSD gives them (``uname -p``, the type packs' ``arch``).
REGISTRY: Dict[str, Arch] = {
    "amd64": Arch(
        name="amd64", has_dmap=True, dmap=(_amd64.DMAP_MIN_ADDRESS, _amd64.DMAP_MAX_ADDRESS),
        vmspace_fields={"cr3": "vm_pmap.pm_cr3"}, process_config=_amd64_process_config,
        address_bits=48, page_size=_amd64.PAGE_SIZE,
    ),
    "i386": Arch(
        name="i386", has_dmap=False, dmap=None,
        vmspace_fields={"pdpt": "vm_pmap." + _i386.PAE.pmap_root_field,
                        "pdir": "vm_pmap." + _i386.NOPAE.pmap_root_field},
        process_config=_i386_process_config, process_layer_class=_i386_process_layer_class,
        address_bits=32, page_size=_i386.PAGE_SIZE,
    ),
    "arm64": Arch(
        name="arm64", has_dmap=True, dmap=(_arm64.DMAP_MIN_ADDRESS, _arm64.DMAP_MAX_ADDRESS),
        vmspace_fields={"l0": "vm_pmap.pm_l0_paddr"}, process_config=_arm64_process_config,
        address_bits=64, page_size=_arm64.PAGE_SIZE_4K,
    ),
}

#: Volatility's layer ``architecture`` metadata -> FreeBSD's name, for layers that do not say.
METADATA_ARCHITECTURES = {"Intel64": "amd64", "Intel32": "i386", "AArch64": "arm64"}


def for_name(name: str) -> Arch:
    """The record of architecture ``name`` (KeyError names the known ones)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"kvm-vol has no reader support for architecture {name!r} "
                       f"(known: {', '.join(sorted(REGISTRY))})") from None


def for_layer(layer) -> Arch:
    """The architecture of a kernel layer.

    kvm-vol's kernel layer classes say it (class attribute ``FREEBSD_ARCH``);
    any other layer is judged by Volatility's ``architecture`` metadata, and
    a layer that says nothing is amd64 (what kvm-vol read before issue #8).
    """
    name = getattr(type(layer), "FREEBSD_ARCH", None)
    if name is None:
        metadata = getattr(layer, "metadata", None) or {}
        name = METADATA_ARCHITECTURES.get(metadata.get("architecture"), "amd64")
    return for_name(name)
