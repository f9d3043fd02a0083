"""i386 minidump, versions 1 and 2: savecore's ``vmcore.N`` of a FreeBSD/i386 machine.

Layout (``sys/i386/include/minidump.h``, ``sys/i386/i386/minidump_machdep_base.c``,
``vmcore-formats.md`` §6): a header page (``struct minidumphdr``, 52 bytes:
magic, version, msgbufsize, bitmapsize, ptesize, u32 kernbase, u32 paemode,
dumpavailsize), then the msgbuf, dump_avail (v2; u64 pairs even on i386,
``vm_paddr_t`` being 64-bit since PAE), the bitmap and the "pmap" section,
each padded to a page, then one page per set bitmap bit.  The pmap section
holds a page of PTEs per ``NBPDR`` of KVA from ``KERNBASE`` to
``kernel_vm_end``: a flat PTE array, 4-byte entries without PAE and 8-byte
ones with it (``paemode``).  Version 1 has no dump_avail; its bit id is the
page frame number.

Everything but the header and the pmap entries is the amd64 minidump's
(:class:`~kvm_vol.formats.minidump.Minidump`): section checks, dump_avail
parsing, the bitmap index, the consistency report, ``kvm-vol info``.
:class:`MinidumpI386Header` is the single description of the header; the
forge writes files from it.
"""

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from kvm_vol.core.i386 import KERNBASE, PAGE_SIZE, MinidumpI386Translator, PmapMode, pmap_mode
from kvm_vol.formats.kdh import KernelDumpHeader
from kvm_vol.formats.minidump import MINIDUMP_PREFIX, Layout, Minidump, section_layout
from kvm_vol.formats.source import Source

__all__ = ["MINIDUMP_MAGIC_I386", "MINIDUMP_VERSION_I386", "MinidumpI386Header", "MinidumpI386"]

MINIDUMP_MAGIC_I386 = b"minidump FreeBSD/i386"
MINIDUMP_VERSION_I386 = 2
# magic[24], version, msgbufsize, bitmapsize, ptesize, kernbase, paemode, dumpavailsize
_HDR = struct.Struct("<24sIIIIIII")
_HDR_SIZE_V1 = _HDR.size - 4  #: v1 ends before dumpavailsize
_VERSION_OFFSET = 24
_PAEMODE_OFFSET = 44
assert _HDR.size == 52


@dataclass
class MinidumpI386Header:
    """``struct minidumphdr`` of i386.  ``pmapsize`` is the C field ``ptesize``
    (named like the amd64 header's so the shared section code reads both)."""

    version: int = MINIDUMP_VERSION_I386
    msgbufsize: int = 0
    bitmapsize: int = 0
    pmapsize: int = 0
    kernbase: int = KERNBASE
    paemode: int = 0
    dumpavailsize: int = 0  #: v2 only; libkvm takes it as 0 for v1

    #: No direct map on i386 (the fields exist so callers can treat every minidump alike).
    dmapbase = 0
    dmapend = 0
    #: 4 KiB pages only.
    page_size = PAGE_SIZE

    @property
    def ptesize(self) -> int:
        return self.pmapsize

    @property
    def mode(self) -> PmapMode:
        return pmap_mode(self.paemode)

    @property
    def size(self) -> int:
        """Bytes of the C structure for this version (48 for v1, 52 for v2)."""
        return _HDR_SIZE_V1 if self.version < 2 else _HDR.size

    @property
    def pmap_span(self) -> int:
        """Bytes of KVA one pmap entry covers: a PTE."""
        return PAGE_SIZE

    def layout(self) -> Layout:
        return section_layout(PAGE_SIZE, self.msgbufsize, self.dumpavailsize if self.version >= 2 else 0,
                              self.bitmapsize, self.pmapsize)

    def pack(self) -> bytes:
        """The header page: the structure followed by zeros up to 4 KiB."""
        raw = _HDR.pack(MINIDUMP_MAGIC_I386, self.version, self.msgbufsize, self.bitmapsize, self.pmapsize,
                        self.kernbase, self.paemode, self.dumpavailsize if self.version >= 2 else 0)
        return raw[:self.size] + bytes(PAGE_SIZE - self.size)


