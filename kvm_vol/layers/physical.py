"""Physical address spaces of FreeBSD dump files, and the stacker that finds them.

One layer class serves every container :mod:`kvm_vol.formats` parses
(minidump, ELF full dump, either behind a kerneldumpheader): each exposes
``phys_runs()``, which becomes the segment table of a Volatility
``SegmentedLayer``.  Raw images need no layer of ours: Volatility's
``FileLayer`` already is their physical address space.
"""

import collections
import logging
import os
import sys
from typing import Dict, Optional, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.layers import physical, segmented

from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol import formats
from kvm_vol.formats.source import CallbackSource, FileSource, Source
from kvm_vol.layers import coreglue

vollog = logging.getLogger(__name__)

# Parsed dumps by (location, size): the stacker parses in a cloned context
# and Volatility then rebuilds the layer from config, so each file would
# otherwise be parsed twice per run.
_DUMP_CACHE: Dict[Tuple[str, int], "formats.Dump"] = {}


def fatal(message: str) -> None:
    """Stop a ``vol`` run with a one-line message (no traceback).

    Stackers and automagics run inside ``except Exception`` blocks that only
    log at -vvv, so an evidence problem would otherwise surface as a long
    "Unsatisfied requirement" text that hides the cause.  ``SystemExit`` is
    not an ``Exception``; it reaches the top and ``vol`` exits with status 1.
    Outside the ``vol`` CLI (library use) the message is logged instead.
    """
    if "volatility3.cli" in sys.modules:
        raise SystemExit(f"kvm-vol: {message}")
    vollog.error(message)


def _layer_name_for_errors(layer: interfaces.layers.DataLayerInterface) -> str:
    location = layer.config.get("location", "") if hasattr(layer, "config") else ""
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(location).path)
    return location or layer.name


def source_for_layer(layer: interfaces.layers.DataLayerInterface) -> Source:
    """A read-only :class:`~kvm_vol.formats.source.Source` over a Volatility layer.

    A ``FileLayer`` over a local file gets kvm-vol's own read-only file
    source (mmap/pread): Volatility's FileLayer seeks and reads a shared file
    object without a lock unless its threading mode is on, so reads from two
    threads could get each other's bytes.  Other layers are read through.
    """
    from kvm_vol.layers.coreglue import local_path

    path = local_path(layer)
    if path is not None:
        return FileSource.open(path)
    size = layer.maximum_address + 1

    def read(offset: int, length: int) -> bytes:
        if offset >= size or length <= 0:
            return b""
        return layer.read(offset, min(length, size - offset))

    return CallbackSource(read, size, _layer_name_for_errors(layer))


def dump_for_layer(layer: interfaces.layers.DataLayerInterface) -> "formats.Dump":
    """Parse (once per file) the dump container in ``layer``; raises DumpFormatError."""
    key = (layer.config.get("location", layer.name), layer.maximum_address + 1)
    dump = _DUMP_CACHE.get(key)
    if dump is None:
        dump = formats.detect(source_for_layer(layer))
        _DUMP_CACHE[key] = dump
    return dump


class FreebsdDumpLayer(segmented.SegmentedLayer):
    """Physical memory of a FreeBSD minidump or ELF full dump.

    Addresses are physical; pages that are not in the dump (not dumped by a
    minidump, dump_avail holes, gaps between PT_LOADs) are invalid and raise
    ``InvalidAddressException``, never read as zeros.
    """

    # "os" makes the Windows stacker give up at once.  No "architecture":
    # this is a physical address space, and claiming Intel64 would let it
    # satisfy a plugin's kernel layer requirement when no kernel was found.
    _direct_metadata = collections.ChainMap(
        {"os": "FreeBSD"},
        segmented.SegmentedLayer._direct_metadata,
    )

    def __init__(self, context, config_path, name, metadata=None):
        self._dump = None
        self._core = None
        super().__init__(context, config_path, name, metadata)

    def _load_segments(self) -> None:
        base = self.context.layers[self._base_layer]
        self._dump = dump_for_layer(base)
        self._segments = [(pa, off, length, length) for pa, off, length in self._dump.phys_runs()]
        if not self._segments:
            raise DumpFormatError(_layer_name_for_errors(base), "the dump holds no physical memory")

    @property
    def dump(self) -> "formats.Dump":
        """The parsed container (header fields, pmap section, msgbuf ...)."""
        return self._dump

    @property
    def core(self):
        """The translation core's view of this dump (C or twin; built once per file, see coreglue)."""
        if self._core is None:
            self._core = coreglue.phys_for(self._dump, self.context.layers[self._base_layer])
        return self._core

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        """Physical memory in one core call; a byte not in the dump raises unless ``pad`` (zeros)."""
        try:
            return self.core.read(offset, length, pad)
        except TranslationError as exc:
            raise exceptions.InvalidAddressException(self.name, exc.address, exc.reason) from None


