"""FreeBSD/i386 kernel and process address spaces, and how the stacker finds them.

* :class:`FreebsdIntel` (non-PAE) and :class:`FreebsdIntelPAE` are Volatility's
  ``Intel`` / ``IntelPAE`` layers served by the translation core's i386 walk
  (:class:`~kvm_vol.layers.kernel.FreebsdCoreLayer`), rooted at ``IdlePTD_nopae``
  or ``IdlePDPT`` for the kernel, at a process's page directory / PDPT for a
  process.
* :class:`FreebsdMinidumpIntel` / :class:`FreebsdMinidumpIntelPAE` translate
  kernel addresses the way libkvm reads an i386 minidump (the flat PTE array
  from ``kernbase``).  Their process layers are the plain walking classes:
  with the 4/4G split user addresses overlap kernel ones (both lie above
  ``KERNBASE``), so a process space must never take the kernel's minidump rules.

Which pmap the kernel runs is the int ``pae_mode`` (FreeBSD 12 and later
carry both pmaps); kernels without it (before 12) had one pmap, PAE when
``IdlePDPT`` exists.  libkvm decides by ``IdlePDPT``'s presence alone, which
picks PAE for every modern non-PAE machine (``libkvm-semantics.md`` §3.6).

Full dumps and raw images: the kernel is linked and loaded at 8 MiB with
kernel VA == PA for the image, so the banner's physical address gives the
displacement directly; the root pointer read there is accepted only when
its recursive PDEs point back at the page directory (``PTDPTDI``) and the
banner translates back to the very bytes found.
"""

import collections
import logging
import struct
from typing import Dict, Optional, Tuple

from volatility3.framework import exceptions
from volatility3.framework.layers import intel

from kvm_vol.core import engine
from kvm_vol.core.i386 import (  # noqa: F401 - KERNEL_SYMBOLS is re-exported
    KERNEL_SYMBOLS, NOPAE, NPDPTEPG, PAE, PAGE_SIZE, PDPT_ALIGN, PG_V, PmapMode, pmap_mode, walk,
)
from kvm_vol.errors import TranslationError
from kvm_vol.layers import coreglue
from kvm_vol.layers.kernel import FreebsdCoreLayer, minidump_banners
from kvm_vol.layers.physical import FreebsdDumpLayer

__all__ = [
    "KERNEL_SYMBOLS", "FreebsdIntel", "FreebsdIntelPAE", "FreebsdMinidumpIntel", "FreebsdMinidumpIntelPAE",
    "layer_class", "kernel_mode", "find_in_minidump", "validate", "process_config", "process_layer_class",
]

vollog = logging.getLogger(__name__)

_U32 = struct.Struct("<I")


class _I386Core(FreebsdCoreLayer):
    """The i386 core space: the walk of :attr:`_mode` from ``page_map_offset``."""

    FREEBSD_ARCH = "i386"
    _mode: PmapMode = NOPAE

    def _open_core(self, dump, file_layer):
        phys = coreglue.phys_for(dump, file_layer)
        return engine.open_space(phys, self.config["page_map_offset"], arch="i386", pae=self._mode.pae,
                                 minidump=self._minidump_rules)


class FreebsdIntel(_I386Core, intel.Intel):
    """i386 non-PAE paging (2 levels, 4 MiB superpages), FreeBSD flavour."""

    _direct_metadata = collections.ChainMap({"os": "FreeBSD"}, intel.Intel._direct_metadata)
    _mode = NOPAE


class FreebsdIntelPAE(_I386Core, intel.IntelPAE):
    """i386 PAE paging (PDPT, 2 MiB superpages, 64-bit frames), FreeBSD flavour."""

    _direct_metadata = collections.ChainMap({"os": "FreeBSD"}, intel.IntelPAE._direct_metadata)
    _mode = PAE


class _MinidumpRules:
    """Kernel VA by the i386 minidump's PTE array; lower addresses by the walk."""

    _minidump_rules = True
    _minidump_arch = "i386"


class FreebsdMinidumpIntel(_MinidumpRules, FreebsdIntel):
    """Non-PAE kernel space of an i386 minidump."""


class FreebsdMinidumpIntelPAE(_MinidumpRules, FreebsdIntelPAE):
    """PAE kernel space of an i386 minidump."""


def layer_class(mode: PmapMode, minidump: bool) -> type:
    if minidump:
        return FreebsdMinidumpIntelPAE if mode.pae else FreebsdMinidumpIntel
    return FreebsdIntelPAE if mode.pae else FreebsdIntel


def kernel_mode(syms: Dict[str, int], read_u32) -> Optional[PmapMode]:
    """The pmap the kernel runs: ``pae_mode`` if the kernel has it, else (before 12) PAE iff ``IdlePDPT``.

    ``read_u32(va)`` reads a kernel int (None when unreadable).
    """
    if "pae_mode" in syms:
        value = read_u32(syms["pae_mode"])
        return None if value is None else pmap_mode(value)
    if PAE.root_symbol in syms:
        return PAE
    if "IdlePTD" in syms or NOPAE.root_symbol in syms:
        return NOPAE
    return None


def _root_symbol(mode: PmapMode, syms: Dict[str, int]) -> Optional[str]:
    for name in ((PAE.root_symbol,) if mode.pae else (NOPAE.root_symbol, "IdlePTD")):
        if name in syms:
            return name
    return None


