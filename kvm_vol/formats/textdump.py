"""FreeBSD textdumps (textdump(4)): ustar archives of ddb output, not memory.

With ``debug.ddb.textdump.pending=1`` (or ``textdump set`` in ddb) a panic
writes, instead of a memory dump, a few text files to the dump device
(``sys/ddb/db_textdump.c``): ``ddb.txt`` (the ddb capture buffer),
``config.txt`` (kernel configuration, with ``INCLUDE_CONFIG_FILE``),
``msgbuf.txt``, ``panic.txt`` and ``version.txt``, in that order, each a
ustar header block followed by its data padded to 512 bytes.

Two forms reach an analyst:

* **savecore'd** (``textdump.tar.N``, or ``textdump.tar.N.gz`` with
  ``savecore -z``): a plain ustar stream, without the two zero blocks that end
  a normal archive (the kernel never writes them);
* **on the device** (a ``dd`` copy of the dump partition): the kernel does not
  know the archive's size in advance, so it writes it *backwards* from the end
  of the partition, block by block: the trailer kerneldumpheader (magic
  ``"FreeBSD Text Dump"``) in the last block, the archive's first block just
  before it, its second block before that, ..., and the leader header below
  the last one.  ``dumplength`` is the archive's length (a multiple of 512;
  ``dumpextent`` equals it, ``dumpkeysize`` is 0: textdumps are never
  encrypted).  savecore's ``DoTextdumpFile`` reverses the blocks; so does
  :class:`TextDump`.

:func:`probe` recognises both, :class:`TextDump` lists and reads the
members.  Everything read from the archive is bounded by the file itself:
member sizes are checked against the data that is there, the number of
members is capped, and :func:`safe_member_path` decides which names may be
written to disk (``kvm-vol textdump extract``).
"""

import os
import struct
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from kvm_vol.errors import DumpFormatError
from kvm_vol.formats.kdh import KDH_SIZE, TEXTDUMPMAGIC, KernelDumpHeader
from kvm_vol.formats.source import FileSource, Source

__all__ = ["TEXTDUMP_BLOCKSIZE", "USTAR", "TEXTDUMP_FILES", "Member", "TextDump", "probe", "probe_file", "open_textdump", "has_text_trailer",
           "pack_ustar_header", "ustar_checksum", "safe_member_path", "refusal", "looks_like_savecore_form"]

#: ``TEXTDUMP_BLOCKSIZE`` (sys/sys/kerneldump.h): the tar block and the header size.
TEXTDUMP_BLOCKSIZE = 512
#: ``struct ustar_header`` of db_textdump.c: filename, mode, uid, gid, size,
#: mtime, checksum, type, linkname, "ustar", version, owner, group, major,
#: minor, filename prefix, padding.
USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
assert USTAR.size == TEXTDUMP_BLOCKSIZE
_CHKSUM_OFFSET, _CHKSUM_SIZE = 148, 8
_MAGIC_OFFSET = 257
#: What the kernel writes, in order (TAR_*_FILENAME and db_capture.c's "ddb.txt").
TEXTDUMP_FILES = ("ddb.txt", "config.txt", "msgbuf.txt", "panic.txt", "version.txt")
#: More members than any kernel writes by three orders of magnitude: a hostile
#: archive of empty headers cannot make a listing run away.
MAX_MEMBERS = 4096
_REGULAR = (b"0", b"\0")


def ustar_checksum(header: bytes) -> Tuple[int, int]:
    """(unsigned, signed) sums of a header with its checksum field read as spaces.

    POSIX tar uses the unsigned sum; some historic writers used signed chars,
    and readers accept either.
    """
    block = bytearray(header[:TEXTDUMP_BLOCKSIZE])
    block[_CHKSUM_OFFSET:_CHKSUM_OFFSET + _CHKSUM_SIZE] = b" " * _CHKSUM_SIZE
    unsigned = sum(block)
    signed = unsigned - 256 * sum(1 for b in block if b >= 0x80)
    return unsigned, signed


