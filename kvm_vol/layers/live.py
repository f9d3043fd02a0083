"""Live FreeBSD memory: ``/dev/mem`` (physical) and ``/dev/kmem`` (kernel virtual).

What the FreeBSD driver does (``sys/dev/mem/memdev.c``, ``sys/amd64/amd64/mem.c``):

* Both devices are ``root:kmem 0640``.  Reading needs only that file
  permission (``PRIV_KMEM_READ`` is granted to everyone by ``priv_check``);
  opening for writing needs root (``PRIV_KMEM_WRITE``) *and*
  ``securelevel <= 0``.
* ``/dev/mem`` is read at file offset = physical address.  Below
  ``dmaplimit`` the kernel copies through the direct map **without checking
  that the address is RAM**, above it it maps the page uncached
  (``pmap_mapdev``) up to the CPU's physical address width, after that
  ``EFAULT``.  So a read of a hole between RAM ranges may touch device
  memory (MMIO), with side effects.  Hence this module never reads outside
  the RAM ranges: a hole is an invalid address *before* any ``pread``.
* ``/dev/kmem`` is read at file offset = kernel virtual address (a negative
  ``off_t``: the kernel accepts negative offsets on character devices);
  unmapped pages give ``EFAULT``.  This is how libkvm's live mode reads the
  kernel (``kvm_read`` = ``pread`` on ``/dev/kmem``).
* A character device reports size 0, so neither ``st_size`` nor
  ``lseek(SEEK_END)`` says where memory ends.  The RAM ranges come from the
  running kernel instead: its ``dump_avail`` array (the ranges a crash dump
  would contain; ``phys_avail`` when an ISF lacks it), read through
  ``/dev/kmem`` at the symbol's address once the ISF matching the running
  kernel's ``version`` string has been found.

Layers: :class:`FreebsdMemDeviceLayer` is the device (``pread``, no range
knowledge; read-only unless ``writable`` is set) and
:class:`FreebsdLivePhysLayer` the physical address space on it, a
``SegmentedLayer`` with one identity segment per RAM range, so scans and
reads never leave RAM.  :class:`FreebsdLiveStacker` builds both when ``vol
-f`` names a memory device; the ordinary :class:`FreebsdKernelStacker` then
finds the kernel on top, exactly as for a raw image.
"""

import collections
import errno
import logging
import os
import stat
import struct
import urllib.error
import urllib.request
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import physical, segmented

from kvm_vol.core import amd64 as A
from kvm_vol.errors import KvmVolError, TranslationError
from kvm_vol.layers.physical import _layer_name_for_errors, fatal

vollog = logging.getLogger(__name__)

__all__ = [
    "DEV_MEM", "DEV_KMEM", "DEV_NULL", "PHYS_AVAIL_COUNT", "MemDeviceError", "MemDevice", "parse_avail",
    "ranges_from_kmem", "FreebsdMemDeviceLayer", "FreebsdLivePhysLayer", "FreebsdLiveStacker",
]

DEV_MEM = "/dev/mem"  #: _PATH_MEM
DEV_KMEM = "/dev/kmem"  #: _PATH_KMEM
DEV_NULL = "/dev/null"  #: _PATH_DEVNULL: libkvm's "no memory" (sysctl-only) mode
PHYS_AVAIL_COUNT = A.PHYS_AVAIL_COUNT
#: Highest physical address width amd64 defines (52 bits); /dev/mem says EFAULT above cpu_getmaxphyaddr().
MAX_PHYS_ADDR = 1 << 52
_OFF_T_SIGN = 1 << 63


class MemDeviceError(KvmVolError):
    """A memory device or stand-in cannot be used (wrong file type, permissions, no ranges)."""


def _describe_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file or character device"


