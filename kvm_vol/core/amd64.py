"""amd64 paging: the constants, a page-table walk and the minidump translator.

This is the pure-Python twin of the future C core, so everything here is
side-effect free and talks to the dump only through small callables
(``read_u64_phys``, ``read_phys``, ``read_file``, ``pmap_entry``).  Each
constant is defined once, here, with FreeBSD's name
(``sys/amd64/include/pmap.h``, ``vmparam.h``); the minidump parser, the ELF
reader and the forge writers import them from this module.

Two libkvm behaviours are deliberately *not* copied (``vmcore-formats.md``
§10): a multi-page read reports the first page that failed instead of
failing as a whole with a generic message, and every translation is valid
only to the end of its 4 KiB page, so a read inside a large page never runs
past the end of a dump segment.
"""

import abc
import struct
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Tuple

from kvm_vol.errors import TranslationError

if TYPE_CHECKING:  # bitmap.py imports the page size from here
    from kvm_vol.core.bitmap import BitmapIndex

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "PAGE_MASK", "PDRSHIFT", "NBPDR", "PDRMASK", "PDPSHIFT", "NBPDP",
    "PDPMASK", "NPTEPG", "NPDEPG", "NPDPEPG", "NPML4EPG", "PML4PML4I",
    "PG_V", "PG_RW", "PG_U", "PG_A", "PG_M", "PG_PS", "PG_G", "PG_NX",
    "PG_FRAME", "PG_PS_FRAME", "PG_PS_PDP_FRAME",
    "PML4SHIFT", "NKPML4E", "NDMPML4E", "KPML4BASE", "KPML4I", "KPDPI", "DMPML4I",
    "KERNBASE", "VM_MIN_KERNEL_ADDRESS", "DMAP_MIN_ADDRESS", "DMAP_MAX_ADDRESS", "KERNLOAD", "KERNSTART", "PHYS_AVAIL_COUNT",
    "round_page", "is_canonical", "walk",
    "PageTableTranslator", "MinidumpTranslator", "MinidumpAmd64Translator",
]

# --- sizes (sys/amd64/include/param.h) -------------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1
PDRSHIFT = 21  #: a PDE maps 2 MiB
NBPDR = 1 << PDRSHIFT
PDRMASK = NBPDR - 1
PDPSHIFT = 30  #: a PDPE maps 1 GiB
NBPDP = 1 << PDPSHIFT
PDPMASK = NBPDP - 1
NPTEPG = NPDEPG = NPDPEPG = NPML4EPG = PAGE_SIZE // 8  #: 512 entries per table page
#: The PML4 slot that maps the page tables themselves (``NPML4EPG / 2``).
PML4PML4I = NPML4EPG // 2

# --- page-table entry bits (sys/amd64/include/pmap.h) ----------------------
PG_V = 0x001
PG_RW = 0x002
PG_U = 0x004
PG_A = 0x020
PG_M = 0x040
PG_PS = 0x080
PG_G = 0x100
PG_NX = 1 << 63
PG_FRAME = 0x000FFFFFFFFFF000  #: next table or 4 KiB frame
PG_PS_FRAME = 0x000FFFFFFFE00000  #: 2 MiB frame of a PDE with PG_PS
PG_PS_PDP_FRAME = 0x000FFFFFC0000000  #: 1 GiB frame of a PDPE with PG_PS

# --- kernel address-space layout, 4-level paging (sys/amd64/include/pmap.h, vmparam.h)
PML4SHIFT = 39  #: a PML4 entry maps 512 GiB
NKPML4E = 4  #: PML4 slots of kernel virtual memory
NDMPML4E = 8  #: PML4 slots of the direct map
KPML4BASE = NPML4EPG - NKPML4E  #: first kernel PML4 slot (508)
KPML4I = NPML4EPG - 1  #: the PML4 slot holding KERNBASE (511)
KPDPI = NPDPEPG - 2  #: the PDP slot of KERNBASE: "kernbase at -2GB" (510)
DMPML4I = (KPML4BASE - NDMPML4E) // NDMPML4E * NDMPML4E  #: first direct-map PML4 slot (496)


def _kv4addr(l4: int, l3: int = 0) -> int:
    """FreeBSD's ``KV4ADDR``: a kernel (sign-extended) address from PML4 and PDP slots."""
    return (0xFFFF << 48) | (l4 << PML4SHIFT) | (l3 << PDPSHIFT)


