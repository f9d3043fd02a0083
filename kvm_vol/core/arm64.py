"""FreeBSD/arm64 (AArch64) paging: constants, the L0-L3 walk and the minidump translator.

The pure-Python twin of ``kv_arm64.c``; like :mod:`kvm_vol.core.amd64` it
talks to the dump only through small callables, so it has no side effects
and no knowledge of file formats.  Every constant is defined here once,
with FreeBSD's name (``sys/arm64/include/pte.h``, ``vmparam.h``); the
minidump parser, the Volatility layer and the forge import them from here.

FreeBSD/arm64 is built with either a 4 KiB or a 16 KiB translation granule
(``PAGE_SIZE_4K`` / ``PAGE_SIZE_16K``; the 16 KiB kernel is ``GENERIC-16K``).
Both use 48-bit virtual addresses (``T0SZ = T1SZ = 16``) and four levels:

=========  ======================  ======================
level      4 KiB granule           16 KiB granule
=========  ======================  ======================
L0         bits 47:39, 512 slots   bit 47, **2 slots**
L1         bits 38:30 (1 GiB)      bits 46:36 (64 GiB)
L2         bits 29:21 (2 MiB)      bits 35:25 (32 MiB)
L3         bits 20:12 (4 KiB)      bits 24:14 (16 KiB)
=========  ======================  ======================

Block descriptors are allowed at L1 and L2 with 4 KiB pages, only at L2
with 16 KiB pages (Arm ARM D8.3; FreeBSD's pmap never makes an L1 block
with 16 KiB pages), never at L0.  The two halves of the address space have
their own tables: addresses whose top 16 bits are all ones go through TTBR1
(the kernel's ``pagetable_l0_ttbr1``), those whose top 16 bits are zero
through TTBR0 (a process's ``pm_l0_paddr``); anything else is
non-canonical.  An address space here therefore has two roots; the
kernel's own space has no TTBR0 table.

Like the amd64 twin, and unlike libkvm (``vmcore-formats.md`` §10), a read
is translated 4 KiB at a time (so it never runs past the end of a dump
segment) and a failed multi-page read names the first failing page.
"""

import struct
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

from kvm_vol.core.amd64 import PAGE_SIZE as CHUNK_SIZE
from kvm_vol.core.amd64 import Mapping, MinidumpTranslator, _merge_runs, _read_by_page
from kvm_vol.errors import TranslationError

__all__ = [
    "PAGE_SIZE_4K", "PAGE_SIZE_16K", "Granule", "GRANULE_4K", "GRANULE_16K", "granule_for",
    "ATTR_MASK_H", "ATTR_MASK_L", "ATTR_MASK", "BASE_MASK", "ATTR_DESCR_MASK", "ATTR_DESCR_VALID",
    "L0_TABLE", "L1_BLOCK", "L1_TABLE", "L2_BLOCK", "L2_TABLE", "L3_PAGE", "ATTR_AF", "ATTR_SH_IS", "ATTR_SH",
    "ATTR_DEFAULT", "ATTR_S1_nG", "ATTR_S1_AP_RW_BIT", "ATTR_S1_AP", "ATTR_S1_AP_RO", "ATTR_S1_AP_USER",
    "ATTR_S1_IDX", "ATTR_S1_PXN", "ATTR_S1_UXN", "ATTR_S1_XN", "ATTR_SW_MANAGED", "ATTR_SW_WIRED",
    "VM_MIN_KERNEL_ADDRESS", "VM_MAX_KERNEL_ADDRESS", "KERNBASE", "DMAP_MIN_ADDRESS", "DMAP_MAX_ADDRESS",
    "VM_MIN_USER_ADDRESS", "VM_MAX_USER_ADDRESS", "TTBR1_BASE", "PHYS_AVAIL_COUNT", "VM_MEMATTR_WRITE_BACK",
    "ROOT_SYMBOL", "KERNEL_SYMBOLS", "pte_to_phys", "half_of", "walk",
    "MinidumpArm64Translator", "Arm64Space", "WalkFailure", "reason_descriptor", "reason_block", "reason_no_table",
]

# --- page sizes (sys/arm64/include/param.h) ------------------------------------
PAGE_SIZE_4K = 1 << 12
PAGE_SIZE_16K = 1 << 14