# -- minidumps -----------------------------------------------------------------


def find_in_minidump(layer: FreebsdDumpLayer, banners: Dict[bytes, str], isf_symbols):
    """``(banner, root, layer class)`` of the kernel in an i386 minidump, or None.

    The kernel's VA comes from the dump's PTE array (no page-table root is
    needed for kernel memory); the root (``IdlePDPT``/``IdlePTD_nopae``, a
    physical address) is read too, for process address spaces.
    """
    dump = layer.dump
    translator = dump.translator()
    for banner, syms in minidump_banners(translator, banners, symbols=isf_symbols):

        def read_u32(va: int) -> Optional[int]:
            try:
                return _U32.unpack(translator.read(va, 4))[0]
            except TranslationError:
                return None

        mode = dump.mode  # the header's paemode: what the pmap section holds
        running = kernel_mode(syms, read_u32)
        if running is not None and running is not mode:
            vollog.warning(f"the minidump's paemode says {mode.name} but the kernel's pae_mode says {running.name}; "
                           "following the dump header")
        name = _root_symbol(mode, syms)
        root = read_u32(syms[name]) if name else None
        if root is None:
            vollog.info("the i386 page-table root is not in the minidump; user address spaces unavailable")
            root = 0
        return banner, root, layer_class(mode, minidump=True)
    return None


# -- full dumps and raw images -----------------------------------------------------


def validate(layer, banner_pa: int, banner: bytes, syms: Dict[str, int]) -> Optional[Tuple[int, type]]:
    """``(root, layer class)`` of the i386 kernel implied by a banner hit, or None if it does not check out.

    ``disp`` = banner PA - ``version``'s VA is 0 for a kernel at its link
    address (KERNBASE == KERNLOAD); it must be a multiple of 2 MiB (the
    smaller superpage) like any loader placement.  The root pointer must be
    a PD page (non-PAE) or a 32-byte-aligned PDPT whose four entries are the
    four contiguous PD pages, the PD's recursive PDEs (``PTDPTDI``) must map
    the PD itself, and the banner must translate back to ``banner_pa``.
    """
    if "version" not in syms or syms["version"] >> 32:
        return None
    disp = banner_pa - syms["version"]
    if disp % PAE.nbpdr:
        return None

    def read(pa: int, n: int) -> bytes:
        try:
            return layer.read(pa, n)
        except exceptions.InvalidAddressException as exc:
            raise TranslationError(pa, "not in the image") from exc

    def read_u32(va: int) -> Optional[int]:
        try:
            return _U32.unpack(read(va + disp, 4))[0]
        except TranslationError:
            return None

    mode = kernel_mode(syms, read_u32)
    if mode is None:
        return None
    name = _root_symbol(mode, syms)
    root = read_u32(syms[name]) if name else None
    if not root:
        return None
    try:
        if mode.pae:
            if root % PDPT_ALIGN:
                return None
            pdptes = struct.unpack(f"<{NPDPTEPG}Q", read(root, NPDPTEPG * 8))
            ptd = pdptes[0] & mode.pg_frame
            if any(not e & PG_V or e & mode.pg_frame != ptd + i * PAGE_SIZE for i, e in enumerate(pdptes)):
                return None
        else:
            if root % PAGE_SIZE:
                return None
            ptd = root
        for i in range(mode.npgptd):
            pde = mode.entry.unpack(read(ptd + (mode.ptdptdi + i) * mode.entry_size, mode.entry_size))[0]
            if not pde & PG_V or pde & mode.pg_frame != ptd + i * PAGE_SIZE:
                return None
        pa, _size = walk(read, root, syms["version"], mode)
    except TranslationError:
        return None
    return (root, layer_class(mode, minidump=False)) if pa == banner_pa else None


# -- process address spaces (kvm_vol.arch) -------------------------------------------

def process_config(kernel_layer, fields) -> Dict[str, int]:
    """The process's root as ``page_map_offset``: ``pmap_get_cr3``, i.e. ``vtophys(pm_pdpt)`` / ``vtophys(pm_pdir)``.

    The pointers are kernel virtual addresses (PDPTs come from a UMA zone, PDs
    from ``kva_alloc``), translated through the kernel layer.  With the 4/4G
    split the process space holds the user mappings (and the trampoline) only.
    """
    mode = getattr(kernel_layer, "_mode", None)
    if not isinstance(mode, PmapMode):
        raise ValueError(f"{kernel_layer.name} is not a FreeBSD/i386 kernel layer")
    va = fields.pdpt if mode.pae else fields.pdir  # kvm_vol.arch's vmspace_fields for i386
    field = "vm_pmap." + mode.pmap_root_field
    if va is None:
        raise ValueError(f"the symbol table has no {field}")
    if not va:
        raise ValueError(f"{field} is NULL")
    try:
        pa, _layer = kernel_layer.translate(va)
    except exceptions.InvalidAddressException as exc:
        raise ValueError(f"{field} {va:#x} does not translate ({exc})") from None
    return {"page_map_offset": pa}


def process_layer_class(kernel_layer) -> type:
    """The walking class of the kernel layer's pmap: never the minidump rules (see the module docstring)."""
    return layer_class(kernel_layer._mode, minidump=False)
