"""Minidump page bitmap: physical address ↔ bit id ↔ file offset.

A minidump stores one bit per physical page and then, from ``sparse_off``,
one page of data per set bit in ascending bit order, so the file offset of
a dumped page is ``sparse_off + (set bits before its bit) * page_size``
(``vmcore-formats.md`` §4, ``libkvm-semantics.md`` §3.4).

Bit ids are counted over the ``dump_avail`` ranges, range after range, so
holes between ranges take no bits (minidump v3).  Older minidumps have no
dump_avail and the bit id is the page frame number, which is the same thing
as a single range starting at 0.  Unlike libkvm (quirk 4), an address in a
hole between ranges has *no* bit id: it is not in the dump.

The rank ("set bits before bit b") comes from a table of cumulative counts
every :data:`POPCOUNT_BITS` bits plus one popcount over at most 128 bytes,
so a lookup costs O(1) whatever the bitmap length, and any length (not only
multiples of 8 bytes or of a page, libkvm quirks 6 and 7) is handled.
"""

import struct
from array import array
from bisect import bisect_right
from itertools import accumulate
from typing import Iterator, List, Optional, Sequence, Tuple

from kvm_vol.core.amd64 import PAGE_SIZE

__all__ = ["POPCOUNT_BITS", "Run", "first_bad_range", "DumpAvail", "BitmapIndex"]

#: Bits per cumulative-count bin (libkvm's ``POPCOUNT_BITS``).
POPCOUNT_BITS = 1024
_BIN_BYTES = POPCOUNT_BITS // 8
_ALL_ONES = (1 << 64) - 1
#: Bitmap bytes examined at once when looking for runs (zero and full blocks are skipped whole).
_SCAN_BYTES = 512
_SCAN_WORDS = struct.Struct(f"<{_SCAN_BYTES // 8}Q")
#: Bitmap bytes checked for being all zeros at once while building the bins (a multiple of a bin).
_ZERO_BLOCK_BYTES = 1 << 16

#: ``(physical address, file offset, length)``; offsets are in the outermost file.
Run = Tuple[int, int, int]


def _popcount_py38(x: int) -> int:
    return bin(x).count("1")


#: Set bits in a non-negative int (``int.bit_count`` from Python 3.10 on).
_popcount = getattr(int, "bit_count", _popcount_py38)


def first_bad_range(ranges: Sequence[Tuple[int, int]]) -> Optional[Tuple[int, str]]:
    """``(index, reason)`` of the first range that is empty, unsorted or overlapping, else None.

    One check shared by :class:`DumpAvail` (which refuses bad input) and the
    minidump parser (which reports it with the file offset of the entry).
    """
    prev_end = 0
    for i, (start, end) in enumerate(ranges):
        if start >= end:
            return i, f"empty or inverted range [{start:#x}, {end:#x})"
        if start < prev_end:
            return i, (f"range [{start:#x}, {end:#x}) starts before the previous one ends at {prev_end:#x} "
                       "(unsorted or overlapping)")
        prev_end = end
    return None


