"""arm64 minidump, versions 1 to 3: savecore's ``vmcore.N`` from a FreeBSD/arm64 kernel.

Layout (``vmcore-formats.md`` §7, ``libkvm-semantics.md`` §3.3,
``sys/arm64/include/minidump.h``, ``sys/arm64/arm64/minidump_machdep.c``):
a header page, then the msgbuf, dump_avail (v2 and later), bitmap and pmap
sections, each rounded to a page, then one page per set bitmap bit.  The
pmap section holds one L3 entry per page of KVA from ``kernbase``.

Versions:

* **v1**: no ``dumpavailsize``; the bit id of a page is its PFN.
* **v2**: ``dumpavailsize`` at 72 and the dump_avail section; bit ids count
  the pages of the dump_avail ranges (holes take no bits).
* **v3** (FreeBSD 14 and later): ``flags`` at 76, whose bits 0-1 give the
  page size (``MINIDUMP_FLAG_PS_4K`` 0, ``MINIDUMP_FLAG_PS_16K`` 1).  With
  16 KiB pages *everything* is in 16 KiB units: the header page, the section
  rounding, the bitmap bits, the dumped pages and the L3 entries.
  libfbsdvmcore refuses v3 (§10 quirk 10); kvm-vol reads it.

FreeBSD/arm64 writes no ELF full dumps (its ``dumpsys_map_chunk`` spins
forever, ``sys/arm64/arm64/dump_machdep.c``), so minidumps and raw images
are the arm64 containers.  :class:`MinidumpArm64Header` is the single
description of the header; the forge writes files from it.
"""

import struct
from dataclasses import dataclass
from typing import List, Tuple

from kvm_vol.core.arm64 import (
    DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, PAGE_SIZE_4K, PAGE_SIZE_16K, VM_MIN_KERNEL_ADDRESS, MinidumpArm64Translator,
)
from kvm_vol.formats.kdh import KERNELDUMP_AARCH64_VERSION  # noqa: F401 (re-exported)
from kvm_vol.formats.minidump import Layout, Minidump, section_layout

__all__ = [
    "MINIDUMP_MAGIC_ARM64", "MINIDUMP_VERSION_ARM64", "MINIDUMP_FLAG_PS_MASK", "MINIDUMP_FLAG_PS_4K",
    "MINIDUMP_FLAG_PS_16K", "KERNELDUMP_AARCH64_VERSION", "KDH_ARCHITECTURE", "MinidumpArm64Header", "MinidumpArm64",
    "is_arm64_minidump",
]

MINIDUMP_MAGIC_ARM64 = b"minidump FreeBSD/arm64"
MINIDUMP_VERSION_ARM64 = 3
MINIDUMP_FLAG_PS_MASK = 3 << 0
MINIDUMP_FLAG_PS_4K = 0 << 0
MINIDUMP_FLAG_PS_16K = 1 << 0
#: kerneldumpheader ``architecture`` of arm64 kernels (``MACHINE_ARCH``).
KDH_ARCHITECTURE = "aarch64"
_PAGE_SIZE_OF_FLAG = {MINIDUMP_FLAG_PS_4K: PAGE_SIZE_4K, MINIDUMP_FLAG_PS_16K: PAGE_SIZE_16K}

# magic[24], version, msgbufsize, bitmapsize, pmapsize, kernbase, dmapphys,
# dmapbase, dmapend, dumpavailsize (v2+), flags (v3); sizeof 80.
_HDR = struct.Struct("<24sIIIIQQQQII")
_HDR_SIZE = {1: 72, 2: 80, 3: 80}  # v2: dumpavailsize then tail padding
_VERSION_OFFSET = 24
_FLAGS_OFFSET = 76


def is_arm64_minidump(head: bytes) -> bool:
    """Whether ``head`` starts with the arm64 minidump magic (the NUL-padded 24-byte field)."""
    return head[:24].split(b"\0", 1)[0] == MINIDUMP_MAGIC_ARM64


