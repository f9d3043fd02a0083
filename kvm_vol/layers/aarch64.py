"""FreeBSD/arm64 kernel and process address spaces (Volatility 3 has no AArch64 layer), and how the stacker finds them.

* :class:`FreebsdAArch64` is a linearly mapped Volatility layer served by the
  translation core's arm64 walk (:mod:`kvm_vol.core.engine_arm64`): 4 levels,
  4 KiB or 16 KiB granule (config ``page_size``), two roots as in the MMU:
  ``kernel_page_map_offset`` is the kernel's TTBR1 L0 table
  (``pagetable_l0_ttbr1`` = ``kernel_pmap->pm_l0_paddr``) and
  ``page_map_offset`` the TTBR0 L0 table of the process the layer belongs to
  (``vm_pmap.pm_l0_paddr``).  The kernel's own layer has both equal, which
  means "no user half": the kernel pmap maps nothing below 2**48.  A process
  layer is a copy of the kernel layer's config with another
  ``page_map_offset`` (what :mod:`kvm_vol.arch` does for every architecture).
* :class:`FreebsdMinidumpAArch64` translates the direct map and ``va >=
  kernbase`` by libkvm's arm64 minidump rules (the dump's L3 array and
  ``dmapphys``), because a minidump need not hold the kernel's tables;
  user addresses of a process layer still walk the process's TTBR0 tables.

Addresses are full 64-bit values: arm64 kernel addresses start at
``0xffff000000000000``, whose bit 47 is clear, so Volatility's usual trick
of masking kernel addresses to 48 bits and sign-extending bit 47 would turn
them into user addresses.  The layer's ``maximum_address`` is ``2**64 - 1``,
so its ``address_mask`` keeps every bit and nothing is masked.

Raw images: the banner's physical address gives the kernel's displacement
(the image is linked at KERNBASE and loaded anywhere, page aligned), the
TTBR1 root is ``pagetable_l0_ttbr1`` at that displacement, and it is
accepted only when the banner's virtual address walks back to the very
physical bytes found, trying the 4 KiB and then the 16 KiB granule.
"""

import collections
import logging
import struct
from typing import Dict, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import linear

from kvm_vol.core import arm64 as A
from kvm_vol.core import engine
from kvm_vol.errors import TranslationError
from kvm_vol.layers import coreglue
from kvm_vol.layers.kernel import FreebsdCoreLayer, minidump_banners
from kvm_vol.layers.physical import FreebsdDumpLayer

__all__ = ["FreebsdAArch64", "FreebsdMinidumpAArch64", "find_in_minidump", "validate"]

vollog = logging.getLogger(__name__)

ROOT_SYMBOL = A.ROOT_SYMBOL
_U64 = struct.Struct("<Q")
_U64_MAX = (1 << 64) - 1


class _AArch64Base(linear.LinearlyMappedLayer):
    """The Volatility side of the layer: config, address range, metadata (no walk of its own)."""

    _direct_metadata = collections.ChainMap(
        {"architecture": "AArch64", "os": "FreeBSD"}, {"mapped": True},
        interfaces.layers.TranslationLayerInterface._direct_metadata)

    def __init__(self, context, config_path, name, metadata=None):
        super().__init__(context=context, config_path=config_path, name=name, metadata=metadata)
        self._base_layer = self.config["memory_layer"]
        self._swap_layers: List[str] = []
        self._page_map_offset = self.config["page_map_offset"]
        self._kernel_root = self.config.get("kernel_page_map_offset", self._page_map_offset)
        self._granule = A.granule_for(self.config.get("page_size", A.PAGE_SIZE_4K))

    @property
    def page_size(self) -> int:
        return self._granule.page_size

    @property
    def bits_per_register(self) -> int:
        return 64

    @property
    def minimum_address(self) -> int:
        return 0

    @property
    def maximum_address(self) -> int:
        return _U64_MAX

    @property
    def dependencies(self) -> List[str]:
        return [self._base_layer] + self._swap_layers

    def is_valid(self, offset: int, length: int = 1) -> bool:
        try:
            return all(self._context.layers[layer].is_valid(mapped, mlen)
                       for _, _, mapped, mlen, layer in self.mapping(offset, length))
        except exceptions.InvalidAddressException:
            return False

    def _no_core(self):
        return exceptions.LayerException(
            self.name, f"{self.name}: the arm64 translation needs a FreeBSD dump or a raw image file below it")

    def _translate(self, offset: int):
        raise self._no_core()

    def mapping(self, offset: int, length: int, ignore_errors: bool = False):
        raise self._no_core()

    def _mapping(self, offset: int, length: int, ignore_errors: bool = False):
        raise self._no_core()

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        raise self._no_core()

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.TranslationLayerRequirement(name="memory_layer", optional=False),
            requirements.LayerListRequirement(name="swap_layers", optional=True),
            requirements.IntRequirement(name="page_map_offset", optional=False),
            requirements.IntRequirement(name="kernel_page_map_offset", optional=True),
            requirements.IntRequirement(name="page_size", optional=True, default=A.PAGE_SIZE_4K),
            requirements.IntRequirement(name="kernel_virtual_offset", optional=True),
            requirements.StringRequirement(name="kernel_banner", optional=True),
        ]


