"""amd64 minidump, versions 1 to 3: savecore's default ``vmcore.N``.

Layout (``vmcore-formats.md`` §3, ``sys/amd64/include/minidump.h``,
``sys/amd64/amd64/minidump_machdep.c``): a header page, then the msgbuf,
dump_avail (v3 only), bitmap and pmap sections, each padded to a page, then
one page per set bitmap bit.  :class:`MinidumpHeader` and :class:`Layout`
are the single description of that layout; the forge writer builds files
from them too.

Structural damage that makes the file unreadable (short header, wrong
magic or version, a section past the end, a malformed dump_avail) raises
:class:`DumpFormatError` at open.  Damage that leaves most of the dump
usable — page data cut short, bits beyond dump_avail, a PDE whose page-table
page is missing — is listed by :meth:`Minidump.problems` and shown by
``kvm-vol info``; the pages that are there stay readable.
"""

import struct
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

from kvm_vol.core.amd64 import (
    DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, NBPDR, PAGE_SIZE, PDRSHIFT, PG_FRAME, PG_PS, PG_V, VM_MIN_KERNEL_ADDRESS,
    MinidumpAmd64Translator,
)
from kvm_vol.core.bitmap import BitmapIndex, first_bad_range
from kvm_vol.errors import DumpFormatError
from kvm_vol.formats import Dump, Run
from kvm_vol.formats.kdh import KernelDumpHeader
from kvm_vol.formats.source import Source

__all__ = [
    "MINIDUMP_PREFIX", "MINIDUMP_MAGIC", "MINIDUMP_VERSION", "DUMP_AVAIL_PAIR", "MinidumpHeader", "Layout",
    "section_layout", "Minidump",
]

#: What libkvm checks to call a core a minidump (``_kvm_is_minidump``).
MINIDUMP_PREFIX = b"minidump"
MINIDUMP_MAGIC = b"minidump FreeBSD/amd64"
MINIDUMP_VERSION = 3
# magic[24], version, msgbufsize, bitmapsize, pmapsize, kernbase, dmapbase,
# dmapend, dumpavailsize (v3); sizeof is 72 with tail padding, v1/v2 stop at 64.
_HDR = struct.Struct("<24sIIIIQQQI")
_HDR_SIZE_V2 = 64
_HDR_SIZE_V3 = 72
_VERSION_OFFSET = 24
#: One ``{start, end}`` entry of the dump_avail section.
DUMP_AVAIL_PAIR = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ZERO_PAGE = bytes(PAGE_SIZE)


class Layout(NamedTuple):
    """Section offsets from the start of the minidump (not of an outer file)."""

    msgbuf: int
    dump_avail: int
    bitmap: int
    pmap: int
    sparse: int


def section_layout(page_size: int, msgbufsize: int, dumpavailsize: int, bitmapsize: int, pmapsize: int) -> Layout:
    """Section offsets of a minidump of any architecture: a header page, then msgbuf, dump_avail
    (``dumpavailsize`` 0 where the version has none), bitmap and pmap, each rounded to ``page_size``."""

    def rnd(x: int) -> int:
        return (x + page_size - 1) // page_size * page_size

    dump_avail = page_size + rnd(msgbufsize)
    bitmap = dump_avail + rnd(dumpavailsize)
    pmap = bitmap + rnd(bitmapsize)
    return Layout(page_size, dump_avail, bitmap, pmap, pmap + rnd(pmapsize))