class FreebsdDumpStacker(interfaces.automagic.StackerLayerInterface):
    """Recognises FreeBSD minidumps and ELF full dumps (optionally behind a kerneldumpheader).

    ``stack_order`` 9 runs before the generic ELF stacker (10), which would
    otherwise claim FreeBSD full dumps without marking them as FreeBSD.
    """

    stack_order = 9

    @classmethod
    def stack(cls, context, layer_name, progress_callback=None) -> Optional[interfaces.layers.DataLayerInterface]:
        layer = context.layers[layer_name]
        if not isinstance(layer, physical.FileLayer):
            return None
        try:
            dump = dump_for_layer(layer)
        except DumpFormatError as exc:
            fatal(str(exc))
            return None
        except exceptions.InvalidAddressException:
            return None
        if dump.kind == "raw":
            return None
        new_name = context.layers.free_layer_name("FreebsdDumpLayer")
        context.config[interfaces.configuration.path_join(new_name, "base_layer")] = layer_name
        vollog.debug(f"FreeBSD {dump.kind} dump recognised in {layer_name}")
        return FreebsdDumpLayer(context, new_name, new_name)


class FreebsdCompressedStacker(interfaces.automagic.StackerLayerInterface):
    """``vmcore.N.gz`` / ``.zst``, or a gzip/zstd dump behind a kerneldumpheader: read a decompressed copy.

    The copy is kept in kvm-vol's cache (:mod:`kvm_vol.formats.compressed`).

    Runs first (``stack_order`` 8) and puts a plain ``FileLayer`` over the
    cached copy on top of the compressed file, so every other stacker sees an
    ordinary dump.  The note says where the copy is and how big it is.
    """

    stack_order = 8

    @classmethod
    def stack(cls, context, layer_name, progress_callback=None) -> Optional[interfaces.layers.DataLayerInterface]:
        from kvm_vol.formats import compressed

        layer = context.layers[layer_name]
        if not isinstance(layer, physical.FileLayer):
            return None
        # Read the file itself: Volatility's FileLayer already un-gzips, but
        # through a GzipFile that restarts from byte 0 on every backward seek.
        path = _layer_name_for_errors(layer)
        try:
            region = compressed.compressed_region(path)  # a .gz/.zst file, or a stream behind a kerneldumpheader
        except OSError:
            return None
        except DumpFormatError as exc:
            fatal(str(exc))
            return None
        if region is None:
            return None
        try:
            copy = compressed.decompressed_copy(path, progress_callback, region=region)
        except DumpFormatError as exc:
            fatal(str(exc))
            return None
        except OSError as exc:  # e.g. the cache's filesystem is full (no half copy is left behind)
            fatal(f"{path}: cannot write its decompressed copy under {compressed.cache_dir()}: {exc.strerror or exc}")
            return None
        vollog.warning(f"kvm-vol: reading {path} through its decompressed copy {copy} "
                       f"({os.path.getsize(copy) >> 20} MiB, kept for later runs)")
        new_name = context.layers.free_layer_name("FreebsdDecompressed")
        context.config[interfaces.configuration.path_join(new_name, "location")] = copy.as_uri()
        return physical.FileLayer(context, new_name, new_name)