class FreebsdAArch64(FreebsdCoreLayer, _AArch64Base):
    """FreeBSD/arm64 address space by the L0-L3 walk (full 64-bit addresses; see the module docstring)."""

    FREEBSD_ARCH = "arm64"

    def _open_core(self, dump, file_layer):
        phys = coreglue.phys_for(dump, file_layer)
        return engine.open_space(phys, self._page_map_offset, arch="arm64", ttbr1=self._kernel_root,
                                 page_size=self._granule.page_size, minidump=self._minidump_rules)

    def _invalid(self, exc: TranslationError) -> exceptions.PagedInvalidAddressException:
        return exceptions.PagedInvalidAddressException(self.name, exc.address, self._granule.page_shift, 0, exc.reason)

    def _translate(self, offset: int) -> Tuple[int, int, str]:
        if self._core is None:
            raise self._no_core()
        try:
            pa, _file_offset = self._core.translate(offset)
        except TranslationError as exc:
            raise self._invalid(exc) from None
        return pa, 1, self._base_layer

    @property
    def dmap_window(self) -> Optional[Tuple[int, int, int]]:
        """``(first VA, end VA, PA of the first VA)`` of the direct map, for readers' fast path.

        A minidump says it in its header; otherwise the first run the
        kernel tables map in ``[DMAP_MIN_ADDRESS, DMAP_MAX_ADDRESS)`` gives
        ``dmap_phys_base`` (the direct map is linear from there).
        """
        if self._core is None:
            return None
        base = self.context.layers[self._base_layer]
        dump = getattr(base, "dump", None)
        if self._minidump_rules and dump is not None:
            hdr = dump.header
            return hdr.dmapbase, hdr.dmapend, hdr.dmapphys
        try:
            for va, pa, _off, _n in self._core.mapping(A.DMAP_MIN_ADDRESS, A.DMAP_MAX_ADDRESS - A.DMAP_MIN_ADDRESS,
                                                         True):
                return A.DMAP_MIN_ADDRESS, A.DMAP_MAX_ADDRESS, pa - (va - A.DMAP_MIN_ADDRESS)
        except TranslationError:
            return None
        return None


class FreebsdMinidumpAArch64(FreebsdAArch64):
    """The direct map and kernel VA by libkvm's arm64 minidump rules; user addresses by the walk."""

    _minidump_rules = True
    _minidump_arch = "arm64"


# ----------------------------------------------------------------------
# the stacker's arm64 paths (called by kvm_vol.layers.kernel.FreebsdKernelStacker)


def find_in_minidump(layer: FreebsdDumpLayer, banners: Dict[bytes, str], isf_symbols):
    """``(banner, root, layer class, extra config)`` of the kernel in an arm64 minidump, or None.

    The banner must read back through the minidump rules at the ISF's
    ``version``; the TTBR1 root is where ``pagetable_l0_ttbr1`` lies (0 when
    the ISF lacks it: then only the kernel half is readable, which is all a
    kernel layer needs).
    """
    dump = layer.dump
    translator = dump.translator()
    for banner, syms in minidump_banners(translator, banners, lambda va: va & _U64_MAX, symbols=isf_symbols):
        root = 0
        if ROOT_SYMBOL in syms:
            try:
                root = translator.kvatop(syms[ROOT_SYMBOL] & _U64_MAX)[1]
            except TranslationError:
                vollog.info("%s is not in the minidump; user address spaces unavailable", ROOT_SYMBOL)
        return banner, root, FreebsdMinidumpAArch64, {"kernel_page_map_offset": root, "page_size": dump.page_size}
    return None


def validate(layer, banner_pa: int, banner: bytes, syms: Dict[str, int]):
    """``(root, layer class, extra config)`` implied by a banner found at ``banner_pa``, or None.

    The kernel image is linked at KERNBASE and loaded at a page-aligned
    physical address, so ``PA = VA - KERNBASE + disp`` inside it; the root
    is ``pagetable_l0_ttbr1`` there, accepted when the banner walks back.
    """
    if "version" not in syms or ROOT_SYMBOL not in syms:
        return None
    kernbase = syms.get("kernbase", A.KERNBASE) & _U64_MAX
    version = syms["version"] & _U64_MAX
    if not A.KERNBASE <= kernbase <= version:
        return None
    disp = banner_pa - (version - kernbase)
    root = (syms[ROOT_SYMBOL] & _U64_MAX) - kernbase + disp

    def read_u64(pa: int) -> int:
        try:
            return _U64.unpack(layer.read(pa, 8))[0]
        except exceptions.InvalidAddressException as exc:
            raise TranslationError(pa, str(exc)) from None

    for granule in (A.GRANULE_4K, A.GRANULE_16K):
        if disp % granule.page_size or root % granule.page_size or root < 0:
            continue
        try:
            pa, _size = A.walk(read_u64, None, root, version, granule)
        except TranslationError:
            continue
        if pa == banner_pa:
            return root, FreebsdAArch64, {"kernel_page_map_offset": root, "page_size": granule.page_size}
    return None