class MinidumpI386(Minidump):
    """An i386 minidump; errors and problems as for the amd64 one."""

    arch = "i386"
    dump_avail_since = 2

    def __init__(self, view: Source, kdh: Optional[KernelDumpHeader] = None):
        super().__init__(view, kdh)
        #: The pmap whose entries the pmap section holds (the header's paemode).
        self.mode = self.header.mode
        self.pmap_entries = len(self._pmap) // self.mode.entry_size

    def _parse_header(self, head: bytes) -> MinidumpI386Header:
        magic = head[:24].split(b"\0", 1)[0]
        if magic != MINIDUMP_MAGIC_I386:
            raise self._error(f"not a minidump for this platform: magic {magic.decode('ascii', 'replace')!r}, "
                              f"expected {MINIDUMP_MAGIC_I386.decode()!r}", 0, "magic")
        version = self._header_version(head)
        if version not in (1, MINIDUMP_VERSION_I386):
            raise self._error(
                f"wrong minidump version. expected {MINIDUMP_VERSION_I386} got {version} "
                f"(kvm-vol reads i386 versions 1 and {MINIDUMP_VERSION_I386})", _VERSION_OFFSET, "version")
        self._check_header_size(head, version, _HDR.size if version >= 2 else _HDR_SIZE_V1)
        fields = _HDR.unpack(head[:_HDR.size].ljust(_HDR.size, b"\0"))
        hdr = MinidumpI386Header(version=version, msgbufsize=fields[2], bitmapsize=fields[3], pmapsize=fields[4],
                                 kernbase=fields[5], paemode=fields[6],
                                 dumpavailsize=fields[7] if version >= 2 else 0)
        if hdr.paemode not in (0, 1):
            # pae_mode is a boolean int; anything else is damage, not a third pmap
            raise self._error(f"paemode {hdr.paemode} is neither 0 (non-PAE) nor 1 (PAE)", _PAEMODE_OFFSET,
                              "paemode")
        return hdr

    def _orphan_pdes(self) -> List[Tuple[int, int]]:
        """None: the i386 pmap section holds the PTEs themselves, it references no page-table page."""
        return []

    def pmap_entry(self, index: int) -> Optional[int]:
        """PTE ``index`` of the pmap section (4 or 8 bytes by paemode), or None past its end."""
        if 0 <= index < self.pmap_entries:
            return self.mode.entry.unpack_from(self._pmap, index * self.mode.entry_size)[0]
        return None

    def translator(self) -> MinidumpI386Translator:
        """Kernel-VA translator over this dump (file offsets in the outermost file)."""
        return MinidumpI386Translator(self.header.kernbase, self.mode, self.pmap_entry, self.pmap_entries,
                                      self.bitmap_index, self.source.read)

    def info(self) -> dict:
        info = super().info()
        hdr = self.header
        info["header"] = {
            "magic": MINIDUMP_MAGIC_I386.decode(), "version": hdr.version, "msgbufsize": hdr.msgbufsize,
            "bitmapsize": hdr.bitmapsize, "ptesize": hdr.ptesize, "kernbase": hdr.kernbase,
            "paemode": hdr.paemode, "dumpavailsize": hdr.dumpavailsize,
        }
        info["dmap"] = None
        info["paemode"] = hdr.paemode
        info["pmap"] = self.mode.name
        info["pmap_entry_kind"] = f"{self.mode.entry_size}-byte {self.mode.name} PTEs"
        return info


def is_i386_minidump(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a dump) carries the i386 minidump magic."""
    return head.startswith(MINIDUMP_PREFIX) and head[:24].split(b"\0", 1)[0] == MINIDUMP_MAGIC_I386