# --- block and page descriptor attributes (sys/arm64/include/pte.h) ---------------
ATTR_MASK_H = 0xFFFC000000000000
ATTR_MASK_L = 0x0000000000000FFF
ATTR_MASK = ATTR_MASK_H | ATTR_MASK_L
BASE_MASK = ~ATTR_MASK & 0xFFFFFFFFFFFFFFFF  #: the output address bits (``PTE_TO_PHYS``)
ATTR_SW_WIRED = 1 << 55
ATTR_SW_MANAGED = 1 << 56
ATTR_S1_UXN = 1 << 54
ATTR_S1_PXN = 1 << 53
ATTR_S1_XN = ATTR_S1_PXN | ATTR_S1_UXN
ATTR_S1_nG = 1 << 11
ATTR_AF = 1 << 10
ATTR_SH_IS = 3  #: inner shareable


def ATTR_SH(x: int) -> int:  # noqa: N802 - FreeBSD's macro name
    return x << 8


ATTR_S1_AP_RW_BIT = 1 << 7
ATTR_S1_AP_RO = 1 << 1
ATTR_S1_AP_USER = 1 << 0


def ATTR_S1_AP(x: int) -> int:  # noqa: N802
    return x << 6


def ATTR_S1_IDX(x: int) -> int:  # noqa: N802
    return x << 2


ATTR_DEFAULT = ATTR_AF | ATTR_SH(ATTR_SH_IS)  #: what minidumpsys ORs into its synthetic L3 entries
#: ``VM_MEMATTR_WRITE_BACK`` (sys/arm64/include/vm.h): the MAIR index of normal cached memory.
VM_MEMATTR_WRITE_BACK = 2

# --- descriptor types (pte.h) ---------------------------------------------------------
ATTR_DESCR_MASK = 3
ATTR_DESCR_VALID = 1
L0_TABLE = 3  #: L0 has no block descriptor
L1_BLOCK = 1
L1_TABLE = 3
L2_BLOCK = 1
L2_TABLE = 3
L3_PAGE = 3  #: 1 is reserved at L3, 0 and 2 are invalid

# --- address-space layout (sys/arm64/include/vmparam.h) --------------------------------
VM_MIN_KERNEL_ADDRESS = 0xFFFF000000000000  #: start of KVA; minidump "kernbase"
VM_MAX_KERNEL_ADDRESS = 0xFFFF008000000000  #: 512 GiB of KVA
KERNBASE = VM_MIN_KERNEL_ADDRESS  #: the kernel is linked from here (``#define KERNBASE``)
DMAP_MIN_ADDRESS = 0xFFFFA00000000000  #: direct map of physical memory from ``dmap_phys_base``
DMAP_MAX_ADDRESS = 0xFFFFFF0000000000
VM_MIN_USER_ADDRESS = 0x0000000000000000
VM_MAX_USER_ADDRESS = 0x0001000000000000  #: end of the TTBR0 half (48-bit VA)
#: First address of the TTBR1 half: 64 - T1SZ (16) = 48 bits of VA.
TTBR1_BASE = 0xFFFF000000000000
#: The kernel's TTBR1 L0 table (locore.S ``pagetable_l0_ttbr1``; ``kernel_pmap->pm_l0``).
ROOT_SYMBOL = "pagetable_l0_ttbr1"
#: The kernel symbols a reader's arm64 set-up looks up.
KERNEL_SYMBOLS = (ROOT_SYMBOL,)
#: Entries of ``phys_avail[]``/``dump_avail[]``: PHYS_AVAIL_ENTRIES (VM_PHYSSEG_MAX 64 * 2) + 2.
PHYS_AVAIL_COUNT = 130

_U64 = struct.Struct("<Q")
_U64_MAX = (1 << 64) - 1
_VA_BITS = 48


class Granule(NamedTuple):
    """One translation granule: FreeBSD's ``Ln_SHIFT`` and entry counts for it (pte.h)."""

    page_shift: int  #: L3_SHIFT = PAGE_SHIFT
    l0_shift: int
    l1_shift: int
    l2_shift: int
    l0_entries: int  #: L0_ENTRIES: 512, or 2 with 16 KiB pages
    ln_entries: int  #: Ln_ENTRIES: entries of an L1-L3 table (one page of u64)

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def l3_shift(self) -> int:
        return self.page_shift

    def shift(self, level: int) -> int:
        """``Ln_SHIFT`` of ``level`` (0-3)."""
        return (self.l0_shift, self.l1_shift, self.l2_shift, self.page_shift)[level]

    def entries(self, level: int) -> int:
        return self.l0_entries if level == 0 else self.ln_entries

    def index(self, level: int, va: int) -> int:
        """``pmap_l<level>_index(va)``."""
        return (va >> self.shift(level)) & (self.entries(level) - 1)

    def block_allowed(self, level: int) -> bool:
        """Whether a block descriptor is architecturally allowed at ``level`` (L1: 4 KiB only)."""
        return level == 2 or (level == 1 and self.page_shift == 12)


