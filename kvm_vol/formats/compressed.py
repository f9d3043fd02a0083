"""Compressed vmcores (``savecore -z`` → ``vmcore.N.gz``, ``dumpon -Z`` → ``vmcore.N.zst``).

Neither gzip nor zstd streams can be read at random offsets, and a dump is
read at random offsets, so kvm-vol decompresses once into a cache file and
reads that.  The cached copy is keyed by the evidence file's path, size and
modification time, written under a temporary name and renamed into place
(a crash never leaves a half copy that looks complete), and reused on later
runs.  The evidence file itself is only ever opened for reading.

zstd needs the ``zstandard`` package (a kvm-vol dependency; a C binding of
the reference implementation - nothing of ours would match it).
"""

import gzip
import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

from kvm_vol.errors import DumpFormatError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20

ProgressCallback = Callable[[float, str], None]


def compression_of(head: bytes) -> Optional[str]:
    """``"gzip"``, ``"zstd"`` or None, from a file's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


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


def decompressed_copy(path: str, progress: Optional[ProgressCallback] = None) -> Path:
    """Path of an uncompressed copy of the compressed dump ``path`` (made once, then reused).

    Raises :class:`DumpFormatError` (naming the file and the offset reached)
    when the stream is corrupt or truncated.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = compression_of(head)
    if kind is None:
        raise DumpFormatError(path, "not a gzip or zstd stream", 0, "magic")
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = Path(path).name
    for suffix in (".gz", ".zst"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    target = cache_dir() / f"{stem}-{key}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    done = 0
    try:
        with open(path, "rb") as raw, _decompressor(raw, path, kind) as src, open(tmp, "wb") as dst:
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
                if progress:
                    progress(min(99.0, 100.0 * raw.tell() / max(st.st_size, 1)), f"Decompressing {Path(path).name}")
        if done == 0:
            raise DumpFormatError(path, f"{kind} stream is corrupt: it decompresses to nothing",
                                  None, "compressed data")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


__all__ = ["compression_of", "decompressed_copy", "cache_dir", "GZIP_MAGIC", "ZSTD_MAGIC"]
