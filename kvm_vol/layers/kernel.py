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
banner translates back to the very bytes found.  i386 and arm64 kernels take
their own paths (:mod:`kvm_vol.layers.kernel_i386`, :mod:`kvm_vol.layers.aarch64`),
chosen by the minidump's architecture or by the root symbols the ISF carries;
an architecture's extra layer config (arm64: the TTBR1 root and the page
size) comes back as a fourth element of the stacker's ``found`` tuple.
"""

import collections
import json
import logging
import re
import struct
from typing import Dict, Iterable, Optional, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.layers import intel, physical, resources, scanners

from kvm_vol.core import amd64 as A
from kvm_vol.core.amd64 import canonical
from kvm_vol.core.arm64 import KERNEL_SYMBOLS as ARM64_KERNEL_SYMBOLS
from kvm_vol.core.i386 import KERNEL_SYMBOLS as I386_KERNEL_SYMBOLS
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.layers import coreglue
from kvm_vol.layers.physical import FreebsdDumpLayer, dump_for_layer
from kvm_vol.symbols import layoutcheck, volsym

vollog = logging.getLogger(__name__)

#: Any FreeBSD kernel banner, for the "which kernel is this?" diagnosis.
BANNER_RE = re.compile(rb"FreeBSD [0-9]+\.[0-9]+-[A-Z0-9.-]+ [ -~]{1,200}\n")



class FreebsdCoreLayer:
    """Mixin for a Volatility Intel-family layer served by the translation core.

    ``_translate``, ``mapping`` and ``read`` go to :mod:`kvm_vol.core.engine`
    (C, or the pure-Python twin), so a small read is one core call instead of
    a Python page walk per page.  When the base layer is neither a FreeBSD
    dump layer nor a file (some other Volatility layer), Volatility's own
    walk serves instead.  :meth:`_open_core` builds the core space of the
    layer's architecture (amd64 here; the i386 layers override it).
    """

    #: Kernel VA (and the direct map) by the minidump's pmap section (libkvm's rules).
    _minidump_rules = False
    #: With :attr:`_minidump_rules`: the ``arch`` the minidump must be (None: any FreeBSD minidump).
    _minidump_arch: Optional[str] = None

    def __init__(self, context, config_path, name, metadata=None):
        super().__init__(context, config_path, name, metadata)
        sources = self._core_sources()
        self._core = None if sources is None else self._open_core(*sources)

    def _open_core(self, dump, file_layer):
        """The core space: amd64's 4-level walk from ``page_map_offset`` (48-bit addresses)."""
        return coreglue.space_for(self, dump, file_layer, self._minidump_rules)

    def _core_sources(self):
        """``(dump, file layer)`` for the core, or None to use Volatility's walk.

        A layer of minidump rules refuses (TypeError) a memory layer that is
        not a FreeBSD minidump of its :attr:`_minidump_arch`.
        """
        base = self.context.layers[self._base_layer]
        if self._minidump_rules:
            arch = self._minidump_arch
            if not isinstance(base, FreebsdDumpLayer) or base.dump.kind != "minidump" or \
                    (arch is not None and base.dump.arch != arch):
                what = "FreeBSD minidump" if arch is None else f"FreeBSD/{arch} minidump"
                raise TypeError(f"{self.name}: memory_layer {self._base_layer} is not a {what}")
        if isinstance(base, FreebsdDumpLayer):
            return base.dump, self.context.layers[base.config["base_layer"]]
        if isinstance(base, physical.FileLayer):
            try:
                return dump_for_layer(base), base
            except DumpFormatError:
                return None  # not a file kvm-vol parses: Volatility's walk over the layer
        return None

    def _invalid(self, exc: TranslationError) -> exceptions.PagedInvalidAddressException:
        return exceptions.PagedInvalidAddressException(self.name, exc.address, 12, 0, exc.reason)

    def _translate(self, offset: int) -> Tuple[int, int, str]:
        if self._core is None:
            return super()._translate(offset)
        try:
            pa, _file_offset = self._core.translate(offset)
        except TranslationError as exc:
            raise self._invalid(exc) from None
        return pa, 1 << 12, self._base_layer

    def mapping(self, offset: int, length: int, ignore_errors: bool = False) -> Iterable[Tuple[int, int, int, int, str]]:
        """Maximal ``(offset, length, mapped_offset, mapped_length, layer)`` runs, from the core."""
        if self._core is None:
            yield from super().mapping(offset, length, ignore_errors)
            return
        if length == 0:
            try:
                pa, _size, layer = self._translate(offset)
            except exceptions.InvalidAddressException:
                if not ignore_errors:
                    raise
                return
            yield offset, 0, pa, 0, layer
            return
        try:
            for va, pa, _file_offset, n in self._core.mapping(offset, length, ignore_errors):
                yield va, n, pa, n, self._base_layer
        except TranslationError as exc:
            raise self._invalid(exc) from None

    def _mapping(self, offset: int, length: int, ignore_errors: bool = False):
        # Intel.mapping() calls self._mapping(): without a core that must be
        # Volatility's walk, not mapping() again (which would recurse).
        if self._core is None:
            return super()._mapping(offset, length, ignore_errors)
        return self.mapping(offset, length, ignore_errors)

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        """``length`` bytes at ``offset`` in one core call; the first bad page raises unless ``pad``."""
        core = self._core
        if core is None:
            return super().read(offset, length, pad)
        try:
            return core.read(offset, length, pad)
        except TranslationError as exc:
            raise self._invalid(exc) from None