KERNBASE = _kv4addr(KPML4I, KPDPI)  #: 0xffffffff80000000, where the kernel image is linked
VM_MIN_KERNEL_ADDRESS = _kv4addr(KPML4BASE)  #: 0xfffffe0000000000; minidump v2/v3 "kernbase"
DMAP_MIN_ADDRESS = _kv4addr(DMPML4I)  #: 0xfffff80000000000, direct map of physical memory
DMAP_MAX_ADDRESS = _kv4addr(DMPML4I + NDMPML4E)  #: 0xfffffc0000000000
KERNLOAD = 0x200000  #: physical (and KERNBASE-relative) load address of a BIOS-booted kernel
#: Entries of ``phys_avail[]``/``dump_avail[]``: PHYS_AVAIL_ENTRIES + 2 = VM_PHYSSEG_MAX (63) * 2 + 2
#: (``vm/vm_phys.h``, ``amd64/include/vmparam.h``); ``[start, end)`` pairs ended by a pair whose end is 0.
PHYS_AVAIL_COUNT = 128
KERNSTART = KERNBASE + KERNLOAD
#: User address space (vmparam.h, 4-level paging): VM_MAXUSER_ADDRESS_LA48, and
#: USRSTACK_LA48 = SHAREDPAGE_LA48 = VM_MAXUSER_ADDRESS_LA48 - PAGE_SIZE.
VM_MAXUSER_ADDRESS_LA48 = 1 << 47
USRSTACK_LA48 = VM_MAXUSER_ADDRESS_LA48 - PAGE_SIZE
#: COMPAT_FREEBSD32 (vmparam.h): FREEBSD32_MAXUSER = 4 GiB - PAGE_SIZE, and
#: FREEBSD32_USRSTACK = FREEBSD32_SHAREDPAGE = FREEBSD32_MAXUSER - PAGE_SIZE.
FREEBSD32_MAXUSER = (1 << 32) - PAGE_SIZE
FREEBSD32_USRSTACK = FREEBSD32_MAXUSER - PAGE_SIZE

_U64 = struct.Struct("<Q")
_ADDR_LIMIT = 1 << 64
_LEVEL_NAMES = ("pte", "pde", "pdpe", "pml4e", "pml5e")  # index = level - 1


def canonical(va: int) -> int:
    """Sign-extend a 48-bit address: the form the kernel prints (Volatility hands out masked offsets).

    Right for amd64 and arm64 kernel addresses (bits 63-48 copy bit 47), and
    a no-op for i386's (below 2**32, bit 47 is never set).
    """
    va &= 0xFFFFFFFFFFFFFFFF
    return va | 0xFFFF000000000000 if va & (1 << 47) else va


def round_page(x: int) -> int:
    """``x`` rounded up to a 4 KiB boundary (FreeBSD's ``round_page``)."""
    return (x + PAGE_MASK) & ~PAGE_MASK


def is_canonical(va: int, levels: int = 4) -> bool:
    """Whether ``va`` is canonical: bits above 47 (57 with LA57) copy bit 47 (56)."""
    if not 0 <= va < _ADDR_LIMIT:
        return False
    top = va >> (PAGE_SHIFT + 9 * levels - 1)
    return top == 0 or top == (1 << (64 - PAGE_SHIFT - 9 * levels + 1)) - 1


def walk(read_u64_phys: Callable[[int], int], root_pa: int, va: int, levels: int = 4) -> Tuple[int, int]:
    """Translate ``va`` through the page tables rooted at ``root_pa``.

    Returns ``(pa, page_size)``: the physical address of ``va`` itself and
    the size of the leaf that maps it (4 KiB, 2 MiB or 1 GiB).  ``levels``
    is 4, or 5 for LA57.  ``read_u64_phys(pa)`` reads one entry; whatever it
    raises (typically :class:`TranslationError` for a table page missing
    from the dump) propagates.  An invalid entry raises
    :class:`TranslationError` naming the level (``"pde not valid"``) so the
    user can tell a hole in the mapping from a hole in the dump.
    """
    if levels not in (4, 5):
        raise ValueError(f"amd64 paging has 4 or 5 levels, not {levels}")
    if not is_canonical(va, levels):
        raise TranslationError(va, "non-canonical address")
    table = root_pa & PG_FRAME
    for level in range(levels, 0, -1):
        shift = PAGE_SHIFT + 9 * (level - 1)
        entry = read_u64_phys(table + ((va >> shift) & (NPTEPG - 1)) * 8)
        if not entry & PG_V:
            raise TranslationError(va, f"{_LEVEL_NAMES[level - 1]} not valid")
        if entry & PG_PS and level in (2, 3):
            frame = PG_PS_FRAME if level == 2 else PG_PS_PDP_FRAME
            size = 1 << shift
            return (entry & frame) | (va & (size - 1)), size
        table = entry & PG_FRAME
    return table | (va & PAGE_MASK), PAGE_SIZE