@dataclass
class MinidumpHeader:
    """``struct minidumphdr``.  ``kernbase`` is where the pmap section starts:
    VM_MIN_KERNEL_ADDRESS in v2/v3, KERNBASE in v1 (not the kernel's KERNBASE)."""

    version: int = MINIDUMP_VERSION
    msgbufsize: int = 0
    bitmapsize: int = 0
    pmapsize: int = 0
    kernbase: int = VM_MIN_KERNEL_ADDRESS
    dmapbase: int = DMAP_MIN_ADDRESS
    dmapend: int = DMAP_MAX_ADDRESS
    dumpavailsize: int = 0  #: v3 only; libkvm takes it as 0 for v1/v2

    #: amd64 has 4 KiB pages only (a class attribute, not a header field).
    page_size = PAGE_SIZE

    @property
    def size(self) -> int:
        """Bytes of the C structure for this version (64, or 72 for v3)."""
        return _HDR_SIZE_V2 if self.version < 3 else _HDR_SIZE_V3

    @property
    def pmap_span(self) -> int:
        """Bytes of KVA one pmap entry covers: a PTE (v1) or a PDE (v2/v3)."""
        return PAGE_SIZE if self.version == 1 else NBPDR

    def layout(self) -> Layout:
        return section_layout(PAGE_SIZE, self.msgbufsize, self.dumpavailsize if self.version >= 3 else 0,
                              self.bitmapsize, self.pmapsize)

    def pack(self) -> bytes:
        """The header page: the structure followed by zeros up to 4 KiB."""
        raw = _HDR.pack(
            MINIDUMP_MAGIC, self.version, self.msgbufsize, self.bitmapsize, self.pmapsize,
            self.kernbase, self.dmapbase, self.dmapend, self.dumpavailsize if self.version >= 3 else 0,
        )
        return raw + bytes(PAGE_SIZE - len(raw))


