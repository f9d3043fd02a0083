"""Sparse physical memory of a synthetic FreeBSD machine.

The forge lays kernel objects, page tables and user pages into a
:class:`PhysMem`; the dump writers (:mod:`kvm_vol.forge.writers`) turn it into
minidumps, ELF full dumps and raw images.  Pages that were never written read
as zeros, like free RAM in a raw image.
"""

import struct
from typing import Dict, Iterator, List, Sequence, Tuple

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1


class PhysMem:
    """Physical RAM described by ``dump_avail``-style ranges ``[start, end)``.

    ``pages`` maps a page frame number to its 4 KiB contents; only written
    pages are stored, so a machine with gigabytes of RAM costs what it holds.
    Writes outside the RAM ranges raise ``ValueError`` (a forge bug, not an
    evidence problem).
    """

    def __init__(self, ranges: Sequence[Tuple[int, int]]):
        self.ranges: List[Tuple[int, int]] = sorted((int(s), int(e)) for s, e in ranges)
        for s, e in self.ranges:
            if s >= e:
                raise ValueError(f"empty RAM range [{s:#x}, {e:#x})")
        self.pages: Dict[int, bytearray] = {}

    @property
    def end(self) -> int:
        """One past the highest RAM address (size of a raw image)."""
        return self.ranges[-1][1]

    def in_ram(self, pa: int) -> bool:
        return any(s <= pa < e for s, e in self.ranges)

    def _page(self, pfn: int, create: bool) -> bytearray:
        page = self.pages.get(pfn)
        if page is None and create:
            pa = pfn << PAGE_SHIFT
            if not self.in_ram(pa):
                raise ValueError(f"forge wrote outside RAM at {pa:#x}")
            page = self.pages[pfn] = bytearray(PAGE_SIZE)
        return page

    def write(self, pa: int, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            off = pa & PAGE_MASK
            n = min(len(view), PAGE_SIZE - off)
            self._page(pa >> PAGE_SHIFT, True)[off:off + n] = view[:n]
            view = view[n:]
            pa += n

    def read(self, pa: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            off = pa & PAGE_MASK
            n = min(length, PAGE_SIZE - off)
            page = self._page(pa >> PAGE_SHIFT, False)
            out += page[off:off + n] if page is not None else bytes(n)
            pa += n
            length -= n
        return bytes(out)

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def read_u64(self, pa: int) -> int:
        return struct.unpack("<Q", self.read(pa, 8))[0]

    def touch(self, pfn: int) -> None:
        """Materialise page ``pfn`` (zero-filled) so that it counts as populated."""
        self._page(pfn, True)

    def populated(self) -> Iterator[int]:
        """Page frame numbers that hold data, ascending."""
        return iter(sorted(self.pages))
