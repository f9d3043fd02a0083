"""Compressed vmcores (``savecore -z`` → ``vmcore.N.gz``, ``dumpon -Z`` → ``vmcore.N.zst``).

Neither gzip nor zstd streams can be read at random offsets, and a dump is
read at random offsets, so kvm-vol decompresses once into a cache file and
reads that.  The cached copy is keyed by the evidence file's path, size and
modification time, written under a temporary name and renamed into place
(a crash never leaves a half copy that looks complete), and reused on later
runs.  The evidence file itself is only ever opened for reading.

The stream may also sit behind a kerneldumpheader, as ``dumpon -z`` (gzip)
or ``-Z`` (zstd) leaves it on the dump device, and as savecore leaves it in
a copy of that device: the header's ``compression`` field says which, the
stream starts after the leader (and key) and is exactly ``dumplength``
bytes long (``dump_finish()`` in sys/kern/kern_shutdown.c); ``dumpextent``
is only the space reserved for it.  The kernel's gzip stream has a minimal
10-byte header (``gz_reset()`` in sys/kern/subr_compressor.c) and is an
ordinary gzip member.  :func:`compressed_region` finds the stream either way.

zstd needs the ``zstandard`` package (a kvm-vol dependency; a C binding of
the reference implementation - nothing of ours would match it).
"""

import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from kvm_vol.errors import DumpFormatError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
#: Free space the decompressed copy always leaves on the cache's file system
#: (``KVM_VOL_DECOMPRESS_RESERVE`` bytes overrides it): a hostile stream that
#: inflates without end stops with a clear message instead of filling the disk.
DEFAULT_RESERVE = 64 << 20
_RESERVE_CHECK = 16 << 20  # bytes written between free-space checks


def _reserve() -> int:
    try:
        return max(0, int(os.environ.get("KVM_VOL_DECOMPRESS_RESERVE", DEFAULT_RESERVE)))
    except ValueError:
        return DEFAULT_RESERVE


def _check_free_space(path: str, directory: Path, done: int, reserve: int) -> None:
    """Refuse to go on when the cache's file system is down to ``reserve`` free bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < reserve + _RESERVE_CHECK:
        raise DumpFormatError(
            path, f"decompression stopped after {done:#x} bytes: only {free >> 20} MiB left free in {directory} "
                  f"(kvm-vol leaves {reserve >> 20} MiB; KVM_VOL_DECOMPRESS_RESERVE sets it); free some space or "
                  f"point XDG_CACHE_HOME at a larger disk", None, "compressed data")

ProgressCallback = Callable[[float, str], None]


def compression_of(head: bytes) -> Optional[str]:
    """``"gzip"``, ``"zstd"`` or None, from a file's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


#: kerneldumpheader ``compression`` values (KERNELDUMP_COMP_GZIP, KERNELDUMP_COMP_ZSTD).
KDH_METHODS = {1: "gzip", 2: "zstd"}


@dataclass
class Region:
    """A compressed stream inside a file: ``length`` bytes at ``offset`` (None: to the end)."""

    kind: str
    offset: int = 0
    length: Optional[int] = None
    kdh: object = None  #: the kerneldumpheader in front of it, if any
    kdh_offset: Optional[int] = None