class FreebsdIntel32e(FreebsdCoreLayer, intel.Intel32e):
    """amd64 4-level paging, FreeBSD flavour, served by the translation core (:class:`FreebsdCoreLayer`)."""

    _direct_metadata = collections.ChainMap({"os": "FreeBSD"}, intel.Intel32e._direct_metadata)
    #: The reader facts of this layer's architecture: :data:`kvm_vol.arch.REGISTRY` key.
    FREEBSD_ARCH = "amd64"


class FreebsdMinidumpIntel32e(FreebsdIntel32e):
    """Kernel VA by libkvm's minidump rules; everything else by a page walk."""

    _minidump_rules = True


# ----------------------------------------------------------------------
# symbols of candidate kernels

_ISF_SYMBOLS: Dict[str, Dict[str, int]] = {}
#: Per ISF: the values of the kernel's self-describing symbols its types predict.
_ISF_LAYOUTS: Dict[str, Dict[str, Optional[int]]] = {}


def isf_symbols(url: str) -> Dict[str, int]:
    """Addresses of the few symbols the stacker needs, from an ISF (cached)."""
    found = _ISF_SYMBOLS.get(url)
    if found is None:
        with resources.ResourceAccessor().open(url) as fh:
            data = json.load(fh)
        syms = data.get("symbols", {})
        names = ("version", "KPML4phys", "kernbase", "dump_avail", "phys_avail") + I386_KERNEL_SYMBOLS + ARM64_KERNEL_SYMBOLS
        found = {name: syms[name]["address"] for name in names if name in syms}
        found.update({name: syms[name]["address"] for name in layoutcheck.SYMBOLS if name in syms})
        _ISF_SYMBOLS[url] = found
        _ISF_LAYOUTS[url] = layoutcheck.expectations(data)
    return found


def layout_problem(layer: interfaces.layers.DataLayerInterface, url: str) -> Optional[str]:
    """Why the types of the ISF at ``url`` cannot be trusted for the kernel in ``layer``, or None.

    Reads the kernel's self-describing ``const int`` symbols (proc_off_*,
    thread_off_*, pcb_size) through the new kernel layer and compares them
    with the ISF's struct layouts (:mod:`kvm_vol.symbols.layoutcheck`).  An
    ISF from the kernel's own DWARF always agrees; a type pack or an ISF of
    another build may not, and is then refused rather than read as garbage.
    """
    syms = isf_symbols(url)

    def read_int(name: str) -> Optional[int]:
        if name not in syms:
            return None
        try:
            return layoutcheck.read_int_le(layer.read(canonical(syms[name]), 4))
        except exceptions.InvalidAddressException:
            return None

    try:
        layoutcheck.require_match(f"the struct layouts of {url.rsplit('/', 1)[-1]}", _ISF_LAYOUTS.get(url, {}), read_int)
    except layoutcheck.LayoutMismatch as exc:
        return str(exc)
    return None


def minidump_banners(translator, banners: Dict[bytes, str], address=lambda va: va,
                     symbols=None) -> Iterable[Tuple[bytes, Dict[str, int]]]:
    """``(banner, ISF symbols)`` of each known kernel whose banner reads back in a minidump.

    ``translator`` is the dump's own (libkvm's minidump rules: no page-table
    root needed); ``address`` turns an ISF symbol address into the kernel
    VA (amd64 sign-extends Volatility's 48-bit offsets); ``symbols(url)``
    gives an ISF's symbols (default :func:`isf_symbols`).  Every
    architecture's stacker path starts from this; what it then reads (the
    page-table root) is its own.
    """
    for banner, url in banners.items():
        syms = (symbols or isf_symbols)(url)
        if "version" not in syms:
            continue
        try:
            if translator.read(address(syms["version"]), len(banner)) != banner:
                continue
        except TranslationError:
            continue
        yield banner, syms


#: Why the last stacking attempt found no kernel (read by the symbol finder
#: to give ``vol`` users one precise line instead of a page of requirements).
LAST_DIAGNOSIS: Dict[str, str] = {}