def _read_by_page(va: int, length: int, chunk: Callable[[int, int], bytes], pad: bool) -> bytes:
    """Read ``length`` bytes at ``va``, translating every 4 KiB page on its own.

    ``chunk(va, n)`` returns the ``n`` bytes at ``va`` (never crossing a page)
    or raises :class:`TranslationError`.  Without ``pad`` the first failure
    propagates and names that page; with ``pad`` missing pages read as zeros
    (what a caller such as Volatility's ``pad=True`` read expects).
    """
    if length < 0:
        raise ValueError("negative length")
    out = bytearray()
    while length > 0:
        n = min(length, PAGE_SIZE - (va & PAGE_MASK))
        try:
            out += chunk(va, n)
        except TranslationError:
            if not pad:
                raise
            out += bytes(n)
        va += n
        length -= n
    return bytes(out)


#: A run of a mapping, ``(va, pa, file_offset, length)``: ``length`` bytes contiguous in VA, PA and the file.
Mapping = Tuple[int, int, int, int]


def _merge_runs(pieces: Iterable[Mapping]) -> Iterator[Mapping]:
    """``pieces`` merged into runs while va, pa and file offset all stay contiguous.

    A :class:`TranslationError` raised by ``pieces`` propagates only after
    the run before it has been yielded, so a caller that stops at the first
    invalid page still sees every run up to it.
    """
    last: Optional[List[int]] = None
    it = iter(pieces)
    while True:
        try:
            va, pa, off, n = next(it)
        except StopIteration:
            break
        except TranslationError:
            if last is not None:
                yield tuple(last)
            raise
        if last is not None and last[0] + last[3] == va and last[1] + last[3] == pa and last[2] + last[3] == off:
            last[3] += n
        else:
            if last is not None:
                yield tuple(last)
            last = [va, pa, off, n]
    if last is not None:
        yield tuple(last)


class PageTableTranslator:
    """Kernel (or process) VA → PA through real page tables in physical memory.

    Used for ELF full dumps and raw images, where the dump holds physical
    memory and the page tables are walked from a root such as ``KPML4phys``
    (``vmcore-formats.md`` §8).  ``read_phys(pa, n)`` must raise
    :class:`TranslationError` for memory that is not in the dump; a read
    failure is re-raised naming the virtual page.
    """

    def __init__(self, read_phys: Callable[[int, int], bytes], root_pa: int, levels: int = 4):
        self.read_phys = read_phys
        self.root_pa = root_pa
        self.levels = levels

    def _read_u64(self, pa: int) -> int:
        return _U64.unpack(self.read_phys(pa, 8))[0]

    def kvatop(self, va: int) -> Tuple[int, int]:
        """``(pa, bytes left to the end of the 4 KiB page)`` for ``va``."""
        try:
            pa, _size = walk(self._read_u64, self.root_pa, va, self.levels)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None
        return pa, PAGE_SIZE - (va & PAGE_MASK)

    def _chunk(self, va: int, n: int) -> bytes:
        pa, _avail = self.kvatop(va)
        try:
            return self.read_phys(pa, n)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        """Bytes at ``va``; raises :class:`TranslationError` for the first bad page."""
        return _read_by_page(va, length, self._chunk, pad)


class MinidumpTranslator(abc.ABC):
    """What the minidump translators of every architecture share.

    A minidump keeps no page-table tree, only its "pmap" section indexed from
    the header's ``kernbase``: ``pmap_entry(i)`` returns entry ``i`` (or
    ``None`` past the section), ``phys`` locates dumped physical pages and
    ``read_file(offset, n)`` reads the dump file.  A subclass supplies
    ``kvatop(va) -> (file_offset, pa, bytes left)``; reads go through it one
    4 KiB page at a time.
    """

    def __init__(
        self,
        kernbase: int,
        pmap_entry: Callable[[int], Optional[int]],
        pmap_entries: int,
        phys: "BitmapIndex",
        read_file: Callable[[int, int], bytes],
    ):
        self.kernbase = kernbase
        self.pmap_entry = pmap_entry
        self.pmap_entries = pmap_entries
        self.phys = phys
        self.read_file = read_file

    @abc.abstractmethod
    def kvatop(self, va: int) -> Tuple[int, int, int]:
        """``(file_offset, pa, bytes left to the end of the page)`` for ``va``, or TranslationError."""

    def _chunk(self, va: int, n: int) -> bytes:
        off, pa, _avail = self.kvatop(va)
        data = self.read_file(off, n)
        if len(data) != n:
            raise TranslationError(va, f"physical address {pa:#x}: file ends at offset {off + len(data):#x}")
        return data

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        """Bytes at ``va``, copied page by page.

        Raises :class:`TranslationError` naming the first page that cannot
        be read (not libkvm's all-or-nothing ``-1`` with the last error
        text), or with ``pad`` fills such pages with zeros.
        """
        return _read_by_page(va, length, self._chunk, pad)