GRANULE_4K = Granule(12, 39, 30, 21, 512, 512)
GRANULE_16K = Granule(14, 47, 36, 25, 2, 2048)


def granule_for(page_size: int) -> Granule:
    """The granule of a 4 KiB or 16 KiB kernel; anything else is refused with ValueError."""
    for g in (GRANULE_4K, GRANULE_16K):
        if g.page_size == page_size:
            return g
    raise ValueError(f"FreeBSD/arm64 has 4 KiB or 16 KiB pages, not {page_size}")


def pte_to_phys(entry: int) -> int:
    """FreeBSD's ``PTE_TO_PHYS``: the output address of a table, block or page descriptor."""
    return entry & BASE_MASK


def half_of(va: int) -> Optional[int]:
    """0 for the TTBR0 (user) half, 1 for the TTBR1 (kernel) half, None if non-canonical."""
    if not 0 <= va <= _U64_MAX:
        return None
    top = va >> _VA_BITS
    if top == 0:
        return 0
    if top == 0xFFFF:
        return 1
    return None


class WalkFailure(TranslationError):
    """A :class:`TranslationError` that also says where the next translatable address may be.

    ``next_va`` is the first address after ``address`` that is not known to
    fail the same way (None: nothing above does), so a mapping over a huge
    sparse range costs the tables it crosses, not its pages.  The C core
    computes the same bound.
    """

    def __init__(self, address: int, reason: str, next_va: Optional[int]):
        super().__init__(address, reason)
        self.next_va = next_va


def _after(va: int, size: int) -> Optional[int]:
    """First address of the next ``size``-aligned block after ``va`` (None past 2**64)."""
    nxt = (va | (size - 1)) + 1
    return nxt if nxt <= _U64_MAX else None


def reason_descriptor(level: int) -> str:
    """Why an L<level> descriptor stops a walk (the C core's ``KV_E_A64_DESC``)."""
    return f"l{level} descriptor not valid"


def reason_block(level: int, page_size: int) -> str:
    """A block descriptor where the granule allows none (``KV_E_A64_BLOCK``)."""
    return f"l{level} block descriptor not allowed with {page_size // 1024} KiB pages"


def reason_no_table(half: int) -> str:
    """An address in a half of the address space this space has no table for (``KV_E_A64_NOTABLE``)."""
    name = "TTBR0 (user)" if half == 0 else "TTBR1 (kernel)"
    return f"no {name} page table in this address space"


def _no_table(va: int, half: int) -> WalkFailure:
    return WalkFailure(va, reason_no_table(half), VM_MAX_USER_ADDRESS if half == 0 else None)


def _noncanonical(va: int) -> WalkFailure:
    return WalkFailure(va, "non-canonical address", TTBR1_BASE if VM_MAX_USER_ADDRESS <= va < TTBR1_BASE else None)


