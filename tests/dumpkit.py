"""Hand-made machines for the format, core and writer tests.

Not the forge machine: a few page tables built by hand in a
:class:`PhysMem`, with every data page filled with qwords ``TAG | PA`` so a
read of the wrong page is obvious.  :func:`build_machine` reproduces the
synthetic core of ``vmcore-formats.md`` §12.
"""

import hashlib
import random
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from kvm_vol.core.amd64 import (
    DMAP_MIN_ADDRESS, KERNBASE, NBPDP, NBPDR, PAGE_SIZE, PG_FRAME, PG_NX, PG_PS, PG_RW, PG_V,
    VM_MIN_KERNEL_ADDRESS,
)
from kvm_vol.forge.physmem import PhysMem

TAG = 0xFB5D000000000000
_PAGE_QWORDS = struct.Struct(f"<{PAGE_SIZE // 8}Q")


def tagged(pa: int, length: int) -> bytes:
    """What tagged memory holds at ``pa``: qwords ``TAG | their own address``."""
    first = pa & ~7
    count = -(-(pa + length - first) // 8)
    raw = struct.pack(f"<{count}Q", *(TAG | (first + 8 * i) for i in range(count)))
    return raw[pa - first:pa - first + length]


def fill_tagged(mem: PhysMem, start: int, end: int) -> None:
    """Fill the pages of ``[start, end)`` with tagged qwords."""
    for page in range(start & ~(PAGE_SIZE - 1), end, PAGE_SIZE):
        mem.pages[page >> 12] = bytearray(_PAGE_QWORDS.pack(*range(TAG | page, TAG | page + PAGE_SIZE, 8)))


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class PageTables:
    """amd64 4-level page tables built in ``mem``, table pages taken from a pool."""

    def __init__(self, mem: PhysMem, root: int, pool_end: int):
        self.mem = mem
        self.root = root
        self._next = root + PAGE_SIZE
        self._pool_end = pool_end
        mem.pages[root >> 12] = bytearray(PAGE_SIZE)

    def _alloc(self) -> int:
        pa = self._next
        assert pa < self._pool_end, "page-table pool exhausted"
        self._next += PAGE_SIZE
        self.mem.pages[pa >> 12] = bytearray(PAGE_SIZE)
        return pa

    def entry_pa(self, va: int, level: int) -> int:
        """Physical address of the entry for ``va`` at ``level`` (4 PML4, 3 PDP, 2 PD, 1 PT)."""
        table = self.root
        for lvl in range(4, level, -1):
            slot = table + ((va >> (12 + 9 * (lvl - 1))) & 511) * 8
            entry = self.mem.read_u64(slot)
            if not entry & PG_V:
                entry = self._alloc() | PG_V | PG_RW
                self.mem.write_u64(slot, entry)
            table = entry & PG_FRAME
        return table + ((va >> (12 + 9 * (level - 1))) & 511) * 8

    def map(self, va: int, pa: int, size: int = PAGE_SIZE, flags: int = PG_V | PG_RW) -> None:
        level = {PAGE_SIZE: 1, NBPDR: 2, NBPDP: 3}[size]
        self.mem.write_u64(self.entry_pa(va, level), pa | flags | (PG_PS if level > 1 else 0))

    def set_entry(self, va: int, level: int, value: int) -> None:
        self.mem.write_u64(self.entry_pa(va, level), value)


@dataclass
class Machine:
    mem: PhysMem
    kpml4phys: int
    #: VA -> bytes planted there (not tagged)
    strings: Dict[int, bytes] = field(default_factory=dict)
    #: the 16 scattered 4 KiB pages: (va, pa)
    scattered: List[Tuple[int, int]] = field(default_factory=list)
    excluded_pfns: Tuple[int, ...] = ()


# Addresses of the §12 machine.
RANGES = [(0x1000, 0x9F000), (0x100000, 0x2000000)]
KPML4 = 0x600000
PT_POOL_END = 0x800000
VERSION_VA = KERNBASE + 0x201000
VERSION_STR = b"FreeBSD 14.1-RELEASE releng/14.1-n267679-10e31f0946d8 GENERIC"
KPML4_VAR_VA = KERNBASE + 0x201110
STRADDLE_2M_VA = KERNBASE + 0x3FFFF8
SCATTER_VA = VM_MIN_KERNEL_ADDRESS + 0x200000
CROSS_4K_VA = SCATTER_VA + 0xFF8
NOT_DUMPED_VA = VM_MIN_KERNEL_ADDRESS + 0x210000
NOT_DUMPED_PA = 0x1100000
READONLY_VA = VM_MIN_KERNEL_ADDRESS + 0x211000
INVALID_PTE_VA = VM_MIN_KERNEL_ADDRESS + 0x212000
INVALID_PDE_VA = VM_MIN_KERNEL_ADDRESS + 0x400000
UNMAPPED_GIB_VA = VM_MIN_KERNEL_ADDRESS + 0x40000000
GIG_VA = 0xFFFFFFFFC0000000  #: 1 GiB page -> PA 0
LOW_PA = 0x50000
LOW_STR = b"LOW-MEMORY-PAGE-0x50000"
HOLE_PA = 0xA0000  #: between the two dump_avail ranges


def build_machine() -> Machine:
    """The synthetic amd64 core of ``vmcore-formats.md`` §12, as physical memory."""
    mem = PhysMem(RANGES)
    for start, end in RANGES:
        fill_tagged(mem, start, end)
    for pfn in range(KPML4 >> 12, PT_POOL_END >> 12):
        del mem.pages[pfn]
    pt = PageTables(mem, KPML4, PT_POOL_END)
    m = Machine(mem, KPML4)

    # Kernel image: two 2 MiB pages at KERNBASE + 2 MiB -> PA 0x200000.
    pt.map(KERNBASE + 0x200000, 0x200000, NBPDR)
    pt.map(KERNBASE + 0x400000, 0x400000, NBPDR)
    m.strings[VERSION_VA] = VERSION_STR
    m.strings[KPML4_VAR_VA] = struct.pack("<Q", KPML4)
    m.strings[STRADDLE_2M_VA] = b"STRADDLE-2M-BOUNDARY"

    # 16 NX pages contiguous in VA, shuffled in PA.
    order = list(range(16))
    random.Random(12345).shuffle(order)
    for i, slot in enumerate(order):
        va, pa = SCATTER_VA + i * PAGE_SIZE, 0x1000000 + slot * PAGE_SIZE
        pt.map(va, pa, PAGE_SIZE, PG_V | PG_RW | PG_NX)
        m.scattered.append((va, pa))
    m.strings[CROSS_4K_VA] = b"CROSS-4K-PAGE!!\0"

    pt.map(NOT_DUMPED_VA, NOT_DUMPED_PA, PAGE_SIZE, PG_V | PG_RW | PG_NX)
    m.excluded_pfns = (NOT_DUMPED_PA >> 12,)
    pt.map(READONLY_VA, 0x1101000, PAGE_SIZE, PG_V | PG_NX)
    pt.set_entry(INVALID_PTE_VA, 1, 0)
    pt.set_entry(INVALID_PDE_VA, 2, 0x1234000)  # V clear: an invalid PDE with junk in it

    # 1 GiB page at the top of KVA and a direct map made of 1 GiB pages.
    pt.map(GIG_VA, 0, NBPDP)
    pt.map(DMAP_MIN_ADDRESS, 0, NBPDP)
    m.strings[DMAP_MIN_ADDRESS + LOW_PA] = LOW_STR

    for va, data in m.strings.items():
        if va >= DMAP_MIN_ADDRESS and va < DMAP_MIN_ADDRESS + NBPDP:
            mem.write(va - DMAP_MIN_ADDRESS, data)
        elif va >= KERNBASE:
            mem.write(va - KERNBASE, data)
    cross_first, cross_second = m.scattered[0][1], m.scattered[1][1]
    mem.write(cross_first + 0xFF8, b"CROSS-4K")
    mem.write(cross_second, b"-PAGE!!\0")
    return m