def pack_ustar_header(name: str, size: int, mtime: int, mode: str = "0600") -> bytes:
    """A header as ``textdump_mkustar()`` makes it (root/wheel, type 0, "%6o" checksum)."""
    raw = bytearray(USTAR.pack(
        name.encode()[:99], mode.encode(), b"0", b"0", b"%o" % size, b"%o" % mtime, b"", b"\0",
        b"", b"ustar", b"", b"root", b"wheel", b"", b"", b"", b""))
    raw[_CHKSUM_OFFSET:_CHKSUM_OFFSET + _CHKSUM_SIZE] = (b"%6o" % ustar_checksum(raw)[0]).ljust(8, b"\0")
    return bytes(raw)


def _octal(raw: bytes) -> Optional[int]:
    """A tar numeric field (octal ASCII, NUL/space padded), or None if it is not one."""
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        return None
    return int(text, 8)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


@dataclass
class Member:
    """One archive member; offsets are in the *archive* (see :meth:`TextDump.file_offset`)."""

    index: int
    name: str
    size: int  #: bytes of data present (clipped if the archive ends early)
    declared_size: int  #: what the header says
    mtime: int
    mode: int
    typeflag: str
    header_offset: int
    data_offset: int

    @property
    def is_regular(self) -> bool:
        return self.typeflag.encode("latin-1") in _REGULAR

    @property
    def truncated(self) -> bool:
        return self.size < self.declared_size

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "declared_size": self.declared_size, "mtime": self.mtime,
                "mode": f"{self.mode:o}", "type": self.typeflag, "regular": self.is_regular,
                "header_offset": self.header_offset, "data_offset": self.data_offset}