@dataclass
class MinidumpArm64Header:
    """``struct minidumphdr`` of arm64.  ``kernbase`` is VM_MIN_KERNEL_ADDRESS, where the pmap section starts."""

    version: int = MINIDUMP_VERSION_ARM64
    msgbufsize: int = 0
    bitmapsize: int = 0
    pmapsize: int = 0
    kernbase: int = VM_MIN_KERNEL_ADDRESS
    dmapphys: int = 0
    dmapbase: int = DMAP_MIN_ADDRESS
    dmapend: int = DMAP_MAX_ADDRESS
    dumpavailsize: int = 0  #: v2 and later
    flags: int = MINIDUMP_FLAG_PS_4K  #: v3 only; v1 and v2 are 4 KiB

    @property
    def size(self) -> int:
        return _HDR_SIZE[self.version]

    @property
    def page_size(self) -> int:
        """The kernel's page size: from ``flags`` in v3, 4 KiB before (KeyError for a reserved flag)."""
        if self.version < 3:
            return PAGE_SIZE_4K
        return _PAGE_SIZE_OF_FLAG[self.flags & MINIDUMP_FLAG_PS_MASK]

    @property
    def pmap_span(self) -> int:
        """Bytes of KVA one pmap entry (an L3 entry) covers: one page."""
        return self.page_size

    def layout(self) -> Layout:
        """Section offsets as libkvm's ``_aarch64_minidump_initvtop`` computes them."""
        return section_layout(self.page_size, self.msgbufsize, self.dumpavailsize if self.version >= 2 else 0,
                              self.bitmapsize, self.pmapsize)

    def pack(self) -> bytes:
        """The header page: the structure (fields of later versions zero) padded to one page."""
        raw = _HDR.pack(
            MINIDUMP_MAGIC_ARM64, self.version, self.msgbufsize, self.bitmapsize, self.pmapsize, self.kernbase,
            self.dmapphys, self.dmapbase, self.dmapend, self.dumpavailsize if self.version >= 2 else 0,
            self.flags if self.version >= 3 else 0)
        return raw + bytes(self.page_size - len(raw))


class MinidumpArm64(Minidump):
    """An arm64 minidump.  Structure errors raise :class:`DumpFormatError` at open; damage that
    leaves pages readable is listed by :meth:`problems` (as for amd64)."""

    arch = "arm64"
    dump_avail_since = 2

    def _parse_header(self, head: bytes) -> MinidumpArm64Header:  # type: ignore[override]
        if not is_arm64_minidump(head):
            raise self._error(f"not an arm64 minidump: magic {head[:24]!r}", 0, "magic")
        version = self._header_version(head)
        if not 1 <= version <= MINIDUMP_VERSION_ARM64:
            # libkvm: "wrong minidump version. Expected 3 got N" (capital E on arm64)
            raise self._error(
                f"wrong minidump version. Expected {MINIDUMP_VERSION_ARM64} got {version} "
                f"(kvm-vol reads arm64 versions 1 to {MINIDUMP_VERSION_ARM64})", _VERSION_OFFSET, "version")
        self._check_header_size(head, version, _HDR_SIZE[version])
        f = _HDR.unpack(head[:_HDR.size].ljust(_HDR.size, b"\0"))
        hdr = MinidumpArm64Header(
            version=version, msgbufsize=f[2], bitmapsize=f[3], pmapsize=f[4], kernbase=f[5], dmapphys=f[6],
            dmapbase=f[7], dmapend=f[8], dumpavailsize=f[9] if version >= 2 else 0,
            flags=f[10] if version >= 3 else MINIDUMP_FLAG_PS_4K)
        if hdr.flags & MINIDUMP_FLAG_PS_MASK not in _PAGE_SIZE_OF_FLAG:
            # libkvm: "unknown page size flag %x"
            raise self._error(f"unknown page size flag {hdr.flags & MINIDUMP_FLAG_PS_MASK:x} "
                              "(0 is 4 KiB pages, 1 is 16 KiB; 2, 64 KiB, is reserved)", _FLAGS_OFFSET, "flags")
        if hdr.dmapbase > hdr.dmapend:
            raise self._error(f"dmapend {hdr.dmapend:#x} is below dmapbase {hdr.dmapbase:#x}", 64, "dmapend")
        return hdr

    def _orphan_pdes(self) -> List[Tuple[int, int]]:
        """arm64's pmap section holds L3 entries (leaves): no page-table page can be missing."""
        return []

    def translator(self) -> MinidumpArm64Translator:  # type: ignore[override]
        """Kernel-VA translator over this dump (file offsets in the outermost file)."""
        hdr = self.header
        return MinidumpArm64Translator(
            hdr.version, self.page_size, hdr.kernbase, hdr.dmapphys, hdr.dmapbase, hdr.dmapend, self.pmap_entry,
            self.pmap_entries, self.bitmap_index, self.source.read)

    def info(self) -> dict:
        hdr = self.header
        info = super().info()
        info["header"] = {
            "magic": MINIDUMP_MAGIC_ARM64.decode(), "version": hdr.version, "msgbufsize": hdr.msgbufsize,
            "bitmapsize": hdr.bitmapsize, "pmapsize": hdr.pmapsize, "kernbase": hdr.kernbase,
            "dmapphys": hdr.dmapphys, "dmapbase": hdr.dmapbase, "dmapend": hdr.dmapend,
            "dumpavailsize": hdr.dumpavailsize, "flags": hdr.flags,
        }
        info["page_size"] = self.page_size
        info["pmap_entry_kind"] = "L3 entries"
        info["dmapphys"] = hdr.dmapphys
        return info