def compressed_region(path: str) -> Optional[Region]:
    """Where the compressed stream of ``path`` is, or None if the file is not a compressed dump.

    A whole-file gzip/zstd stream (``vmcore.N.gz``/``.zst``), or a stream
    behind a kerneldumpheader whose ``compression`` is gzip or zstd and which
    is not encrypted (an encrypted dump's stream is ciphertext; the
    container parser refuses it with its own message).  The header is found
    at offset 0 or, in a copy of a whole dump partition, from the trailer.
    Raises :class:`DumpFormatError` when such a header puts the stream
    outside the file.
    """
    from kvm_vol.formats import _find_leader  # the package imports this module
    from kvm_vol.formats.source import FileSource

    with open(path, "rb") as fh:
        kind = compression_of(fh.read(8))
    if kind is not None:
        return Region(kind)
    with FileSource.open(path) as source:
        if source.size == 0:
            return None
        found = _find_leader(source)
        if found is None:
            return None
        kdh, leader = found
        kind = KDH_METHODS.get(kdh.compression)
        if kdh.kind != "kernel" or kind is None or kdh.dumpkeysize:
            return None
        start = leader + kdh.dump_offset
        if start + kdh.dumplength > source.size:
            raise DumpFormatError(path, f"the {kind} stream of {kdh.dumplength:#x} bytes at {start:#x} ends past "
                                        f"the end of the file at {source.size:#x}", leader + 40,
                                  "kerneldumpheader.dumplength")
        head = source.read(start, 8)
        if compression_of(head) != kind:
            raise DumpFormatError(path, f"the kerneldumpheader says the dump is compressed ({kind}) but it does "
                                        f"not start with a {kind} header (starts with {head.hex()})", start, "dump")
        return Region(kind, start, kdh.dumplength, kdh, leader)


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from ``offset``: the stream, not the trailer behind it."""

    def __init__(self, raw, offset: int, length: Optional[int]):
        self._raw, self._start, self._end = raw, offset, None if length is None else offset + length
        self._pos = offset

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        want = len(buf) if self._end is None else min(len(buf), self._end - self._pos)
        if want <= 0:
            return 0
        self._raw.seek(self._pos)
        data = self._raw.read(want)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos - self._start


#: decompressed copy (absolute path) -> the compressed file it was made from, for this process
_ORIGINS: Dict[str, str] = {}


def origin_of(path: str) -> Optional[str]:
    """The compressed file whose decompressed copy ``path`` is (made by this process), or None.

    Messages about a dump read through its copy name the file the user gave.
    """
    return _ORIGINS.get(os.path.abspath(path))


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kvm-vol/decompressed`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvm-vol" / "decompressed"


def _decompressor(raw, path: str, kind: str):
    """A stream of decompressed bytes over the open compressed file ``raw``."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        import zstandard
    except ImportError:
        raise DumpFormatError(path, "zstd-compressed dump and the 'zstandard' package is not installed "
                                    "(pip install zstandard), or decompress it with zstd -d", 0, "magic") from None
    return zstandard.ZstdDecompressor().stream_reader(raw)


def decompressed_copy(path: str, progress: Optional[ProgressCallback] = None,
                      region: Optional[Region] = None) -> Path:
    """Path of an uncompressed copy of the compressed dump ``path`` (made once, then reused).

    ``region`` says where the stream is (default: :func:`compressed_region`).
    Raises :class:`DumpFormatError` (naming the file and the offset reached)
    when the stream is corrupt or truncated.
    """
    region = region or compressed_region(path)
    if region is None:
        raise DumpFormatError(path, "not a gzip or zstd stream", 0, "magic")
    kind = region.kind
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{region.offset}\0"
                         f"{region.length}".encode()).hexdigest()[:16]
    stem = Path(path).name
    for suffix in (".gz", ".zst"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    target = cache_dir() / f"{stem}-{key}"
    _ORIGINS[os.path.abspath(str(target))] = os.path.abspath(path)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    done = 0
    reserve = _reserve()
    _check_free_space(path, target.parent, done, reserve)
    checked = 0
    try:
        with open(path, "rb") as fh, io.BufferedReader(_Window(fh, region.offset, region.length), _CHUNK) as raw, \
                _decompressor(raw, path, kind) as src, open(tmp, "wb") as dst:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except (OSError, EOFError, ValueError) as exc:
                    raise DumpFormatError(path, f"{kind} stream is corrupt or truncated after {done:#x} "
                                                f"decompressed bytes ({exc})", None, "compressed data") from None
                except Exception as exc:  # zstandard.ZstdError
                    raise DumpFormatError(path, f"{kind} stream is corrupt after {done:#x} decompressed bytes "
                                                f"({exc})", None, "compressed data") from None
                if not chunk:
                    break
                dst.write(chunk)
                done += len(chunk)
                if done - checked >= _RESERVE_CHECK:
                    checked = done
                    _check_free_space(path, target.parent, done, reserve)
                if progress:
                    total = region.length if region.length is not None else st.st_size - region.offset
                    progress(min(99.0, 100.0 * raw.tell() / max(total, 1)), f"Decompressing {Path(path).name}")
        if done == 0:
            raise DumpFormatError(path, f"{kind} stream is corrupt: it decompresses to nothing",
                                  None, "compressed data")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


__all__ = ["compression_of", "compressed_region", "decompressed_copy", "cache_dir", "origin_of", "Region", "KDH_METHODS",
           "GZIP_MAGIC", "ZSTD_MAGIC"]
