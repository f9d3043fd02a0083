"""Read-only random-access byte sources under the dump parsers.

The parsers never touch files directly: they read through a :class:`Source`,
so the same code serves a file (:class:`FileSource`), bytes in memory
(:class:`BytesSource`, tests), a Volatility base layer
(:class:`CallbackSource`) and a dump that starts inside another file
(:class:`SubSource`, after a kerneldumpheader).  Every source is read-only:
evidence must never be modified.

Contract of :meth:`Source.read`: ``read(offset, length)`` returns exactly
``length`` bytes unless the source ends first; it is short only at the end.
"""

import mmap
import os
from typing import Callable, Optional

__all__ = ["Source", "FileSource", "BytesSource", "CallbackSource", "SubSource"]

#: Larger reads use pread: a big section (a terabyte machine's 32 MiB minidump
#: bitmap) copied out of the mapping would also stay mapped, counting twice.
_MMAP_READ_MAX = 1 << 20


class Source:
    """A named, sized, read-only byte range.

    :attr:`root` is the outermost source and :attr:`origin` the position of
    this source's byte 0 in it, so parsers working on a :class:`SubSource`
    can report offsets in the file the user has.
    """

    name: str
    size: int

    def __deepcopy__(self, memo):
        # Read-only and possibly holding an mmap: copies (Volatility deep-
        # copies contexts and layers) share the one open file.
        return self

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size

    @property
    def root(self) -> "Source":
        return self

    @property
    def origin(self) -> int:
        return 0

    def _check(self, offset: int, length: int) -> int:
        """Validate arguments; return how many bytes can actually be read."""
        if offset < 0 or length < 0:
            raise ValueError(f"{self.name}: negative offset or length ({offset}, {length})")
        return max(0, min(length, self.size - offset))

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release OS resources (nothing to do for most sources)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size:#x})"


class FileSource(Source):
    """A file or device opened with ``O_RDONLY``, memory-mapped read-only when possible.

    ``mmap`` makes the many small reads of a translation cheap; devices,
    empty files and platforms where mapping fails fall back to ``pread``.
    Use :meth:`open`.
    """

    def __init__(self, path: str, fd: int, size: int, mapping: Optional[mmap.mmap]):
        super().__init__(path, size)
        self._fd = fd
        self._map = mapping

    @classmethod
    def open(cls, path: str) -> "FileSource":
        path = os.fspath(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        try:
            size = os.lseek(fd, 0, os.SEEK_END)  # also right for block devices, where st_size is 0
            mapping = None
            if size > 0:
                try:
                    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                except (OSError, ValueError, OverflowError):
                    mapping = None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, mapping)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read(self, offset: int, length: int) -> bytes:
        n = self._check(offset, length)
        if n == 0:
            return b""
        if self._map is not None and n <= _MMAP_READ_MAX:
            return self._map[offset:offset + n]
        first = os.pread(self._fd, n, offset)
        if len(first) == n or not first:
            return first  # the usual case: no second copy of a big read
        out = bytearray(first)
        while len(out) < n:
            chunk = os.pread(self._fd, n - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BytesSource(Source):
    """Bytes held in memory (tests, small buffers)."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self._data = bytes(data)
        super().__init__(name, len(self._data))

    def read(self, offset: int, length: int) -> bytes:
        n = self._check(offset, length)
        return self._data[offset:offset + n]


class CallbackSource(Source):
    """Bytes obtained from ``read_fn(offset, length)``, e.g. a Volatility base layer's read.

    Reads are clipped to ``size`` before ``read_fn`` is called, so the
    callback never sees a request past the end.
    """

    def __init__(self, read_fn: Callable[[int, int], bytes], size: int, name: str):
        super().__init__(name, size)
        self._read_fn = read_fn

    def read(self, offset: int, length: int) -> bytes:
        n = self._check(offset, length)
        return bytes(self._read_fn(offset, n)) if n else b""


class SubSource(Source):
    """The part of ``src`` from ``offset`` on (at most ``length`` bytes).

    Used for a dump behind a kerneldumpheader: the parsers see the dump at
    offset 0, while :attr:`root` and :attr:`origin` still give positions in
    the outer file.  Closing a view does not close ``src``.
    """

    def __init__(self, src: Source, offset: int, length: Optional[int] = None):
        if offset < 0:
            raise ValueError("negative offset")
        avail = max(0, src.size - offset)
        super().__init__(src.name, avail if length is None else max(0, min(length, avail)))
        self.src = src
        self.offset = offset

    @property
    def root(self) -> Source:
        return self.src.root

    @property
    def origin(self) -> int:
        return self.src.origin + self.offset

    def read(self, offset: int, length: int) -> bytes:
        n = self._check(offset, length)
        return self.src.read(self.offset + offset, n) if n else b""