def walk(read_u64_phys: Callable[[int], int], ttbr0: Optional[int], ttbr1: Optional[int], va: int,
         granule: Granule = GRANULE_4K) -> Tuple[int, int]:
    """Translate ``va`` through the L0-L3 tables of its half of the address space.

    Returns ``(pa, leaf_size)``: the physical address of ``va`` and the size
    of the descriptor that maps it (a page, an L2 block, or with 4 KiB pages
    an L1 block).  ``ttbr0``/``ttbr1`` are the physical addresses of the two
    L0 tables (None: that half has no table).  ``read_u64_phys(pa)`` reads
    one descriptor and raises :class:`TranslationError` for memory not in
    the dump, which becomes a :class:`WalkFailure` with its reason and the
    end of the region that table maps.  An invalid descriptor
    raises :class:`WalkFailure` naming the level (``"l2 descriptor not
    valid"``).  Table addresses are ``PTE_TO_PHYS`` of the descriptor, as
    FreeBSD's pmap computes them.
    """
    half = half_of(va)
    if half is None:
        raise _noncanonical(va)
    root = ttbr1 if half else ttbr0
    if root is None:
        raise _no_table(va, half)
    table = pte_to_phys(root) & ~(granule.page_size - 1)
    for level in range(4):
        shift = granule.shift(level)
        try:
            entry = read_u64_phys(table + granule.index(level, va) * 8)
        except TranslationError as exc:
            if level == 0:
                nxt = VM_MAX_USER_ADDRESS if half == 0 else None
            else:
                nxt = _after(va, 1 << granule.shift(level - 1))
            raise WalkFailure(va, exc.reason, nxt) from None
        kind = entry & ATTR_DESCR_MASK
        if level == 3:
            if kind != L3_PAGE:
                raise WalkFailure(va, reason_descriptor(3), _after(va, 1 << shift))
            return (pte_to_phys(entry) & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1)), 1 << shift
        if kind == L1_BLOCK and level in (1, 2):  # L1_BLOCK == L2_BLOCK
            if not granule.block_allowed(level):
                raise WalkFailure(va, reason_block(level, granule.page_size), _after(va, 1 << shift))
            size = 1 << shift
            return (pte_to_phys(entry) & ~(size - 1)) | (va & (size - 1)), size
        if kind != L0_TABLE:  # all tables are 3
            raise WalkFailure(va, reason_descriptor(level), _after(va, 1 << shift))
        table = pte_to_phys(entry) & ~(granule.page_size - 1)
    raise AssertionError("unreachable")


class MinidumpArm64Translator(MinidumpTranslator):
    """Kernel VA → file offset for an arm64 minidump (``vmcore-formats.md`` §7).

    The dump keeps no table tree, only the "pmap" section: one L3 entry per
    page of KVA from the header's ``kernbase`` (``minidumpsys`` writes a page
    of L3 entries per L2 slot, synthesising them for L2 and L1 blocks).  The
    direct map is checked *first*, as libkvm does: ``dmapbase <= va <
    dmapend`` is ``pa = va - dmapbase + dmapphys``.  ``page_size`` is 4 KiB
    (v1, v2, v3 with ``MINIDUMP_FLAG_PS_4K``) or 16 KiB (v3 with
    ``MINIDUMP_FLAG_PS_16K``).  Reasons are libkvm's texts, except that an
    invalid L3 entry says ``pte not valid`` (libkvm prints ``pde not
    valid`` for it; FreeBSD types L3 entries ``pt_entry_t``).
    """

    def __init__(self, version: int, page_size: int, kernbase: int, dmapphys: int, dmapbase: int, dmapend: int,
                 pmap_entry: Callable[[int], Optional[int]], pmap_entries: int, phys,
                 read_file: Callable[[int, int], bytes]):
        if version not in (1, 2, 3):
            raise ValueError(f"arm64 minidump version {version} is not 1, 2 or 3")
        self.granule = granule_for(page_size)
        super().__init__(kernbase, pmap_entry, pmap_entries, phys, read_file)
        self.version = version
        self.page_size = page_size
        self.dmapphys = dmapphys
        self.dmapbase = dmapbase
        self.dmapend = dmapend

    def covers(self, va: int) -> bool:
        """Whether ``va`` is translated by the minidump rules (direct map or ``>= kernbase``)."""
        return self.dmapbase <= va < self.dmapend or va >= self.kernbase

    def kvatop(self, va: int) -> Tuple[int, int, int]:
        """``(file_offset, pa, bytes left to the end of the 4 KiB chunk)``; raises :class:`WalkFailure`."""
        ps = self.page_size
        offset = va & (ps - 1)
        chunk_left = CHUNK_SIZE - (va & (CHUNK_SIZE - 1))
        if self.dmapbase <= va < self.dmapend:
            page = (va - self.dmapbase + self.dmapphys) & _U64_MAX & ~(ps - 1)
            off = self.phys.pa_to_offset(page)
            if off is None:
                raise WalkFailure(va, f"direct map address {va:#x} not in minidump", _after(va, ps))
            return off + offset, page + offset, chunk_left
        if va >= self.kernbase:
            index = (va - self.kernbase) >> self.granule.l3_shift
            if index >= self.pmap_entries:
                nxt = self.dmapbase if va < self.dmapbase else None
                raise WalkFailure(va, f"virtual address {va:#x} not minidumped (beyond the pmap section)", nxt)
            l3 = self.pmap_entry(index)
            if l3 & ATTR_DESCR_MASK != L3_PAGE:
                raise WalkFailure(va, "pte not valid", _after(va, ps))
            page = pte_to_phys(l3) & ~(ps - 1)
            off = self.phys.pa_to_offset(page)
            if off is None:
                raise WalkFailure(va, f"physical address {page:#x} not in minidump", _after(va, ps))
            return off + offset, page + offset, chunk_left
        raise WalkFailure(va, f"virtual address {va:#x} not minidumped",
                          self.dmapbase if va < self.dmapbase else self.kernbase)