def refuse_unseekable(path: str) -> Optional[str]:
    """Why ``path`` cannot be memory at all (a FIFO or socket), or None.

    Pipes and sockets cannot be read at an offset and opening a FIFO for
    reading blocks until a writer appears, so they are refused by a
    ``stat`` *before* anything opens them.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return (f"{path}: is {_describe_type(mode)}, which cannot be read at random offsets; "
                "kvm-vol reads dump files, raw images and FreeBSD's /dev/mem (save a stream to a file first)")
    return None


def _signed_offset(offset: int) -> int:
    """``offset`` as an ``off_t``: kernel addresses on /dev/kmem are negative offsets."""
    return offset - (1 << 64) if offset >= _OFF_T_SIGN else offset


class MemDevice:
    """A character device (``/dev/mem``, ``/dev/kmem``) or a regular file standing in for one.

    Opened ``O_RDONLY`` unless ``writable`` (then ``O_RDWR``).  The open uses
    ``O_NONBLOCK`` and then ``fstat`` checks the type, so a FIFO swapped in
    after a ``stat`` is refused instead of hanging the reader.

    :meth:`read` returns exactly the bytes asked for or raises
    :class:`TranslationError` naming the first address that could not be
    read (``EFAULT`` from the driver, ``EIO``, end of a stand-in file).  No
    range checks happen here; :class:`FreebsdLivePhysLayer` keeps reads in RAM.
    """

    def __init__(self, path: str, writable: bool = False):
        self.path = os.fspath(path)
        self.writable = bool(writable)
        why = refuse_unseekable(self.path)
        if why:
            raise MemDeviceError(why)
        flags = (os.O_RDWR if self.writable else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
        try:
            self._fd = os.open(self.path, flags)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EACCES, errno.EPERM):
                hint = (" (reading needs root or group kmem; writing needs root and securelevel <= 0)"
                        if self.path in (DEV_MEM, DEV_KMEM) else "")
            raise MemDeviceError(f"{self.path}: cannot open {'read-write' if self.writable else 'read-only'}: "
                                 f"{exc.strerror}{hint}") from None
        try:
            st = os.fstat(self._fd)
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise MemDeviceError(f"{self.path}: is {_describe_type(st.st_mode)}, not a memory device")
            os.set_blocking(self._fd, True)
            self.is_device = stat.S_ISCHR(st.st_mode)
            #: Bytes a stand-in file holds; None for a device (size 0 says nothing).
            self.size: Optional[int] = None if self.is_device else st.st_size
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def open_flags(self) -> int:
        """The descriptor's status flags (``fcntl(F_GETFL)``), for checking the access mode."""
        import fcntl

        return fcntl.fcntl(self._fd, fcntl.F_GETFL)

    def read(self, offset: int, length: int) -> bytes:
        if length < 0 or offset < 0:
            raise ValueError("negative offset or length")
        if self._fd < 0:
            raise MemDeviceError(f"{self.path}: closed")
        out = bytearray()
        while len(out) < length:
            at = offset + len(out)
            try:
                chunk = os.pread(self._fd, length - len(out), _signed_offset(at))
            except OSError as exc:
                raise TranslationError(at, f"{self.path}: {exc.strerror}") from None
            except OverflowError:
                raise TranslationError(at, f"{self.path}: offset out of range") from None
            if not chunk:
                raise TranslationError(at, f"{self.path}: nothing readable there (end of file)")
            out += chunk
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise MemDeviceError(f"{self.path}: opened read-only; writing needs an explicit writable open")
        done = 0
        while done < len(data):
            try:
                n = os.pwrite(self._fd, data[done:], _signed_offset(offset + done))
            except OSError as exc:
                raise TranslationError(offset + done, f"{self.path}: {exc.strerror}") from None
            if n <= 0:
                raise TranslationError(offset + done, f"{self.path}: short write")
            done += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "MemDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------
# RAM ranges

Range = Tuple[int, int]


def normalise_ranges(ranges: Iterable[Sequence[int]]) -> List[Range]:
    """Sorted ``[start, end)`` pairs; raises ValueError for empty, negative or overlapping ones."""
    out = sorted((int(s), int(e)) for s, e in ranges)
    prev_end = 0
    for s, e in out:
        if s < 0 or e <= s:
            raise ValueError(f"bad physical range [{s:#x}, {e:#x})")
        if s < prev_end:
            raise ValueError(f"physical ranges overlap at {s:#x}")
        prev_end = e
    if not out:
        raise ValueError("no physical ranges")
    return out


