"""Inside ``vol``: make the kernel's ISF from the image when no ISF matches it.

Called by :class:`kvm_vol.layers.kernel.FreebsdKernelStacker` after its
banner scan found a FreeBSD kernel that no installed ISF describes.  If the
image holds the loader's copy of the kernel's symbol table
(:mod:`kvm_vol.symbols.memsyms`), the ISF is built from it and the release's
type pack - only after the pack's offsets agree with the kernel's
self-describing symbols - written to the per-user symbol directory (where
``kvm-vol isf`` would have put it, so later runs find it at once), and
added to Volatility's identifier cache.  Otherwise the reason is recorded
for the one-line stop message.
"""

import logging
import os
import struct
from typing import Callable, Optional

from volatility3.framework import constants, exceptions, interfaces
from volatility3.framework.automagic import symbol_cache

from kvm_vol.errors import KvmVolError
from kvm_vol.layers.physical import FreebsdDumpLayer
from kvm_vol.symbols import imageisf, layoutcheck, memsyms
from kvm_vol.symbols.isf import write_isf

vollog = logging.getLogger(__name__)

__all__ = ["isf_from_image"]


def _phys_reader(layer: interfaces.layers.DataLayerInterface) -> Callable[[int, int], Optional[bytes]]:
    def read_phys(pa: int, length: int) -> Optional[bytes]:
        try:
            return layer.read(pa, length)
        except exceptions.InvalidAddressException:
            return None

    return read_phys


def _kernel_reader(layer, banner_pa: int) -> imageisf.ReadKva:
    if isinstance(layer, FreebsdDumpLayer) and layer.dump.arch == "i386":
        # the loader copies an i386 kernel's ELF32 .symtab too, but memsyms parses ELF64 only
        raise memsyms.NoSymtab("the loader's copy of the symbol table is read for amd64 (ELF64) kernels only, "
                               "and this is an i386 kernel")
    if isinstance(layer, FreebsdDumpLayer) and layer.dump.arch == "arm64":
        # imageisf looks for the image at amd64's KERNSTART; an arm64 kernel starts at its KERNBASE
        raise memsyms.NoSymtab("the loader's copy of the symbol table is read for amd64 kernels only, "
                               "and this is an arm64 kernel")
    if isinstance(layer, FreebsdDumpLayer) and layer.dump.kind == "minidump":
        return imageisf.reader_for_dump(layer.dump)
    read_phys = _phys_reader(layer)
    kernphys = imageisf.find_kernphys(read_phys, imageisf.candidates_below(banner_pa))
    if kernphys is None:
        raise memsyms.NoSymtab("no amd64 kernel ELF header at a 2 MiB boundary below the banner")
    return imageisf.kernel_reader(read_phys, kernphys)


def isf_from_image(layer: interfaces.layers.DataLayerInterface, banner_pa: int, diagnosis: dict) -> bool:
    """Build, install and register the ISF of the kernel in ``layer``; True on success.

    On failure the reason goes into ``diagnosis`` (``"memsyms"``, or
    ``"layout"`` when the pack disagrees with the kernel); nothing raises.
    """
    from kvm_vol.symbols.isfcmd import default_output

    try:
        read_kva = _kernel_reader(layer, banner_pa)
        isf, pack, banner = imageisf.isf_from_memory(read_kva, source={"name": "vol -f image"})
        path = default_output(banner)
        write_isf(isf, path)
    except layoutcheck.LayoutMismatch as exc:
        diagnosis["layout"] = f"the kernel's own symbol table was found in the image, but {exc}"
        return False
    except (KvmVolError, ValueError, struct.error, OverflowError) as exc:
        diagnosis["memsyms"] = str(exc)
        return False
    vollog.info(f"kernel ISF made from the image's symbol table and type pack {pack}: {path}")
    try:
        symbol_cache.SqliteCache(os.path.join(constants.CACHE_PATH, constants.IDENTIFIERS_FILENAME)).update()
    except Exception as exc:  # the cache is Volatility's; a failure here must not stop the run
        vollog.warning(f"could not add {path} to Volatility's identifier cache: {exc}")
        return False
    return True