class Arm64Space:
    """An arm64 address space of the twin: the walk from two roots, optionally libkvm's minidump rules.

    ``read_phys(pa, n)`` reads dumped physical memory (raising
    :class:`TranslationError` for missing memory) and ``find(pa)`` gives
    ``(file_offset, bytes contiguous from there)`` or None.  ``ttbr1`` is the
    kernel's L0 table, ``ttbr0`` a process's (None for the kernel's own
    space).  With ``minidump`` (a :class:`MinidumpArm64Translator`) the
    direct map and ``va >= kernbase`` follow the dump's pmap section and
    everything else (user addresses) the walk.  ``translate``, ``read`` and
    ``mapping`` behave like the amd64 twin's and the C core's.
    """

    def __init__(self, read_phys: Callable[[int, int], bytes], find: Callable[[int], Optional[Tuple[int, int]]],
                 what: str, ttbr0: Optional[int], ttbr1: Optional[int], granule: Granule,
                 minidump: Optional[MinidumpArm64Translator] = None):
        self.read_phys = read_phys
        self.find = find
        self.what = what
        self.ttbr0 = ttbr0
        self.ttbr1 = ttbr1
        self.granule = granule
        self.md = minidump

    def _read_u64(self, pa: int) -> int:
        return _U64.unpack(self.read_phys(pa, 8))[0]

    def _locate(self, va: int) -> Tuple[int, int, int, bool]:
        """``(pa, file_offset, bytes usable, by_minidump)`` of ``va``; raises :class:`WalkFailure`."""
        if not 0 <= va <= _U64_MAX:
            raise _noncanonical(va)
        if self.md is not None and self.md.covers(va):
            off, pa, avail = self.md.kvatop(va)
            return pa, off, avail, True
        pa, size = walk(self._read_u64, self.ttbr0, self.ttbr1, va, self.granule)
        found = self.find(pa)
        if found is None:
            raise WalkFailure(va, f"physical page {pa & ~(CHUNK_SIZE - 1):#x} not in {self.what}",
                              _after(va, CHUNK_SIZE))
        leaf_left = size - (va & (size - 1))
        return pa, found[0], min(leaf_left, found[1]), False

    def translate(self, va: int) -> Tuple[int, int]:
        """``(pa, file_offset)`` of ``va``; raises :class:`TranslationError`."""
        try:
            pa, off, _avail, _md = self._locate(va)
        except WalkFailure as exc:
            raise TranslationError(va, exc.reason) from None
        return pa, off

    def _chunk(self, va: int, n: int) -> bytes:
        try:
            if self.md is not None and 0 <= va <= _U64_MAX and self.md.covers(va):
                return self.md._chunk(va, n)
            pa, _off, _avail, _md = self._locate(va)
            return self.read_phys(pa, n)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        return _read_by_page(va, length, self._chunk, pad)

    def mapping(self, va: int, length: int, ignore_errors: bool = False) -> Iterator[Mapping]:
        """``(va, pa, file_offset, length)`` runs of ``[va, va+length)``, merged while contiguous."""
        if length <= 0:
            return
        if va < 0:
            raise ValueError(f"negative address {va:#x}")
        yield from _merge_runs(self._pieces(va, min(va + length, _U64_MAX + 1), ignore_errors))

    def _pieces(self, va: int, end: int, ignore_errors: bool) -> Iterator[Mapping]:
        """The mapped pieces of ``[va, end)``, one translation each, for :meth:`mapping`."""
        cur = va
        while cur < end:
            try:
                pa, off, avail, _md = self._locate(cur)
            except WalkFailure as exc:
                if not ignore_errors:
                    raise TranslationError(cur, exc.reason) from None
                if exc.next_va is None or exc.next_va <= cur:
                    break
                cur = exc.next_va
                continue
            take = min(avail, end - cur)
            yield cur, pa, off, take
            cur += take

