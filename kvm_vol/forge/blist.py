"""A swap device's block bitmap, built the way sys/kern/subr_blist.c builds it.

``struct blist`` (sys/blist.h) is a radix tree laid out in one array,
``bl_root[]`` of ``blmeta_t {u_daddr_t bm_bitmap; daddr_t bm_bighint;}``:
every node is immediately followed by its BLIST_RADIX (64) children, so a
subtree covering ``radix * 64`` blocks occupies ``radix_to_skip(radix) =
radix / 63`` slots.  In a leaf a set bit is a *free* block; in a meta node a
set bit says the child subtree still has a free block.  A node's *radix*
is the number of blocks each of its children covers (1: the node is a leaf
of 64 blocks); ``bl_radix`` is the root's, so the root covers
``bl_radix * 64`` blocks.

The forge does what the kernel does to a swap device:
``swaponsomething()`` calls ``blist_create(nblks)`` (all allocated) then
``blist_free(bl, howmany(BBSIZE, PAGE_SIZE), nblks - that)``; pages going
out to swap are then taken out of the map.  Allocations are made here with
``blist_fill()`` at chosen block ranges rather than ``blist_alloc()``'s
cursor search, so a test can place them across leaf and meta-node
boundaries; the bitmaps are the same either way (only ``bm_bighint``, a
search hint nobody counts with, may differ).

This module is the *writer's* model; the reader (``kvm_vol.kvm.swap``)
walks the tree in the dump on its own.
"""

from typing import List, Tuple

from kvm_vol.freebsd import BLIST_RADIX

BLIST_MASK = BLIST_RADIX - 1
BLIST_MAX_ALLOC = BLIST_RADIX  # sys/blist.h
ALL_ONES = (1 << BLIST_RADIX) - 1


def _bitrange(n: int, count: int) -> int:
    """bitrange(): ``count`` bits set from bit ``n``."""
    return ((ALL_ONES << n) & ALL_ONES) & (ALL_ONES >> (BLIST_RADIX - (n + count)))


def create_geometry(blocks: int) -> Tuple[int, int]:
    """(bl_radix, number of blmeta_t slots) as blist_create() computes them."""
    nodes = 1
    radix = 1
    while (blocks - 1) // BLIST_RADIX // radix > 0:
        nodes += 1 + (blocks - 1) // BLIST_RADIX // radix
        radix *= BLIST_RADIX
    if blocks % BLIST_RADIX == 0:
        nodes += 1  # the sentinel that keeps cross-leaf scans in bounds
    return radix, nodes


class Blist:
    """An in-memory ``struct blist`` with the kernel's free and fill operations."""

    def __init__(self, blocks: int):
        if blocks <= 0:
            raise ValueError("a blist needs at least one block")
        self.blocks = blocks
        self.radix, nodes = create_geometry(blocks)
        self.bitmap: List[int] = [0] * nodes  # M_ZERO: everything allocated
        self.bighint: List[int] = [0] * nodes
        self.avail = 0
        self.cursor = 0

    # -- blist_free() ------------------------------------------------------
    def free(self, blkno: int, count: int) -> None:
        if not (0 <= blkno and blkno + count <= self.blocks):
            raise ValueError(f"freeing invalid range {blkno}+{count} of {self.blocks}")
        self._meta_free(0, blkno, count, self.radix)
        self.avail += count

    def _meta_free(self, scan: int, free_blk: int, count: int, radix: int) -> None:
        self.bighint[scan] = BLIST_MAX_ALLOC
        if radix == 1:
            mask = _bitrange(free_blk & BLIST_MASK, count)
            if self.bitmap[scan] & mask:
                raise ValueError(f"freeing free block {free_blk:#x}")
            self.bitmap[scan] |= mask
            return
        end_blk = free_blk + count
        blk = (free_blk + radix * BLIST_RADIX) & -(radix * BLIST_RADIX)
        if blk != 0:
            end_blk = min(end_blk, blk)
        skip = radix // BLIST_MASK
        blk = free_blk & -radix
        digit = (blk // radix) & BLIST_MASK
        end_digit = 1 + (((end_blk - 1) // radix) & BLIST_MASK)
        self.bitmap[scan] |= _bitrange(digit, end_digit - digit)
        i = 1 + digit * skip
        while blk < end_blk:
            blk += radix
            part = min(blk, end_blk) - free_blk
            self._meta_free(scan + i, free_blk, part, radix // BLIST_RADIX)
            free_blk = blk
            i += skip

    # -- blist_fill() ------------------------------------------------------
    def fill(self, blkno: int, count: int) -> int:
        """Allocate [blkno, blkno + count); returns how many were free before."""
        if not (0 <= blkno and blkno + count <= self.blocks):
            raise ValueError(f"filling invalid range {blkno}+{count} of {self.blocks}")
        filled = self._meta_fill(0, blkno, count, self.radix)
        self.avail -= filled
        return filled

    def _meta_fill(self, scan: int, alloc_blk: int, count: int, radix: int) -> int:
        if radix == 1:
            mask = _bitrange(alloc_blk & BLIST_MASK, count)
            n = bin(self.bitmap[scan] & mask).count("1")
            self.bitmap[scan] &= ~mask & ALL_ONES
            return n
        end_blk = alloc_blk + count
        blk = (alloc_blk + radix * BLIST_RADIX) & -(radix * BLIST_RADIX)
        if blk != 0:
            end_blk = min(end_blk, blk)
        skip = radix // BLIST_MASK
        blk = alloc_blk & -radix
        nblks = 0
        while blk < end_blk:
            digit = (blk // radix) & BLIST_MASK
            i = 1 + digit * skip
            blk += radix
            part = min(blk, end_blk) - alloc_blk
            nblks += self._meta_fill(scan + i, alloc_blk, part, radix // BLIST_RADIX)
            if self.bitmap[scan + i] == 0:
                self.bitmap[scan] &= ~(1 << digit) & ALL_ONES
            alloc_blk = blk
        return nblks

    # -- the kernel object ---------------------------------------------------
    def nodes_bytes(self, word: int = 8) -> bytes:
        """bl_root[] as the kernel stores it: (bm_bitmap, bm_bighint) pairs, little-endian.

        u_daddr_t and daddr_t are 64-bit on every architecture since FreeBSD 13.
        """
        out = bytearray()
        for bitmap, hint in zip(self.bitmap, self.bighint):
            out += bitmap.to_bytes(word, "little") + (hint & ((1 << (8 * word)) - 1)).to_bytes(word, "little")
        return bytes(out)
