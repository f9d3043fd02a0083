"""Pure parsers of FreeBSD dump containers (no Volatility imports).

:func:`open_dump` / :func:`detect` recognise, in this order:

* a kerneldumpheader leader at offset 0, or a trailer in the last block of
  a copy of the whole dump device (the leader is then found from the
  trailer's ``dumpextent``, as savecore(8) does); the dump behind it is
  parsed like a savecore'd file, with offsets still counted in the outer
  file;
* a minidump (``"minidump"`` magic): i386 (:mod:`.minidump_i386`), arm64
  (``"minidump FreeBSD/arm64"``, :mod:`.minidump_arm64`), else amd64 (:mod:`.minidump`);
* an ELF core (:mod:`.elfcore`);
* gzip/zstd streams, tar archives (textdumps), text, compressed or
  encrypted dumps: refused with a message saying what to do;
* anything else: a raw physical memory image (:mod:`.raw`).

Every result is a :class:`Dump`.  Its :meth:`Dump.phys_runs` lists the dumped
physical memory as ``(pa, file_offset, length)`` with offsets in the
outermost file, ready for a segmented Volatility layer.
"""

from bisect import bisect_right
from typing import List, Optional, Tuple

from kvm_vol.core.amd64 import PAGE_MASK
from kvm_vol.core.bitmap import Run
from kvm_vol.errors import DumpFormatError, TranslationError
from kvm_vol.formats.kdh import KDH_SIZE, KernelDumpHeader, KernelDumpKey, describe_unreadable, has_kdh_magic
from kvm_vol.formats.source import FileSource, Source, SubSource

__all__ = ["Dump", "Run", "detect", "open_dump"]

from kvm_vol.formats.compressed import GZIP_MAGIC as _GZIP_MAGIC, ZSTD_MAGIC as _ZSTD_MAGIC, compressed_region, decompressed_copy, origin_of  # noqa: E402
#: kerneldumpheader ``architecture`` values whose dumps kvm-vol parses.
READABLE_ARCHITECTURES = ("amd64", "i386", "aarch64")  # aarch64: arm64's MACHINE_ARCH
#: Block sizes tried when looking for a trailer at the end of a dump-device copy.
_DEVICE_BLOCK_SIZES = (512, 4096)