@dataclass
class TextDump:
    """A textdump: its form, its kerneldumpheader (device form), its members and problems."""

    source: Source
    form: str  #: "savecore" (a plain ustar stream) or "device" (reversed blocks behind a kerneldumpheader)
    length: int  #: bytes of archive
    kdh: Optional[KernelDumpHeader] = None
    kdh_offset: Optional[int] = None  #: where the leader is (device form)
    members: List[Member] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.source.name

    def file_offset(self, archive_offset: int) -> int:
        """Offset in the file of byte ``archive_offset`` of the archive.

        Device form: archive block *i* is the *i*-th block below the trailer,
        i.e. at ``leader + 512 + dumplength - 512 * (i + 1)``.
        """
        if self.form == "savecore":
            return archive_offset
        block, within = divmod(archive_offset, TEXTDUMP_BLOCKSIZE)
        top = self.kdh_offset + KDH_SIZE + self.length
        return top - TEXTDUMP_BLOCKSIZE * (block + 1) + within

    def read(self, archive_offset: int, length: int) -> bytes:
        """Bytes of the archive (in archive order), clipped at its end."""
        length = max(0, min(length, self.length - archive_offset))
        out = bytearray()
        while length > 0:
            n = min(length, TEXTDUMP_BLOCKSIZE - archive_offset % TEXTDUMP_BLOCKSIZE)
            out += self.source.read(self.file_offset(archive_offset), n)
            archive_offset += n
            length -= n
        return bytes(out)

    def iter_data(self, member: Member, chunk: int = 1 << 16) -> Iterator[bytes]:
        """The data of ``member``, in chunks (never more than the archive holds)."""
        done = 0
        while done < member.size:
            data = self.read(member.data_offset + done, min(chunk, member.size - done))
            if not data:
                return
            yield data
            done += len(data)

    def _error(self, message: str, archive_offset: int, what: str) -> str:
        return f"{what} at offset {self.file_offset(archive_offset):#x}: {message}"

    def _parse(self) -> None:
        pos = 0
        while pos + TEXTDUMP_BLOCKSIZE <= self.length:
            header = self.read(pos, TEXTDUMP_BLOCKSIZE)
            if header == bytes(TEXTDUMP_BLOCKSIZE):
                break  # end-of-archive marker (tar(1)); the kernel writes none
            what = f"tar header {len(self.members)}"
            if len(self.members) >= MAX_MEMBERS:
                self.problems.append(self._error(f"more than {MAX_MEMBERS} members; the rest is not listed",
                                                 pos, what))
                break
            fields = USTAR.unpack(header)
            stored = _octal(header[_CHKSUM_OFFSET:_CHKSUM_OFFSET + _CHKSUM_SIZE])
            if stored is None or stored not in ustar_checksum(header):
                self.problems.append(self._error(
                    f"bad header checksum (stored {header[148:156]!r}); the archive cannot be followed past it",
                    pos, what))
                break
            size = _octal(fields[4])
            if size is None:
                self.problems.append(self._error(f"size field {fields[4]!r} is not an octal number", pos, what))
                break
            name = _cstr(fields[0])
            if fields[9] == b"ustar\0" and fields[15].strip(b"\0"):  # POSIX ustar (old GNU reuses the bytes)
                name = _cstr(fields[15]) + "/" + name
            data_offset = pos + TEXTDUMP_BLOCKSIZE
            present = max(0, min(size, self.length - data_offset))
            member = Member(index=len(self.members), name=name, size=present, declared_size=size,
                            mtime=_octal(fields[5]) or 0, mode=_octal(fields[1]) or 0,
                            typeflag=fields[7].decode("latin-1"), header_offset=pos, data_offset=data_offset)
            self.members.append(member)
            if member.truncated:
                self.problems.append(self._error(
                    f"member {name!r} declares {size} bytes but the archive ends after {present}", pos, what))
                break
            pos = data_offset + -(-size // TEXTDUMP_BLOCKSIZE) * TEXTDUMP_BLOCKSIZE

    def info(self) -> dict:
        return {"path": self.path, "format": "textdump", "form": self.form, "file_size": self.source.size,
                "archive_length": self.length, "kerneldumpheader_offset": self.kdh_offset,
                "kerneldumpheader": None if self.kdh is None else self.kdh.to_dict(),
                "members": [m.to_dict() for m in self.members], "problems": list(self.problems)}

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "TextDump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def looks_like_savecore_form(block: bytes) -> bool:
    """Whether ``block`` opens a savecore'd textdump: the ustar magic, or a textdump member's name.

    The name alone is enough because a damaged first header (its magic gone)
    must still be reported as a damaged textdump; otherwise ``vol`` scans the
    archive as memory and finds ``version.txt``'s banner.  No memory image
    starts with "ddb.txt\0" and friends.
    """
    if len(block) < TEXTDUMP_BLOCKSIZE:
        return False
    if block[_MAGIC_OFFSET:_MAGIC_OFFSET + 5] == b"ustar":
        return True
    name, nul, _ = block[:100].partition(b"\0")
    return bool(nul) and name.decode("latin-1") in TEXTDUMP_FILES


def _text_trailer(source: Source) -> Optional[Tuple[KernelDumpHeader, int]]:
    """A textdump trailer in the last block (parity correct), and where its leader should be."""
    at = source.size - TEXTDUMP_BLOCKSIZE
    if at <= 0:
        return None
    raw = source.read(at, KDH_SIZE)
    if raw[:len(TEXTDUMPMAGIC)] != TEXTDUMPMAGIC:
        return None
    try:
        kdh = KernelDumpHeader.parse(raw, source.name, at)
    except DumpFormatError:
        return None
    if not kdh.parity_ok or kdh.dumplength % TEXTDUMP_BLOCKSIZE or kdh.dumplength + KDH_SIZE > at:
        return None
    return kdh, at - kdh.dumplength - KDH_SIZE


def has_text_trailer(source: Source) -> bool:
    """Whether the last block holds a usable textdump trailer (cheap; read by the format detector)."""
    return _text_trailer(source) is not None


def probe(source: Source) -> Optional[TextDump]:
    """The textdump in ``source``, or None if it holds none.

    Device form: a kerneldumpheader with the textdump magic as leader at
    offset 0 or as trailer in the last block (found like savecore does, via
    ``dumpextent``).  Savecore'd form: a ustar header at offset 0.  Raises
    :class:`DumpFormatError` for a textdump header whose archive cannot be
    where it says (length not a multiple of 512, or past the end of the file).
    """
    from kvm_vol.formats import _find_leader  # the package imports this module lazily

    if source.size == 0:
        return None
    found = _find_leader(source)
    trailer_only = None
    if found is None:
        # savecore reads the trailer first; a leader that disagrees with it
        # (savecore: "first and last dump headers disagree", -f goes on) must
        # not make a textdump pass for a memory image.
        found = trailer_only = _text_trailer(source)
    if found is not None:
        kdh, leader = found
        if kdh.kind != "text":
            return None
        if kdh.dumplength % TEXTDUMP_BLOCKSIZE:
            raise DumpFormatError(source.name, f"textdump length {kdh.dumplength:#x} is not a multiple of "
                                               f"{TEXTDUMP_BLOCKSIZE} (savecore refuses it too)",
                                  leader + 40, "kerneldumpheader.dumplength")
        end = leader + KDH_SIZE + kdh.dumplength
        if end > source.size:
            raise DumpFormatError(source.name, f"textdump of {kdh.dumplength:#x} bytes ends at {end:#x}, past "
                                               f"the end of the file at {source.size:#x}",
                                  leader + 40, "kerneldumpheader.dumplength")
        td = TextDump(source, "device", kdh.dumplength, kdh, leader)
        if trailer_only is not None:
            td.problems.append(f"kerneldumpheader at offset {leader:#x} disagrees with the trailer at "
                               f"{leader + KDH_SIZE + kdh.dumplength:#x}; the trailer is used (as savecore -f does)")
    elif looks_like_savecore_form(source.read(0, TEXTDUMP_BLOCKSIZE)):
        td = TextDump(source, "savecore", source.size)
    else:
        return None
    td._parse()
    return td


def probe_file(path: str) -> Optional[TextDump]:
    """:func:`probe` the file ``path`` (opened read-only; a ``.gz`` through kvm-vol's decompressed copy)."""
    from kvm_vol.formats.compressed import compression_of, decompressed_copy

    with open(path, "rb") as fh:
        if compression_of(fh.read(8)):
            path = str(decompressed_copy(path))
    source = FileSource.open(path)
    try:
        td = probe(source)
    except BaseException:
        source.close()
        raise
    if td is None:
        source.close()
    return td


def open_textdump(path: str) -> TextDump:
    """:func:`probe_file`, raising :class:`DumpFormatError` if ``path`` holds no textdump."""
    td = probe_file(path)
    if td is None:
        raise DumpFormatError(path, "not a textdump: no ustar header at offset 0 and no kerneldumpheader with "
                                    "magic 'FreeBSD Text Dump'", 0, "magic")
    return td


def safe_member_path(name: str) -> Optional[str]:
    """The relative path a member may be written to, or None if its name is unsafe.

    Refused: empty names, absolute paths, ``..`` components, NUL or other
    control characters, backslashes (a path separator elsewhere).  ``.``
    components and repeated slashes are dropped.
    """
    if not name or "\\" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return os.path.join(*parts)


def refusal(td: TextDump) -> str:
    """What ``vol`` says when asked to analyse a textdump."""
    from kvm_vol.formats.compressed import origin_of

    path = origin_of(td.path) or td.path  # a .gz textdump is read through its decompressed copy
    names = ", ".join(m.name for m in td.members[:8]) + (", ..." if len(td.members) > 8 else "")
    where = ("written backwards behind a 'FreeBSD Text Dump' kerneldumpheader"
             if td.form == "device" else "a tar archive")
    return (f"this is a FreeBSD textdump ({where}): {len(td.members)} files of ddb output"
            f"{' (' + names + ')' if names else ''}, not a memory image; list them with "
            f"'kvm-vol textdump list {path}' and extract them with "
            f"'kvm-vol textdump extract {path} -o DIR'")


def format_time(mtime: int) -> str:
    from kvm_vol.freebsd import utc_time

    when = utc_time(mtime)
    return f"{mtime} (out of range)" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")