class DumpAvail:
    """The dump_avail ranges and the compressed bit numbering they define.

    Range ``r`` covers pages ``floor(start/ps) .. ceil(end/ps) - 1`` and its
    first page has bit id "pages of all earlier ranges", exactly as the
    kernel's ``vm_page_dump_add`` numbers them (``sys/vm/vm_dumpset.h``).
    """

    def __init__(self, ranges: Sequence[Tuple[int, int]], page_size: int = PAGE_SIZE):
        self.ranges: List[Tuple[int, int]] = [(int(s), int(e)) for s, e in ranges]
        bad = first_bad_range(self.ranges)
        if bad is not None:
            raise ValueError(f"dump_avail[{bad[0]}]: {bad[1]}")
        self.page_size = page_size
        self._first_pfn = [s // page_size for s, _ in self.ranges]
        self._end_pfn = [-(-e // page_size) for _, e in self.ranges]
        self._first_bit: List[int] = []
        total = 0
        for first, end in zip(self._first_pfn, self._end_pfn):
            self._first_bit.append(total)
            total += end - first
        #: Total number of pages (= bits) the ranges describe.
        self.pages = total

    def bit_id(self, pa: int) -> Optional[int]:
        """Bit id of the page holding ``pa``, or None if that page is in no range.

        A page shared by two unaligned ranges belongs to the first one, as
        in the kernel's ``vm_page_dump_add``.
        """
        pfn = pa // self.page_size
        r = bisect_right(self._first_pfn, pfn) - 1
        if r > 0 and pfn < self._end_pfn[r - 1]:
            r -= 1
        if r < 0 or pfn >= self._end_pfn[r]:
            return None
        return pfn - self._first_pfn[r] + self._first_bit[r]

    def pa_of_bit(self, bit: int) -> Optional[int]:
        """Physical address of the page with bit id ``bit``, or None past the last range."""
        if not 0 <= bit < self.pages:
            return None
        r = bisect_right(self._first_bit, bit) - 1
        return (self._first_pfn[r] + bit - self._first_bit[r]) * self.page_size

    def split(self, bit: int, count: int) -> Iterator[Tuple[int, int, int]]:
        """Cut bits ``[bit, bit+count)`` into ``(bit, pa, n)`` pieces contiguous in PA.

        Bits past the last range have no address and are dropped.
        """
        end = min(bit + count, self.pages)
        while bit < end:
            r = bisect_right(self._first_bit, bit) - 1
            range_end = self._first_bit[r] + self._end_pfn[r] - self._first_pfn[r]
            n = min(end, range_end) - bit
            yield bit, (self._first_pfn[r] + bit - self._first_bit[r]) * self.page_size, n
            bit += n


class BitmapIndex:
    """Locate dumped physical pages in a minidump file.

    ``bitmap`` is the bitmap section (any length), ``dump_avail`` the ranges
    (None for v1/v2 minidumps: bit id = PFN), ``sparse_off`` the file offset
    of the first dumped page and ``page_count_in_file`` how many whole pages
    the file really holds from there (None: trust the bitmap).  When the file
    is truncated, pages whose data is missing are simply not in the dump;
    :attr:`missing` says how many.
    """

    def __init__(
        self,
        bitmap: bytes,
        dump_avail: Optional[Sequence[Tuple[int, int]]],
        sparse_off: int,
        page_count_in_file: Optional[int],
        page_size: int = PAGE_SIZE,
    ):
        self._bitmap = bytes(bitmap)
        self.nbits = len(self._bitmap) * 8
        self.page_size = page_size
        self.sparse_off = sparse_off
        if dump_avail is None:
            dump_avail = [(0, self.nbits * page_size)] if self.nbits else []
        self.avail = DumpAvail(dump_avail, page_size)
        view = memoryview(self._bitmap)
        size = len(self._bitmap)
        counts = [0] * (-(-size // _BIN_BYTES))
        # Whole blocks of zeros (most of a big machine's sparse bitmap) are
        # skipped at C speed; only the others are counted bin by bin.
        for block in range(0, size, _ZERO_BLOCK_BYTES):
            end = min(block + _ZERO_BLOCK_BYTES, size)
            if self._bitmap.count(0, block, end) == end - block:
                continue
            for start in range(block, end, _BIN_BYTES):
                counts[start // _BIN_BYTES] = _popcount(int.from_bytes(view[start:start + _BIN_BYTES], "little"))
        bins = array("Q", [0])
        bins.extend(accumulate(counts))
        total = bins[-1]
        self._bins = bins
        #: Set bits, i.e. pages the dump claims to hold.
        self.count = total
        #: Pages whose data is really in the file.
        self.present = total if page_count_in_file is None else max(0, min(total, page_count_in_file))
        #: Pages claimed by the bitmap but cut off by the end of the file.
        self.missing = total - self.present

    def rank(self, bit: int) -> int:
        """Number of set bits before ``bit`` (``0 <= bit <= nbits``)."""
        binno = bit // POPCOUNT_BITS
        start = binno * _BIN_BYTES
        nbytes = (bit >> 3) - start
        count = self._bins[binno] + _popcount(int.from_bytes(self._bitmap[start:start + nbytes], "little"))
        if bit & 7:
            count += _popcount(self._bitmap[bit >> 3] & ((1 << (bit & 7)) - 1))
        return count

    def pa_to_offset(self, pa: int) -> Optional[int]:
        """File offset of the byte at physical address ``pa``, or None if it is not dumped."""
        bit = self.avail.bit_id(pa)
        if bit is None or bit >= self.nbits or not self._bitmap[bit >> 3] >> (bit & 7) & 1:
            return None
        rank = self.rank(bit)
        if rank >= self.present:
            return None
        return self.sparse_off + rank * self.page_size + pa % self.page_size

    def stray_bits(self) -> int:
        """Set bits beyond the dump_avail ranges: pages in the file that no address reaches."""
        if self.avail.pages >= self.nbits:
            return 0
        return self.count - self.rank(self.avail.pages)

    def bit_runs(self) -> Iterator[Tuple[int, int]]:
        """Maximal runs ``(first_bit, count)`` of set bits, ascending."""
        bitmap = self._bitmap
        size = len(bitmap)
        zero_block = bytes(_SCAN_BYTES)
        full_block = b"\xff" * _SCAN_BYTES
        run_start = run_end = -1
        for start in range(0, size, _SCAN_BYTES):
            block = bitmap[start:start + _SCAN_BYTES]
            base = start * 8
            if block == zero_block:
                continue
            if block == full_block:
                pieces: Iterator[Tuple[int, int]] = iter(((base, _SCAN_BYTES * 8),))
            else:
                if len(block) < _SCAN_BYTES:
                    block += bytes(_SCAN_BYTES - len(block))
                pieces = _word_runs(_SCAN_WORDS.unpack(block), base)
            for first, count in pieces:
                if first == run_end:
                    run_end += count
                    continue
                if run_start >= 0:
                    yield run_start, run_end - run_start
                run_start, run_end = first, first + count
        if run_start >= 0:
            yield run_start, run_end - run_start

    def runs(self) -> Iterator[Run]:
        """Dumped physical memory as merged ``(pa, file_offset, length)``, ascending in PA.

        Runs are cut where the bit ids jump across a dump_avail hole and stop
        at the truncation point of a short file.
        """
        ps = self.page_size
        cur_pa = cur_off = cur_len = None
        rank = 0
        for first, count in self.bit_runs():
            for bit, pa, n in self.avail.split(first, count):
                r = rank + bit - first
                n = min(n, self.present - r)
                if n <= 0:
                    break
                off = self.sparse_off + r * ps
                if cur_len is not None and cur_pa + cur_len == pa and cur_off + cur_len == off:
                    cur_len += n * ps
                    continue
                if cur_len is not None:
                    yield cur_pa, cur_off, cur_len
                cur_pa, cur_off, cur_len = pa, off, n * ps
            rank += count
            if rank >= self.present:
                break
        if cur_len is not None:
            yield cur_pa, cur_off, cur_len


def _word_runs(words: Sequence[int], base: int) -> Iterator[Tuple[int, int]]:
    """Runs of set bits in consecutive little-endian 64-bit ``words`` starting at bit ``base``."""
    for i, word in enumerate(words):
        if not word:
            continue
        pos = base + i * 64
        if word == _ALL_ONES:
            yield pos, 64
            continue
        while word:
            skip = (word & -word).bit_length() - 1
            word >>= skip
            pos += skip
            ones = (~word & (word + 1)).bit_length() - 1
            yield pos, ones
            word >>= ones
            pos += ones