class Dump:
    """A parsed dump: where each dumped physical page lies in the file.

    Subclasses set :attr:`kind` and implement :meth:`_compute_runs`.
    :attr:`source` is the outermost source (the file the user named) and
    :attr:`origin` the offset at which the dump itself starts in it (non-zero
    behind a kerneldumpheader); :attr:`view` is the dump alone.
    """

    kind = ""
    arch = "amd64"
    #: How read errors name the container ("not in <what>").
    what = "the dump"
    #: Set by :func:`open_dump` when this is a decompressed copy: the compressed file, method, region.
    decompressed_from: Optional[dict] = None

    def __init__(self, view: Source, kdh: Optional[KernelDumpHeader] = None):
        self.view = view
        self.source = view.root
        self.origin = view.origin
        self.kdh = kdh
        self._runs: Optional[Tuple[Run, ...]] = None
        self._run_starts: List[int] = []

    @property
    def path(self) -> str:
        return self.source.name

    def _error(self, message: str, offset: Optional[int] = None, field: Optional[str] = None) -> DumpFormatError:
        """A :class:`DumpFormatError` for this file; ``offset`` is relative to the dump and reported absolute."""
        return DumpFormatError(self.path, message, None if offset is None else self.origin + offset, field)

    def _compute_runs(self) -> List[Run]:
        raise NotImplementedError

    def phys_runs(self) -> Tuple[Run, ...]:
        """Sorted, merged ``(pa, file_offset, length)`` of every dumped byte (computed once)."""
        if self._runs is None:
            # Publish the starts before the runs: another thread that sees
            # _runs set must never bisect an empty _run_starts.
            runs = tuple(self._compute_runs())
            self._run_starts = [run[0] for run in runs]
            self._runs = runs
        return self._runs

    def _find_run(self, pa: int) -> Optional[Run]:
        runs = self.phys_runs()
        i = bisect_right(self._run_starts, pa) - 1
        if i >= 0 and pa < runs[i][0] + runs[i][2]:
            return runs[i]
        return None

    def pa_to_offset(self, pa: int) -> Optional[int]:
        """File offset (outermost file) of physical address ``pa``, or None if not dumped."""
        run = self._find_run(pa)
        return None if run is None else run[1] + pa - run[0]

    def read_phys(self, pa: int, length: int) -> bytes:
        """``length`` bytes of physical memory at ``pa``.

        Raises :class:`TranslationError` at the first byte that is not in the
        dump (its ``address`` is that byte's physical address); nothing is
        ever read across the end of a run into unrelated data.
        """
        if length < 0:
            raise ValueError("negative length")
        out = bytearray()
        while length > 0:
            run = self._find_run(pa)
            if run is None:
                raise TranslationError(pa, f"physical page {pa & ~PAGE_MASK:#x} not in {self.what}", self.kind)
            n = min(length, run[0] + run[2] - pa)
            data = self.source.read(run[1] + pa - run[0], n)
            if len(data) != n:
                end = run[1] + pa - run[0] + len(data)
                raise TranslationError(pa + len(data), f"file ends at offset {end:#x}", self.kind)
            out += data
            pa += n
            length -= n
        return bytes(out)

    def problems(self) -> List[DumpFormatError]:
        """Non-fatal inconsistencies found in the dump (none for formats that have no cross-checks)."""
        return []

    def info(self) -> dict:
        """Facts for ``kvm-vol info`` (JSON-serialisable; integers stay integers)."""
        runs = self.phys_runs()
        return {
            "path": self.path,
            "format": self.kind,
            "arch": self.arch,
            "file_size": self.source.size,
            "dump_offset": self.origin,
            "kerneldumpheader": None if self.kdh is None else self.kdh.to_dict(),
            "phys_runs": len(runs),
            "dumped_bytes": sum(run[2] for run in runs),
            "problems": [{"field": p.field, "offset": p.offset, "message": p.message} for p in self.problems()],
        }

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} at {self.origin:#x}>"


def _find_leader(source: Source) -> Optional[Tuple[KernelDumpHeader, int]]:
    """The kerneldumpheader leader and its offset, if the file has one."""
    head = source.read(0, KDH_SIZE)
    if has_kdh_magic(head):
        return KernelDumpHeader.parse(head, source.name, 0), 0
    # A copy of the whole dump partition: the trailer is in the last block and
    # the leader one block before the key and the extent (savecore's DoFile).
    for blocksize in _DEVICE_BLOCK_SIZES:
        at = source.size - blocksize
        if at <= 0:
            continue
        raw = source.read(at, KDH_SIZE)
        if not has_kdh_magic(raw):
            continue
        try:
            hdr = KernelDumpHeader.parse(raw, source.name, at)
        except DumpFormatError:
            continue
        leader = at - hdr.dumpextent - hdr.dumpkeysize - hdr.blocksize
        if hdr.parity_ok and hdr.blocksize == blocksize and leader >= 0 and source.read(leader, KDH_SIZE) == raw:
            return hdr, leader
    return None


def _open_inner(view: Source, kdh: Optional[KernelDumpHeader]) -> Dump:
    """Recognise the dump that starts at byte 0 of ``view``."""
    # Imported here because the format modules import Dump from this package.
    from kvm_vol.formats.elfcore import ELF_MAGIC, ElfCore
    from kvm_vol.formats.minidump import MINIDUMP_PREFIX, Minidump
    from kvm_vol.formats.minidump_i386 import MinidumpI386, is_i386_minidump
    from kvm_vol.formats.minidump_arm64 import MinidumpArm64, is_arm64_minidump
    from kvm_vol.formats.raw import RawDump

    head = view.read(0, 512)
    if is_i386_minidump(head):
        return MinidumpI386(view, kdh)
    if is_arm64_minidump(head):
        return MinidumpArm64(view, kdh)
    if head.startswith(MINIDUMP_PREFIX):
        return Minidump(view, kdh)
    if head.startswith(ELF_MAGIC):
        return ElfCore(view, kdh)
    for magic, tool, suffix in ((_GZIP_MAGIC, "gzip", ".gz"), (_ZSTD_MAGIC, "zstd", ".zst")):
        if head.startswith(magic):
            raise DumpFormatError(
                view.name, f"{tool}-compressed file (savecore's vmcore.N{suffix}?): decompress it first "
                f"({tool} -d); kvm-vol reads uncompressed dumps", view.origin, "magic")
    from kvm_vol.formats.textdump import looks_like_savecore_form

    if looks_like_savecore_form(head):
        if kdh is None:
            _refuse_textdump(view)
        raise DumpFormatError(
            view.name, "tar archive (a textdump.tar.N?): textdumps hold ddb output, not memory; extract it with tar(1)",
            view.origin, "magic")
    if kdh is not None:
        raise DumpFormatError(
            view.name,
            f"the kerneldumpheader is not followed by a minidump or an ELF core (starts with {head[:8].hex()})",
            view.origin, "dump")
    return RawDump(view, kdh)


def read_dump_key(source: Source, kdh: KernelDumpHeader, leader: int) -> Optional[KernelDumpKey]:
    """The key section of an encrypted dump (right after the leader block), or None."""
    if not kdh.dumpkeysize:
        return None
    return KernelDumpKey.parse(source.read(leader + kdh.blocksize, min(kdh.dumpkeysize, 64)))


def _refuse_textdump(source: Source) -> None:
    """Stop on a textdump, saying how many files it holds and how to list and extract them."""
    from kvm_vol.formats import textdump

    td = textdump.probe(source)  # raises for a textdump header that points outside the file
    if td is not None:
        message = textdump.refusal(td) + (f" ({td.problems[0]})" if td.problems else "")
        field = "kerneldumpheader" if td.form == "device" else "magic"
        raise DumpFormatError(origin_of(source.name) or source.name, message, td.kdh_offset or 0, field)


def detect(source: Source) -> Dump:
    """Parse ``source`` as whichever FreeBSD dump format it holds (see the module docstring).

    Raises :class:`DumpFormatError` for an empty file, a malformed dump or a
    dump kvm-vol cannot read (compressed, encrypted, textdump, another
    architecture); the message names the file, and the field and offset
    where known.
    """
    if source.size == 0:
        raise DumpFormatError(source.name, "empty file")
    found = _find_leader(source)
    if found is None:
        from kvm_vol.formats import textdump

        if textdump.has_text_trailer(source):  # a textdump whose leader disagrees with its trailer
            _refuse_textdump(source)
        return _open_inner(source, None)
    kdh, leader = found
    if kdh.kind == "text":
        _refuse_textdump(source)
    why = describe_unreadable(kdh, read_dump_key(source, kdh, leader))
    if why is not None:
        raise DumpFormatError(source.name, why, leader, "kerneldumpheader")
    if kdh.architecture not in READABLE_ARCHITECTURES:
        raise DumpFormatError(
            source.name, f"dump of a {kdh.architecture!r} machine; kvm-vol reads "
            f"{', '.join(READABLE_ARCHITECTURES)} dumps",
            leader + 20, "kerneldumpheader.architecture")
    return _open_inner(SubSource(source, leader + kdh.dump_offset, kdh.dumplength), kdh)


def open_dump(path: str) -> Dump:
    """Open ``path`` read-only and :func:`detect` its format; close the result when done.

    A gzip or zstd file (``vmcore.N.gz`` / ``.zst``), or such a stream behind a
    kerneldumpheader (``dumpon -z``/``-Z`` on a dump device), is decompressed
    once into kvm-vol's cache (:mod:`kvm_vol.formats.compressed`) and that copy
    is opened; ``decompressed_from`` on the result says where it came from.
    """
    region = compressed_region(path)
    if region is not None:
        original, path = path, str(decompressed_copy(path, region=region))
    source = FileSource.open(path)
    try:
        dump = detect(source)
    except BaseException:
        source.close()
        raise
    if region is not None:
        # Offsets are those of the copy; say where its bytes came from.
        dump.decompressed_from = {"path": original, "method": region.kind, "offset": region.offset,
                                  "length": region.length, "kdh_offset": region.kdh_offset, "copy": path}
        if region.kdh is not None:
            dump.kdh = region.kdh
    return dump
