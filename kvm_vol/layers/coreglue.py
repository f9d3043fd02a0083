"""Glue between the Volatility layers and the translation core (:mod:`kvm_vol.core.engine`).

Volatility rebuilds layers from their config alone (the stacker works in a
cloned context, process layers are copies of the kernel layer's config with
another ``page_map_offset``), so a layer keeps nothing but its config and
looks up the per-file state here: the C core's mapping of the dump file and
its bitmap index are built once per file, keyed by path, size and mtime, and
shared by the physical layer, the kernel layer and every process layer.

The C core reads the dump file itself (mmap), so it is used only when the
bottom ``FileLayer`` is a local file whose size is the layer's size (not,
say, a file Volatility decompresses on the fly); otherwise the twin reads
through the Volatility layer, with the same results.
"""

import os
from typing import Dict, Optional, Tuple
from urllib.parse import unquote, urlparse

from volatility3.framework import interfaces
from volatility3.framework.layers import physical

from kvm_vol.core import engine

__all__ = ["local_path", "phys_for", "space_for"]

_PHYS_CACHE: Dict[Tuple, object] = {}


def local_path(file_layer: interfaces.layers.DataLayerInterface) -> Optional[str]:
    """The local file behind a Volatility ``FileLayer``, if its bytes are the file's bytes."""
    if not isinstance(file_layer, physical.FileLayer):
        return None
    location = file_layer.config.get("location", "")
    parsed = urlparse(location)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    size = file_layer.maximum_address + 1
    if st.st_size != size:
        # block devices report 0; anything else (decompressed on the fly) is not the file
        try:
            with open(path, "rb") as fh:
                if fh.seek(0, os.SEEK_END) != size:
                    return None
        except OSError:
            return None
    return path


def phys_for(dump, file_layer: interfaces.layers.DataLayerInterface):
    """The core's physical view of ``dump`` (parsed from ``file_layer``), built once per file."""
    path = local_path(file_layer)
    native = engine.use_native()
    if path is not None:
        st = os.stat(path)
        key: Tuple = (path, st.st_size, st.st_mtime_ns, st.st_ino, native, id(dump))
    else:
        key = (file_layer.config.get("location", file_layer.name), file_layer.maximum_address + 1, native,
               id(dump))
    phys = _PHYS_CACHE.get(key)
    if phys is None:
        phys = engine.open_phys(dump, path)
        _PHYS_CACHE[key] = phys
    return phys


def space_for(layer, dump, file_layer, minidump: bool):
    """The core address space of an Intel32e-style ``layer`` (its ``page_map_offset`` as root).

    Kernel addresses arrive masked to 48 bits (Volatility's convention), so
    the space sign-extends them.
    """
    phys = phys_for(dump, file_layer)
    return engine.open_space(phys, layer.config["page_map_offset"], 4, canon48=True, minidump=minidump)