class Minidump(Dump):
    """An amd64 minidump; see the module docstring for what is checked when."""

    kind = "minidump"
    what = "the minidump"
    #: The first version with a dump_avail section.
    dump_avail_since = 3

    def __init__(self, view: Source, kdh: Optional[KernelDumpHeader] = None):
        super().__init__(view, kdh)
        self.header = self._parse_header(view.read(0, PAGE_SIZE))
        #: The unit of the header page, the section rounding, the bitmap bits and the dumped pages.
        self.page_size = self.header.page_size
        self.layout = self.header.layout()
        self._check_sections()
        #: dump_avail ranges (v3), or None when the bit id is the PFN (v1/v2).
        self.dump_avail: Optional[List[Tuple[int, int]]] = self._read_dump_avail()
        self._pmap = view.read(self.layout.pmap, self.header.pmapsize)
        #: Number of entries in the pmap section.
        self.pmap_entries = len(self._pmap) // 8
        pages_in_file = max(0, (view.size - self.layout.sparse) // self.page_size)
        self.bitmap_index = BitmapIndex(
            view.read(self.layout.bitmap, self.header.bitmapsize), self.dump_avail,
            self.origin + self.layout.sparse, pages_in_file, self.page_size)

    # -- parsing -----------------------------------------------------------
    def _parse_header(self, head: bytes) -> MinidumpHeader:
        magic = head[:24].split(b"\0", 1)[0]
        if not magic.startswith(MINIDUMP_PREFIX):
            raise self._error(f"not a minidump: magic {head[:24]!r}", 0, "magic")
        if magic != MINIDUMP_MAGIC:
            # libkvm: "not a minidump for this platform"
            raise self._error(
                f"not a minidump for this platform: magic {magic.decode('ascii', 'replace')!r}, "
                f"kvm-vol reads {MINIDUMP_MAGIC.decode()!r}", 0, "magic")
        version = self._header_version(head)
        if not 1 <= version <= MINIDUMP_VERSION:
            raise self._error(
                f"wrong minidump version. expected {MINIDUMP_VERSION} got {version} "
                f"(kvm-vol reads versions 1 to {MINIDUMP_VERSION})", _VERSION_OFFSET, "version")
        self._check_header_size(head, version, _HDR.size if version >= 3 else _HDR_SIZE_V2)
        fields = _HDR.unpack(head[:_HDR.size].ljust(_HDR.size, b"\0"))
        hdr = MinidumpHeader(
            version=version, msgbufsize=fields[2], bitmapsize=fields[3], pmapsize=fields[4],
            kernbase=fields[5], dmapbase=fields[6], dmapend=fields[7],
            dumpavailsize=fields[8] if version >= 3 else 0,
        )
        if hdr.dmapbase > hdr.dmapend:
            raise self._error(f"dmapend {hdr.dmapend:#x} is below dmapbase {hdr.dmapbase:#x}", 56, "dmapend")
        return hdr

    def _header_version(self, head: bytes) -> int:
        """The ``version`` field, at the same offset in the header of every architecture."""
        if len(head) < _VERSION_OFFSET + 4:
            raise self._error(f"truncated header: {len(head)} bytes", 0, "header")
        return _U32.unpack_from(head, _VERSION_OFFSET)[0]

    def _check_header_size(self, head: bytes, version: int, need: int) -> None:
        if len(head) < need:
            raise self._error(f"truncated header: {len(head)} bytes, a version {version} header needs {need}",
                              0, "header")

    def _check_sections(self) -> None:
        hdr, lay, end = self.header, self.layout, self.view.size
        for name, offset, size in (
            ("msgbufsize", lay.msgbuf, hdr.msgbufsize),
            ("dumpavailsize", lay.dump_avail, hdr.dumpavailsize),
            ("bitmapsize", lay.bitmap, hdr.bitmapsize),
            ("pmapsize", lay.pmap, hdr.pmapsize),
        ):
            if size and offset + size > end:
                section = name[:-4]
                raise self._error(
                    f"{section} section of {size:#x} bytes extends past the end of the file "
                    f"(the dump ends at {self.origin + end:#x})", offset, name)

    def _read_dump_avail(self) -> Optional[List[Tuple[int, int]]]:
        size = self.header.dumpavailsize
        if size == 0:
            return None
        raw = self.view.read(self.layout.dump_avail, size)
        ranges = []
        for i in range(len(raw) // DUMP_AVAIL_PAIR.size):
            start, end = DUMP_AVAIL_PAIR.unpack_from(raw, i * DUMP_AVAIL_PAIR.size)
            if end == 0:  # the {0, 0} terminator (libkvm stops at any end of 0)
                break
            ranges.append((start, end))
        bad = first_bad_range(ranges)
        if bad is not None:
            index, reason = bad
            raise self._error(f"malformed dump_avail: {reason}",
                              self.layout.dump_avail + index * DUMP_AVAIL_PAIR.size, f"dump_avail[{index}]")
        if not ranges:
            raise self._error("dump_avail is empty (its first pair is the {0, 0} terminator)",
                              self.layout.dump_avail, "dump_avail")
        return ranges

    # -- consistency report ------------------------------------------------
    def problems(self) -> List[DumpFormatError]:
        """Non-fatal inconsistencies, each as the error a strict reader would raise."""
        found = []
        idx = self.bitmap_index
        if idx.missing:
            found.append(self._error(
                f"page data truncated: the bitmap marks {idx.count} pages but the file holds {idx.present}; "
                f"the last {idx.missing} are not readable", self.layout.sparse + idx.present * self.page_size,
                "page data"))
        stray = idx.stray_bits()
        if stray:
            found.append(self._error(
                f"{stray} bits are set beyond the {idx.avail.pages} pages that dump_avail describes; "
                "no physical address reaches their pages", self.layout.bitmap, "bitmap"))
        if self.header.version >= 2:
            orphans = self._orphan_pdes()
            if orphans:
                index, ptpage = orphans[0]
                more = f" (and {len(orphans) - 1} more PDEs like it)" if len(orphans) > 1 else ""
                va = self.header.kernbase + (index << PDRSHIFT)
                found.append(self._error(
                    f"PDE for {va:#x} points to page-table page {ptpage:#x}, which is not in the dump{more}",
                    self.layout.pmap + index * 8, f"pmap[{index}]"))
        return found

    def _orphan_pdes(self) -> List[Tuple[int, int]]:
        """``(index, page-table page)`` of valid, non-PS PDEs whose page-table page was not dumped."""
        orphans = []
        for page_start in range(0, len(self._pmap), PAGE_SIZE):
            page = self._pmap[page_start:page_start + PAGE_SIZE]
            if page == _ZERO_PAGE[:len(page)]:
                continue
            for i, (pde,) in enumerate(_U64.iter_unpack(page[:len(page) // 8 * 8])):
                if pde & PG_V and not pde & PG_PS and self.bitmap_index.pa_to_offset(pde & PG_FRAME) is None:
                    orphans.append((page_start // 8 + i, pde & PG_FRAME))
        return orphans

    def verify(self) -> None:
        """Raise the first of :meth:`problems`, for callers that want a strict check."""
        found = self.problems()
        if found:
            raise found[0]

    # -- access --------------------------------------------------------------
    def pmap_entry(self, index: int) -> Optional[int]:
        """Entry ``index`` of the pmap section (PTE in v1, PDE in v2/v3), or None past its end."""
        if 0 <= index < self.pmap_entries:
            return _U64.unpack_from(self._pmap, index * 8)[0]
        return None

    def msgbuf(self) -> bytes:
        """The kernel message buffer as dumped: raw ring data, ``msgbufsize`` bytes."""
        return self.view.read(self.layout.msgbuf, self.header.msgbufsize)

    def pa_to_offset(self, pa: int) -> Optional[int]:
        return self.bitmap_index.pa_to_offset(pa)

    def _compute_runs(self) -> List[Run]:
        return list(self.bitmap_index.runs())

    def translator(self) -> MinidumpAmd64Translator:
        """Kernel-VA translator over this dump (file offsets in the outermost file)."""
        hdr = self.header
        return MinidumpAmd64Translator(
            hdr.version, hdr.kernbase, hdr.dmapbase, hdr.dmapend, self.pmap_entry, self.pmap_entries,
            self.bitmap_index, self.source.read)

    def sections(self) -> dict:
        """``name -> {offset, size, length}``: offset in the outermost file, size as laid out
        (page-rounded), length as the header gives it."""
        hdr, lay, idx, ps = self.header, self.layout, self.bitmap_index, self.page_size

        def rnd(x: int) -> int:
            return (x + ps - 1) // ps * ps

        out = {"header": (0, ps, hdr.size), "msgbuf": (lay.msgbuf, rnd(hdr.msgbufsize), hdr.msgbufsize)}
        if hdr.version >= self.dump_avail_since:
            out["dump_avail"] = (lay.dump_avail, rnd(hdr.dumpavailsize), hdr.dumpavailsize)
        out["bitmap"] = (lay.bitmap, rnd(hdr.bitmapsize), hdr.bitmapsize)
        out["pmap"] = (lay.pmap, rnd(hdr.pmapsize), hdr.pmapsize)
        out["page data"] = (lay.sparse, idx.present * ps, idx.count * ps)
        return {name: {"offset": self.origin + off, "size": size, "length": length}
                for name, (off, size, length) in out.items()}

    def info(self) -> dict:
        hdr, idx = self.header, self.bitmap_index
        info = super().info()
        info.update({
            "version": hdr.version,
            "header": {
                "magic": MINIDUMP_MAGIC.decode(), "version": hdr.version, "msgbufsize": hdr.msgbufsize,
                "bitmapsize": hdr.bitmapsize, "pmapsize": hdr.pmapsize, "kernbase": hdr.kernbase,
                "dmapbase": hdr.dmapbase, "dmapend": hdr.dmapend, "dumpavailsize": hdr.dumpavailsize,
            },
            "sections": self.sections(),
            "kernbase": hdr.kernbase,
            "dmap": [hdr.dmapbase, hdr.dmapend],
            "pmap_entries": self.pmap_entries,
            "pmap_entry_span": hdr.pmap_span,
            "dump_avail": None if self.dump_avail is None else [list(r) for r in self.dump_avail],
            "bitmap_bits": idx.nbits,
            "dumped_pages": idx.count,
            "pages_in_file": idx.present,
        })
        return info
