"""FreeBSD/amd64 kernel virtual address spaces and the stacker that builds them.

* :class:`FreebsdIntel32e` is Volatility's 4-level walker, marked FreeBSD.  Used
  for ELF full dumps and raw images, with the kernel PML4 from ``KPML4phys``.
* :class:`FreebsdMinidumpIntel32e` translates kernel addresses the way libkvm
  reads a minidump (the dump's pmap section from the header's kernbase, the
  direct map as ``pa = va - dmapbase``), because a minidump need not contain
  the kernel's PML4/PDP pages.  Other addresses (user space of a process
  layer) go through the ordinary walk from ``page_map_offset``.

:class:`FreebsdKernelStacker` finds the kernel: for minidumps it reads each
known FreeBSD banner's ``version`` address through the pmap rules; for other
images it scans physical memory for the banners, derives the kernel's
physical displacement from where the banner lies, reads ``KPML4phys`` there,
and accepts the PML4 only if its recursive slot points back at itself and the
banner translates back to the very bytes found.
"""

import collections
import json
import logging
import re
import struct
from typing import Dict, Iterable, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.layers import intel, resources, scanners

from kvm_vol.core import amd64 as A
from kvm_vol.errors import TranslationError
from kvm_vol.layers.physical import FreebsdDumpLayer
from kvm_vol.symbols import volsym

vollog = logging.getLogger(__name__)

_CANONICAL_HIGH = 0xFFFF000000000000
#: Any FreeBSD kernel banner, for the "which kernel is this?" diagnosis.
BANNER_RE = re.compile(rb"FreeBSD [0-9]+\.[0-9]+-[A-Z0-9.-]+ [ -~]{1,200}\n")


def canonical(va: int) -> int:
    """Sign-extend a 48-bit address (Volatility masks symbol offsets to 48 bits)."""
    return va | _CANONICAL_HIGH if va & (1 << 47) else va


class FreebsdIntel32e(intel.Intel32e):
    """amd64 4-level paging, FreeBSD flavour (no Linux/Windows PTE mixins)."""

    _direct_metadata = collections.ChainMap({"os": "FreeBSD"}, intel.Intel32e._direct_metadata)


class FreebsdMinidumpIntel32e(FreebsdIntel32e):
    """Kernel VA by libkvm's minidump rules; everything else by a page walk."""

    def __init__(self, context, config_path, name, metadata=None):
        super().__init__(context, config_path, name, metadata)
        phys = self.context.layers[self._base_layer]
        if not isinstance(phys, FreebsdDumpLayer) or phys.dump.kind != "minidump":
            raise TypeError(f"{name}: memory_layer {self._base_layer} is not a FreeBSD minidump")
        self._md = phys.dump.translator()
        header = phys.dump.header
        self._md_kernbase = header.kernbase
        self._dmap = (header.dmapbase, header.dmapend)

    def _translate(self, offset: int) -> Tuple[int, int, str]:
        va = canonical(offset)
        if va >= self._md_kernbase or self._dmap[0] <= va < self._dmap[1]:
            try:
                _file_off, pa, _n = self._md.kvatop(va)
            except TranslationError as exc:
                raise exceptions.PagedInvalidAddressException(
                    self.name, offset, 12, 0, exc.reason) from None
            return pa, 1 << 12, self._base_layer
        return super()._translate(offset)


# ----------------------------------------------------------------------
# symbols of candidate kernels

_ISF_SYMBOLS: Dict[str, Dict[str, int]] = {}


def isf_symbols(url: str) -> Dict[str, int]:
    """Addresses of the few symbols the stacker needs, from an ISF (cached)."""
    found = _ISF_SYMBOLS.get(url)
    if found is None:
        with resources.ResourceAccessor().open(url) as fh:
            data = json.load(fh)
        syms = data.get("symbols", {})
        found = {name: syms[name]["address"] for name in ("version", "KPML4phys", "kernbase") if name in syms}
        _ISF_SYMBOLS[url] = found
    return found


#: Why the last stacking attempt found no kernel (read by the symbol finder
#: to give ``vol`` users one precise line instead of a page of requirements).
LAST_DIAGNOSIS: Dict[str, str] = {}


def _diagnose(layer: interfaces.layers.DataLayerInterface, context) -> None:
    """Record which FreeBSD kernel is in ``layer`` when no ISF matched it."""
    scanner = scanners.RegExScanner(BANNER_RE.pattern)
    for offset in layer.scan(context=context, scanner=scanner):
        text = layer.read(offset, 256, pad=True).split(b"\n")[0].decode("latin-1")
        LAST_DIAGNOSIS["banner"] = text
        LAST_DIAGNOSIS["offset"] = hex(offset)
        return


class FreebsdKernelStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks a FreeBSD kernel layer on a physical layer holding a known kernel."""

    stack_order = 30  # before the Linux (34/35), Mac (35) and Windows (40) stackers
    exclusion_list = ["linux", "mac", "windows"]

    @classmethod
    def stack(cls, context, layer_name, progress_callback=None):
        layer = context.layers[layer_name]
        if isinstance(layer, intel.Intel):
            return None
        LAST_DIAGNOSIS.clear()
        banners = volsym.freebsd_banners()
        if isinstance(layer, FreebsdDumpLayer) and layer.dump.kind == "minidump":
            found = cls._find_in_minidump(layer, banners)
        else:
            found = cls._find_by_scan(context, layer, banners, progress_callback)
        if found is None:
            if isinstance(layer, FreebsdDumpLayer) or banners:
                _diagnose(layer, context)
            return None
        banner, dtb, layer_class = found
        new_name = context.layers.free_layer_name("FreebsdKernelLayer")
        path = interfaces.configuration.path_join
        context.config[path(new_name, "memory_layer")] = layer_name
        context.config[path(new_name, "page_map_offset")] = dtb
        context.config[path(new_name, "kernel_virtual_offset")] = 0
        context.config[path(new_name, "kernel_banner")] = banner.decode("latin-1")
        vollog.debug(f"FreeBSD kernel {banner!r} with PML4 at {dtb:#x} ({layer_class.__name__})")
        return layer_class(context, new_name, new_name, metadata={"os": "FreeBSD"})

    # -- minidumps ---------------------------------------------------------
    @classmethod
    def _find_in_minidump(cls, layer: FreebsdDumpLayer, banners: Dict[bytes, str]):
        translator = layer.dump.translator()
        for banner, url in banners.items():
            syms = isf_symbols(url)
            if "version" not in syms:
                continue
            try:
                data = translator.read(canonical(syms["version"]), len(banner))
            except TranslationError:
                continue
            if data != banner:
                continue
            dtb = 0
            if "KPML4phys" in syms:
                try:
                    dtb = struct.unpack("<Q", translator.read(canonical(syms["KPML4phys"]), 8))[0]
                except TranslationError:
                    vollog.info("KPML4phys is not in the minidump; user address spaces unavailable")
            return banner, dtb, FreebsdMinidumpIntel32e
        return None

    # -- full dumps and raw images --------------------------------------------
    @classmethod
    def _find_by_scan(cls, context, layer, banners: Dict[bytes, str], progress_callback):
        if not banners:
            return None
        mss = scanners.MultiStringScanner(list(banners))
        for offset, banner in layer.scan(context=context, scanner=mss, progress_callback=progress_callback):
            syms = isf_symbols(banners[banner])
            dtb = cls._validate(layer, offset, banner, syms)
            if dtb is not None:
                return banner, dtb, FreebsdIntel32e
        return None

    @staticmethod
    def _validate(layer, banner_pa: int, banner: bytes, syms: Dict[str, int]) -> Optional[int]:
        """The kernel PML4 implied by a banner hit, or None if it does not check out."""
        if "version" not in syms or "KPML4phys" not in syms:
            return None
        kernbase = canonical(syms.get("kernbase", A.KERNBASE))
        version = canonical(syms["version"])
        # The image is linked at KERNSTART and loaded at kernphys (2 MiB
        # aligned): PA = VA - KERNBASE + disp, disp = kernphys - KERNLOAD.
        disp = banner_pa - (version - kernbase)
        if disp % (1 << 21):
            return None
        try:
            raw = layer.read(canonical(syms["KPML4phys"]) - kernbase + disp, 8)
        except exceptions.InvalidAddressException:
            return None
        dtb = struct.unpack("<Q", raw)[0]
        if dtb == 0 or dtb & 0xFFF or not layer.is_valid(dtb, 4096):
            return None

        def read_u64(pa: int) -> int:
            return struct.unpack("<Q", layer.read(pa, 8))[0]

        try:
            if read_u64(dtb + 8 * A.PML4PML4I) & A.PG_FRAME != dtb:
                return None
            pa, _size = A.walk(read_u64, dtb, version)
        except (TranslationError, exceptions.InvalidAddressException):
            return None
        return dtb if pa == banner_pa else None