class MinidumpAmd64Translator(MinidumpTranslator):
    """Kernel VA → file offset for an amd64 minidump (``vmcore-formats.md`` §5).

    The minidump keeps no page-table tree, only the "pmap" section: for v1 a
    PTE per 4 KiB of KVA, for v2/v3 a PDE per 2 MiB of KVA, both indexed from
    the header's ``kernbase``.  ``pmap_entry(i)`` returns entry ``i`` (or
    ``None`` past the section), ``phys`` locates dumped physical pages, and
    ``read_file(offset, n)`` reads the dump file (used for the PTE inside a
    page-table page, which must itself be a dumped page).  The reasons given
    in :class:`TranslationError` are libkvm's specific texts, which libkvm
    itself overwrites with a generic ``invalid address`` (§10 quirk 2).
    """

    def __init__(
        self,
        version: int,
        kernbase: int,
        dmapbase: int,
        dmapend: int,
        pmap_entry: Callable[[int], Optional[int]],
        pmap_entries: int,
        phys: "BitmapIndex",
        read_file: Callable[[int, int], bytes],
    ):
        if version not in (1, 2, 3):
            raise ValueError(f"amd64 minidump version {version} is not 1, 2 or 3")
        super().__init__(kernbase, pmap_entry, pmap_entries, phys, read_file)
        self.version = version
        self.dmapbase = dmapbase
        self.dmapend = dmapend

    def _kva_page(self, va: int) -> int:
        """Physical address of the 4 KiB page that maps ``va >= kernbase``."""
        if self.version == 1:
            index = (va - self.kernbase) >> PAGE_SHIFT
        else:
            index = (va - self.kernbase) >> PDRSHIFT
        entry = self.pmap_entry(index) if index < self.pmap_entries else None
        if entry is None:
            raise TranslationError(va, f"virtual address {va:#x} not minidumped (beyond the pmap section)")
        if self.version == 1:
            if not entry & PG_V:
                raise TranslationError(va, "pte not valid")
            return entry & PG_FRAME
        if not entry & PG_V:
            raise TranslationError(va, "pde not valid")
        if entry & PG_PS:
            return (entry & PG_PS_FRAME) + (va & PDRMASK & ~PAGE_MASK)
        ptpage = entry & PG_FRAME
        off = self.phys.pa_to_offset(ptpage)
        if off is None:
            # libkvm: "cannot find page table entry for <decimal pa>"
            raise TranslationError(va, f"page-table page {ptpage:#x} not in minidump")
        raw = self.read_file(off + ((va >> PAGE_SHIFT) & (NPTEPG - 1)) * 8, 8)
        if len(raw) != 8:
            raise TranslationError(va, f"page-table page {ptpage:#x} truncated in the file")
        pte = _U64.unpack(raw)[0]
        if not pte & PG_V:
            raise TranslationError(va, "pte not valid")
        return pte & PG_FRAME

    def kvatop(self, va: int) -> Tuple[int, int, int]:
        """``(file_offset, pa, bytes left to the end of the 4 KiB page)`` for ``va``.

        KVA (``va >= kernbase``) goes through the pmap section; the direct
        map (``dmapbase <= va < dmapend``) is ``pa = va - dmapbase`` with no
        page table at all; every other address is invalid.  The physical
        page must then be in the dump, holes between dump_avail ranges
        included (libkvm returns another page there, quirk 4).
        """
        offset = va & PAGE_MASK
        if va >= self.kernbase:
            page = self._kva_page(va)
            missing = f"physical address {page:#x} not in minidump"
        elif self.dmapbase <= va < self.dmapend:
            page = (va - self.dmapbase) & ~PAGE_MASK
            missing = f"direct map address {va:#x} not in minidump"
        else:
            raise TranslationError(va, f"virtual address {va:#x} not minidumped")
        off = self.phys.pa_to_offset(page)
        if off is None:
            raise TranslationError(va, missing)
        return off + offset, page + offset, PAGE_SIZE - offset