def _diagnose(layer: interfaces.layers.DataLayerInterface, context, banners: Dict[bytes, str]) -> None:
    """Record which FreeBSD kernel is in ``layer`` when none could be used.

    Two different failures need two different messages: no ISF carries the
    banner found (the user must make one), or an ISF does but the kernel's
    addresses do not translate (damaged dump, or another build's ISF).
    """
    scanner = scanners.RegExScanner(BANNER_RE.pattern)
    for offset in layer.scan(context=context, scanner=scanner):
        text = layer.read(offset, 256, pad=True)
        line = text.split(b"\n")[0]
        # Shown to the user: a C string, with anything unprintable escaped (a
        # damaged image must not write NULs or terminal escapes to the screen).
        LAST_DIAGNOSIS["banner"] = "".join(c if c.isprintable() else f"\\x{ord(c):02x}"
                                           for c in line.split(b"\0")[0].decode("latin-1"))
        LAST_DIAGNOSIS["offset"] = hex(offset)
        # An ISF's banner is the whole `version` string: newvers.sh's release line,
        # and usually the builder/object-directory line that names the architecture.
        isf = next((url for banner, url in banners.items() if text.startswith(banner)), None)
        if isf is None:
            isf = banners.get(line + b"\n")
        if isf:
            LAST_DIAGNOSIS["isf"] = isf
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
                _diagnose(layer, context, banners)
            if not cls._isf_from_image(layer):
                return None
            banners = volsym.freebsd_banners()
            if isinstance(layer, FreebsdDumpLayer) and layer.dump.kind == "minidump":
                found = cls._find_in_minidump(layer, banners)
            else:
                found = cls._find_by_scan(context, layer, banners, progress_callback)
            if found is None:
                return None
        banner, dtb, layer_class, *extra = found  # extra: config an architecture adds (arm64: its two roots)
        new_name = context.layers.free_layer_name("FreebsdKernelLayer")
        path = interfaces.configuration.path_join
        context.config[path(new_name, "memory_layer")] = layer_name
        context.config[path(new_name, "page_map_offset")] = dtb
        context.config[path(new_name, "kernel_virtual_offset")] = 0
        context.config[path(new_name, "kernel_banner")] = banner.decode("latin-1")
        for key, value in (extra[0] if extra else {}).items():
            context.config[path(new_name, key)] = value
        vollog.debug(f"FreeBSD kernel {banner!r} with page-table root at {dtb:#x} ({layer_class.__name__})")
        kernel_layer = layer_class(context, new_name, new_name, metadata={"os": "FreeBSD"})
        problem = layout_problem(kernel_layer, banners[banner])
        if problem is not None:
            LAST_DIAGNOSIS["layout"] = f"kernel \"{banner.decode('latin-1').splitlines()[0]}\": {problem}"
            vollog.warning(LAST_DIAGNOSIS["layout"])
            return None
        return kernel_layer

    @staticmethod
    def _isf_from_image(layer) -> bool:
        """A FreeBSD kernel no ISF describes: make its ISF from the image's own symbol table.

        Only when the banner scan found a kernel that no installed ISF
        carries (:mod:`kvm_vol.layers.memisf` says why it could not, if so).
        """
        if "banner" not in LAST_DIAGNOSIS or "isf" in LAST_DIAGNOSIS:
            return False
        from kvm_vol.layers import memisf

        return memisf.isf_from_image(layer, int(LAST_DIAGNOSIS["offset"], 16), LAST_DIAGNOSIS)

    # -- minidumps ---------------------------------------------------------
    @classmethod
    def _find_in_minidump(cls, layer: FreebsdDumpLayer, banners: Dict[bytes, str]):
        if layer.dump.arch == "i386":
            from kvm_vol.layers import kernel_i386

            return kernel_i386.find_in_minidump(layer, banners, isf_symbols)
        if layer.dump.arch == "arm64":
            from kvm_vol.layers import aarch64

            return aarch64.find_in_minidump(layer, banners, isf_symbols)
        translator = layer.dump.translator()
        for banner, syms in minidump_banners(translator, banners, canonical):
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
            if ARM64_KERNEL_SYMBOLS[0] in syms:  # an arm64 kernel (pagetable_l0_ttbr1)
                from kvm_vol.layers import aarch64

                found = aarch64.validate(layer, offset, banner, syms)
                if found is not None:
                    return (banner,) + found
                continue
            if "KPML4phys" not in syms:  # an i386 kernel (IdlePTD_nopae / IdlePDPT, pae_mode)
                from kvm_vol.layers import kernel_i386

                found = kernel_i386.validate(layer, offset, banner, syms)
                if found is not None:
                    return (banner,) + found
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