def parse_avail(raw: bytes) -> Optional[List[Range]]:
    """The ranges in a ``phys_avail``/``dump_avail`` array, or None if it does not look like one.

    The array holds ``vm_paddr_t`` pairs ``[start, end)`` and ends at the first
    pair whose end is 0 (the kernel's loops test ``avail[i + 1] != 0``).  The
    entries are page aligned and ascending; anything else means the bytes
    are not the array (wrong ISF, smeared memory), and None is returned.
    """
    words = struct.unpack(f"<{len(raw) // 8}Q", raw[:len(raw) // 8 * 8])
    out: List[Range] = []
    for i in range(0, len(words) - 1, 2):
        start, end = words[i], words[i + 1]
        if end == 0:
            break
        if start >= end or (start | end) & A.PAGE_MASK or (out and start < out[-1][1]) or end > MAX_PHYS_ADDR:
            return None
        out.append((start, end))
    else:
        return None  # no terminator inside the array
    return out or None


def ranges_from_kmem(read_kva: Callable[[int, int], bytes],
                     candidates: Iterable[Tuple[bytes, dict]]) -> Tuple[bytes, List[Range], str]:
    """Identify the running kernel and its RAM ranges through kernel virtual reads.

    ``read_kva(va, n)`` reads kernel memory (``/dev/kmem``; raises
    :class:`TranslationError`).  ``candidates`` are ``(banner, symbols)`` of the
    known ISFs.  The kernel is the one whose ``version`` symbol holds its
    banner; its ``dump_avail`` (else ``phys_avail``) gives the ranges.
    Returns ``(banner, ranges, array name)``; raises :class:`MemDeviceError`
    saying what is missing.
    """
    from kvm_vol.core.amd64 import canonical

    tried = 0
    for banner, syms in candidates:
        if "version" not in syms:
            continue
        tried += 1
        try:
            if read_kva(canonical(syms["version"]), len(banner)) != banner:
                continue
        except TranslationError:
            continue
        for name in ("dump_avail", "phys_avail"):
            if name not in syms:
                continue
            try:
                ranges = parse_avail(read_kva(canonical(syms[name]), PHYS_AVAIL_COUNT * 8))
            except TranslationError as exc:
                raise MemDeviceError(f"the running kernel's {name} cannot be read: {exc}") from None
            if ranges:
                return banner, ranges, name
            raise MemDeviceError(f"the running kernel's {name} does not hold physical ranges "
                                 f"(does the ISF match the running kernel exactly?)")
        raise MemDeviceError("the ISF of the running kernel has neither dump_avail nor phys_avail; "
                             "remake it from the kernel's debug file with kvm-vol isf")
    from kvm_vol.symbols.volsym import ISF_COMMAND

    what = f"none of the {tried} known FreeBSD ISFs matches" if tried else "no FreeBSD ISF is installed for"
    raise MemDeviceError(f"{what} the running kernel; make its ISF with: {ISF_COMMAND}")


# ----------------------------------------------------------------------
# Volatility layers

def _path_of(location: str) -> str:
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(location).path)
    return location


class FreebsdMemDeviceLayer(interfaces.layers.DataLayerInterface):
    """A memory device read with ``pread`` (``location`` is a path or file URL).

    Addresses are device offsets.  Every read goes to the device (nothing is
    cached: live memory changes); a failed read is an
    ``InvalidAddressException``.  Writes are refused unless the layer was
    configured ``writable``, which only :func:`kvm_vol.kvm.open` does on an
    explicit ``O_RDWR`` request.
    """

    _direct_metadata = collections.ChainMap({"os": "FreeBSD"}, interfaces.layers.DataLayerInterface._direct_metadata)

    def __init__(self, context, config_path, name, metadata=None):
        super().__init__(context, config_path, name, metadata)
        self._path = _path_of(self.config["location"])
        try:
            self._device = MemDevice(self._path, writable=self.config.get("writable", False))
        except MemDeviceError as exc:
            raise exceptions.LayerException(name, str(exc)) from None
        size = self._device.size
        self._max = MAX_PHYS_ADDR - 1 if size is None else size - 1

    @classmethod
    def get_requirements(cls):
        return [
            requirements.StringRequirement(name="location", optional=False,
                                           description="Path (or file: URL) of the memory device"),
            requirements.BooleanRequirement(name="writable", optional=True, default=False,
                                            description="Open the device read-write (never by default)"),
        ]

    @property
    def device(self) -> MemDevice:
        return self._device

    @property
    def maximum_address(self) -> int:
        return self._max

    @property
    def minimum_address(self) -> int:
        return 0

    def is_valid(self, offset: int, length: int = 1) -> bool:
        return 0 <= offset and offset + max(length, 1) - 1 <= self._max

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        if not pad:
            try:
                return self._device.read(offset, length)
            except TranslationError as exc:
                raise exceptions.InvalidAddressException(self.name, exc.address, exc.reason) from None
        out = bytearray()
        while length > 0:  # page by page, so one bad page does not blank its neighbours
            n = min(length, A.PAGE_SIZE - (offset & A.PAGE_MASK))
            try:
                out += self._device.read(offset, n)
            except TranslationError:
                out += bytes(n)
            offset += n
            length -= n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        try:
            self._device.write(offset, data)
        except MemDeviceError as exc:
            raise exceptions.LayerException(self.name, str(exc)) from None
        except TranslationError as exc:
            raise exceptions.InvalidAddressException(self.name, exc.address, exc.reason) from None

    def destroy(self) -> None:
        self._device.close()


def flatten_ranges(ranges: Iterable[Range]) -> List[int]:
    return [x for pair in ranges for x in pair]


class FreebsdLivePhysLayer(segmented.SegmentedLayer):
    """Physical memory of a live system: only the RAM ranges of the device below.

    ``ranges`` is the flattened list ``[start0, end0, start1, end1, ...]``
    (from the running kernel's ``dump_avail``, or declared by the caller for
    a stand-in file).  Addresses outside them are invalid and are never
    read from the device (see the module docstring: holes may be MMIO).
    """

    _direct_metadata = collections.ChainMap(
        {"os": "FreeBSD", "architecture": "Intel64"}, segmented.SegmentedLayer._direct_metadata)

    @classmethod
    def get_requirements(cls):
        return super().get_requirements() + [
            requirements.ListRequirement(name="ranges", element_type=int, optional=False,
                                         description="RAM ranges as start, end pairs (end exclusive)"),
        ]

    def _load_segments(self) -> None:
        flat = list(self.config.get("ranges") or [])
        if len(flat) % 2:
            raise exceptions.LayerException(self.name, "ranges must be start, end pairs")
        try:
            ranges = normalise_ranges(zip(flat[0::2], flat[1::2]))
        except ValueError as exc:
            raise exceptions.LayerException(self.name, str(exc)) from None
        self._segments = [(s, s, e - s, e - s) for s, e in ranges]

    @property
    def ranges(self) -> List[Range]:
        return [(s, s + n) for s, _m, n, _mn in self._segments]


def build_live_layers(context, path: str, ranges: Iterable[Range], writable: bool = False) -> FreebsdLivePhysLayer:
    """Add a device layer for ``path`` to ``context`` and return the physical layer on it (not yet added)."""
    join = interfaces.configuration.path_join
    dev_name = context.layers.free_layer_name("FreebsdMemDevice")
    context.config[join(dev_name, "location")] = path
    context.config[join(dev_name, "writable")] = bool(writable)
    context.add_layer(FreebsdMemDeviceLayer(context, dev_name, dev_name))
    phys_name = context.layers.free_layer_name("FreebsdLiveMemory")
    context.config[join(phys_name, "base_layer")] = dev_name
    context.config[join(phys_name, "ranges")] = flatten_ranges(normalise_ranges(ranges))
    return FreebsdLivePhysLayer(context, phys_name, phys_name)


def device_size(path: str) -> int:
    """What ``lseek(SEEK_END)`` says: 0 for memory devices, the media size for disks."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return 0
    finally:
        os.close(fd)


def live_ranges(path: str) -> Tuple[bytes, List[Range], str]:
    """The running kernel's banner and RAM ranges, for the memory device ``path``.

    Only FreeBSD's ``/dev/mem`` (or ``/dev/kmem``) has them: they are read
    through the ``kmem`` device next to it (see :func:`ranges_from_kmem`).
    Raises :class:`MemDeviceError` with the reason otherwise.
    """
    from kvm_vol.layers.kernel import isf_symbols
    from kvm_vol.symbols import volsym

    directory, base = os.path.split(os.path.realpath(path))
    if base not in ("mem", "kmem"):
        raise MemDeviceError(
            f"{path}: a character device that reports no size and is not FreeBSD's /dev/mem; the physical "
            "memory ranges of a live system come from the running kernel (read through /dev/kmem), so kvm-vol "
            "reads live memory only from /dev/mem")
    with MemDevice(os.path.join(directory, "kmem")) as kmem:
        candidates = [(banner, isf_symbols(url)) for banner, url in volsym.freebsd_banners().items()]
        return ranges_from_kmem(kmem.read, candidates)


def physical_device_for(path: str) -> str:
    """``/dev/mem`` for ``/dev/kmem`` (the same driver): the physical layer reads /dev/mem."""
    directory, base = os.path.split(os.path.realpath(path))
    return os.path.join(directory, "mem") if base == "kmem" else path


class FreebsdLiveStacker(interfaces.automagic.StackerLayerInterface):
    """Recognises a live memory device named by ``vol -f`` (``/dev/mem``, ``/dev/kmem``).

    Volatility's ``FileLayer`` opens any path, but a character device seeks
    to 0 at its end, so the layer is empty and every stacker after it would
    see an empty file.  This stacker (``stack_order`` 8, before the dump
    stacker at 9) takes character devices that report no size, and builds
    the device and physical layers from the running kernel's ranges.  A
    character device with a size (a FreeBSD disk holding a dump) is left to
    the dump stacker; ``/dev/null`` (libkvm's no-memory mode) is refused
    with an explanation, since every Volatility plugin reads memory.
    """

    stack_order = 8
    exclusion_list = ["linux", "mac", "windows"]

    @classmethod
    def stack(cls, context, layer_name, progress_callback=None):
        layer = context.layers[layer_name]
        if not isinstance(layer, physical.FileLayer):
            return None
        location = layer.config.get("location", "")
        if not location.startswith("file:"):
            return None
        path = _layer_name_for_errors(layer)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None
        if not stat.S_ISCHR(mode):
            return None
        if os.path.realpath(path) == DEV_NULL:
            fatal(f"{path}: libkvm's no-memory mode (what ps(1) and top(1) use: sysctl only); Volatility plugins "
                  "read kernel memory, so give -f /dev/mem (as root or group kmem) or a dump file")
            return None
        try:
            if device_size(path) > 0:
                return None  # a disk device holding a dump
            banner, ranges, source = live_ranges(path)
        except (OSError, MemDeviceError) as exc:
            fatal(str(exc) if isinstance(exc, MemDeviceError) else f"{path}: {exc.strerror}")
            return None
        vollog.info(f"live FreeBSD kernel {banner!r}: {len(ranges)} RAM ranges from {source}")
        phys = build_live_layers(context, physical_device_for(path), ranges)
        vollog.debug(f"live memory device {path} stacked as {phys.name}")
        return phys


class FreebsdSafeFileHandler(urllib.request.FileHandler):
    """``file:`` URLs, minus the hang: FIFOs and sockets are refused before anything opens them.

    Volatility opens ``-f`` through urllib; opening a FIFO for reading blocks
    until a writer appears, so ``vol -f some.fifo`` would hang before any
    stacker runs.  Volatility builds its URL opener from every
    ``BaseHandler`` subclass, and this one sorts first (``handler_order``
    400 < 500); every other file is opened by the standard code.
    """

    handler_order = 400

    def file_open(self, req):
        path = urllib.request.url2pathname(req.selector)
        why = refuse_unseekable(path)
        if why is None and os.path.basename(os.path.realpath(path)) in ("mem", "kmem") \
                and not os.access(path, os.R_OK):
            why = f"{path}: permission denied; reading live memory needs root or membership of group kmem"
        if why:
            fatal(why)
            raise urllib.error.URLError(why)
        return super().file_open(req)
