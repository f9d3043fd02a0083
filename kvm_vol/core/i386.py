"""FreeBSD/i386 paging: the constants, the two page walks and the minidump translator.

The pure-Python twin of ``kv_i386.c``, in the style of :mod:`kvm_vol.core.amd64`:
side-effect free, talking to the dump through small callables.  Every
FreeBSD/i386 fact is defined here once, with FreeBSD's name
(``sys/i386/include/{param,pmap,pmap_pae,pmap_nopae,vmparam,minidump}.h``);
the i386 minidump parser, the ELF reader, the layers and the forge import
them from this module.  The page size and the PTE bits (``PG_V``, ``PG_PS``...)
are the x86 hardware's and are the very values of ``i386/include/pmap.h``, so
they are taken from :mod:`kvm_vol.core.amd64` instead of being written twice.

Since FreeBSD 12 one i386 kernel carries *both* pmaps, PAE and non-PAE, and
the int ``pae_mode`` chooses one at boot (``pmap_cold``): non-PAE is the
classic 2-level walk (4-byte entries, 4 MiB superpages), PAE the 3-level
walk (a 4-entry PDPT, 8-byte entries, 2 MiB superpages).  Both run the
"4/4G split": user and kernel each get the whole 4 GiB, the kernel image is
linked and loaded at 8 MiB (``KERNBASE == KERNLOAD``, so kernel VA == PA for
the image and the page tables ``pmap_cold`` allocates), and the top PDEs hold
the recursive page-table map and the user/kernel trampoline.  There is no
direct map, so a minidump translates nothing below its ``kernbase``.

libkvm's behaviours deliberately not copied (``vmcore-formats.md`` §10):
multi-page reads report the first failing page, the specific reason
survives instead of ``invalid address``, a physical page in a dump_avail
hole is not in the dump (the bitmap index checks the range start), and a
translation is valid only to the end of its 4 KiB page (a read inside a
superpage never runs past a dump segment).  libkvm's full-dump set-up also
takes ``IdlePDPT``'s mere presence to mean PAE, which is wrong on every
kernel since 12 (both pmaps exist); :func:`pmap_mode` and the stacker read
``pae_mode`` instead.
"""

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from kvm_vol.core.amd64 import (  # x86 page size and entry bits (identical in i386/include/pmap.h)
    PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PG_A, PG_G, PG_M, PG_NX, PG_PS, PG_RW, PG_U, PG_V, MinidumpTranslator,
    PageTableTranslator, round_page,
)
from kvm_vol.errors import TranslationError

if TYPE_CHECKING:
    from kvm_vol.core.bitmap import BitmapIndex

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "PAGE_MASK", "PG_V", "PG_RW", "PG_U", "PG_A", "PG_M", "PG_PS", "PG_G", "PG_NX",
    "PDRSHIFT_PAE", "PDRSHIFT_NOPAE", "PG_FRAME_PAE", "PG_PS_FRAME_PAE", "PG_FRAME_NOPAE", "PG_PS_FRAME_NOPAE",
    "PDPTSHIFT", "NPDPTEPG", "PDPT_ALIGN", "KERNLOAD", "KERNBASE", "VM_MAXUSER_ADDRESS", "VM_MAX_KERNEL_ADDRESS",
    "PMAP_TRM_MIN_ADDRESS", "SHAREDPAGE", "USRSTACK", "PMAP_MAP_LOW", "VA_LIMIT", "PmapMode", "PAE", "NOPAE",
    "KERNEL_SYMBOLS", "pmap_mode", "round_page", "walk", "PageTableTranslatorI386", "MinidumpI386Translator", "REASON_VA32",
]

# --- sys/i386/include/pmap.h: the per-mode frame masks and PDE shifts -------
PDRSHIFT_PAE = 21  #: a PAE PDE maps 2 MiB
PG_FRAME_PAE = 0x000FFFFFFFFFF000  #: next table or 4 KiB frame, PAE
PG_PS_FRAME_PAE = 0x000FFFFFFFE00000  #: 2 MiB frame of a PAE PDE with PG_PS
PDRSHIFT_NOPAE = 22  #: a non-PAE PDE maps 4 MiB
PG_FRAME_NOPAE = 0xFFFFF000  #: ``~PAGE_MASK`` on 32-bit entries
PG_PS_FRAME_NOPAE = 0xFFC00000  #: 4 MiB frame of a non-PAE PDE with PG_PS (no PSE-36)

#: A PAE PDPT entry maps 1 GiB; CR3 (``IdlePDPT``, ``pmap_get_cr3``) holds the
#: 32-byte-aligned physical address of the 4-entry PDPT (Intel SDM 4.4.1;
#: process PDPTs come from a UMA zone, so they need not be page-aligned).
PDPTSHIFT = 30
NPDPTEPG = 4
PDPT_ALIGN = 32

# --- sys/i386/include/vmparam.h: the 4/4G split layout ---------------------
KERNLOAD = 8 * 1024 * 1024  #: physical load address of the kernel image
KERNBASE = KERNLOAD  #: "KERNBASE (VA) == KERNLOAD (PA)"; the minidump header's kernbase
PMAP_MAP_LOW = 4 * 1024 * 1024  #: fixed mapping of low memory (4-8 MiB)
VM_MAX_KERNEL_ADDRESS = 0xFFFFFFFF - 16 * 1024 * 1024 + 1  #: 0xff000000
VM_MAXUSER_ADDRESS = 0xFFFFFFFF - 4 * 1024 * 1024 + 1  #: 0xffc00000: the trampoline PDE(s) start here
PMAP_TRM_MIN_ADDRESS = VM_MAXUSER_ADDRESS
SHAREDPAGE = VM_MAXUSER_ADDRESS - PAGE_SIZE  #: the shared page, just below the trampoline
USRSTACK = SHAREDPAGE  #: top of the user stack (``sv_usrstack`` of ``elf32_freebsd_sysvec``)
#: One past the highest i386 virtual address.
VA_LIMIT = 1 << 32
#: Why an address of 4 GiB or more cannot be translated (twin and C core say the same).
REASON_VA32 = "address beyond the 32-bit address space"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: Entry names by level (index = level - 1), as the amd64 walk names them.
_LEVEL_NAMES = ("pte", "pde", "pdpe")


@dataclass(frozen=True)
class PmapMode:
    """The facts of one of the two i386 pmaps (``pmap_pae.h`` / ``pmap_nopae.h``).

    ``pae_mode`` (the kernel int, and the minidump header's ``paemode``)
    selects one of :data:`PAE` and :data:`NOPAE`; everything that differs
    between the two is a field here, so no caller tests the mode itself.
    """

    name: str
    pae: bool
    entry_size: int  #: sizeof(pt_entry_t) = sizeof(pd_entry_t)
    pdrshift: int
    pg_frame: int
    pg_ps_frame: int
    npgptd: int  #: pages of the page directory
    ntrpptd: int  #: PDEs of the user/kernel trampoline at the top
    lowptdi: int  #: PDE of the fixed low-memory map
    kernptdi: int  #: first PDE of the kernel image (KERNLOAD >> PDRSHIFT)
    nkpt: int  #: page-table pages pmap_cold() preallocates
    kva_pages: int  #: KVA_PAGES
    #: The kernel's page-table root: the pointer symbol stack/kvm read (physical address).
    root_symbol: str
    #: The kernel's page-directory pointer symbol (physical address of NPGPTD pages).
    ptd_symbol: str
    #: ``struct pmap`` field with the KVA of a process's root table.
    pmap_root_field: str

    @property
    def nbpdr(self) -> int:
        return 1 << self.pdrshift

    @property
    def pdrmask(self) -> int:
        return self.nbpdr - 1

    @property
    def nptepg(self) -> int:
        """Entries in one page-table page: 512 (PAE) or 1024."""
        return PAGE_SIZE // self.entry_size

    @property
    def npdeptd(self) -> int:
        """Entries in the whole page directory: 2048 (PAE) or 1024."""
        return self.npgptd * PAGE_SIZE // self.entry_size

    @property
    def ptdptdi(self) -> int:
        """The recursive PDE(s): ``NPDEPTD - NTRPPTD - NPGPTD``."""
        return self.npdeptd - self.ntrpptd - self.npgptd

    @property
    def trptdi(self) -> int:
        """The first trampoline PDE: ``NPDEPTD - NTRPPTD``."""
        return self.npdeptd - self.ntrpptd

    @property
    def levels(self) -> int:
        return 3 if self.pae else 2

    @property
    def entry(self) -> struct.Struct:
        return _U64 if self.pae else _U32


PAE = PmapMode("PAE", True, 8, PDRSHIFT_PAE, PG_FRAME_PAE, PG_PS_FRAME_PAE, npgptd=4, ntrpptd=2, lowptdi=2,
               kernptdi=4, nkpt=240, kva_pages=512 * 4, root_symbol="IdlePDPT", ptd_symbol="IdlePTD_pae",
               pmap_root_field="pm_pdpt_pae")
NOPAE = PmapMode("non-PAE", False, 4, PDRSHIFT_NOPAE, PG_FRAME_NOPAE, PG_PS_FRAME_NOPAE, npgptd=1, ntrpptd=1,
                 lowptdi=1, kernptdi=2, nkpt=30, kva_pages=256 * 4, root_symbol="IdlePTD_nopae",
                 ptd_symbol="IdlePTD_nopae", pmap_root_field="pm_pdir_nopae")
assert PAE.kernptdi << PAE.pdrshift == KERNLOAD == NOPAE.kernptdi << NOPAE.pdrshift  # pmap.c's _Static_assert
#: The kernel symbols the i386 set-up reads: ``pae_mode`` and the roots (``pmap.c``), ``IdlePTD`` before 12.
KERNEL_SYMBOLS = ("pae_mode", PAE.root_symbol, PAE.ptd_symbol, NOPAE.root_symbol, "IdlePTD")


def pmap_mode(pae_mode: int) -> PmapMode:
    """The pmap a kernel (``pae_mode``) or a minidump (``paemode``) uses: non-zero is PAE."""
    return PAE if pae_mode else NOPAE


def _check_va(va: int) -> None:
    if not 0 <= va < VA_LIMIT:
        raise TranslationError(va, REASON_VA32)


def walk(read_phys: Callable[[int, int], bytes], root_pa: int, va: int, mode: PmapMode) -> Tuple[int, int]:
    """Translate ``va`` through the i386 page tables rooted at ``root_pa``.

    ``root_pa`` is CR3's value: the page directory (non-PAE, page-aligned)
    or the PDPT (PAE, 32-byte aligned).  Returns ``(pa, leaf size)``: 4 KiB,
    or 4 MiB / 2 MiB for a PDE with PG_PS.  ``read_phys(pa, n)`` reads an
    entry; whatever it raises (a table page missing from the dump)
    propagates.  An invalid entry raises :class:`TranslationError` naming
    the level (``pdpe``, ``pde``, ``pte``), like the amd64 walk.
    """
    _check_va(va)
    unpack = mode.entry.unpack
    size = mode.entry_size
    if mode.pae:
        pdpte = unpack(read_phys((root_pa & ~(PDPT_ALIGN - 1)) + (va >> PDPTSHIFT) * size, size))[0]
        if not pdpte & PG_V:
            raise TranslationError(va, "pdpe not valid")
        pd = pdpte & mode.pg_frame
        pdi = (va >> mode.pdrshift) & (mode.nptepg - 1)
    else:
        pd = root_pa & mode.pg_frame
        pdi = va >> mode.pdrshift
    pde = unpack(read_phys(pd + pdi * size, size))[0]
    if not pde & PG_V:
        raise TranslationError(va, "pde not valid")
    if pde & PG_PS:
        return (pde & mode.pg_ps_frame) | (va & mode.pdrmask), mode.nbpdr
    pte = unpack(read_phys((pde & mode.pg_frame) + ((va >> PAGE_SHIFT) & (mode.nptepg - 1)) * size, size))[0]
    if not pte & PG_V:
        raise TranslationError(va, "pte not valid")
    return (pte & mode.pg_frame) | (va & PAGE_MASK), PAGE_SIZE


class PageTableTranslatorI386(PageTableTranslator):
    """Kernel or process VA → PA through i386 page tables in physical memory.

    For ELF full dumps and raw images, rooted at the kernel's ``IdlePTD_nopae``
    or ``IdlePDPT`` (by ``pae_mode``) or a process's PD/PDPT.  Reads and the
    per-page error rule are :class:`~kvm_vol.core.amd64.PageTableTranslator`'s.
    """

    def __init__(self, read_phys: Callable[[int, int], bytes], root_pa: int, mode: PmapMode):
        super().__init__(read_phys, root_pa, levels=mode.levels)
        self.mode = mode

    def kvatop(self, va: int) -> Tuple[int, int]:
        try:
            pa, _size = walk(self.read_phys, self.root_pa, va, self.mode)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None
        return pa, PAGE_SIZE - (va & PAGE_MASK)


class MinidumpI386Translator(MinidumpTranslator):
    """Kernel VA → file offset for an i386 minidump (``vmcore-formats.md`` §6).

    ``cpu_minidumpsys`` writes one page-table page per ``NBPDR`` of KVA from
    ``KERNBASE`` to ``kernel_vm_end`` (a fake page of PTEs for a superpage,
    a zero page for an invalid PDE), so the pmap section is a flat PTE array
    from the header's ``kernbase``: 8-byte PTEs when ``paemode`` is set,
    4-byte ones otherwise.  ``pmap_entry(i)`` returns PTE ``i`` (None past
    the section).  Addresses below ``kernbase`` are not in the dump: i386
    has no direct map.  Messages are libkvm's specific texts (the amd64
    translator's), which libkvm itself overwrites with ``invalid address``.
    """

    def __init__(
        self,
        kernbase: int,
        mode: PmapMode,
        pmap_entry: Callable[[int], Optional[int]],
        pmap_entries: int,
        phys: "BitmapIndex",
        read_file: Callable[[int, int], bytes],
    ):
        super().__init__(kernbase, pmap_entry, pmap_entries, phys, read_file)
        self.mode = mode
        # No direct map: the engine's "minidump rules apply" test is va >= kernbase only.
        self.dmapbase = self.dmapend = 0

    def kvatop(self, va: int) -> Tuple[int, int, int]:
        """``(file_offset, pa, bytes left to the end of the 4 KiB page)`` for ``va``."""
        _check_va(va)
        offset = va & PAGE_MASK
        if va < self.kernbase:
            raise TranslationError(va, f"virtual address {va:#x} not minidumped")
        index = (va - self.kernbase) >> PAGE_SHIFT
        pte = self.pmap_entry(index) if index < self.pmap_entries else None
        if pte is None:
            raise TranslationError(va, f"virtual address {va:#x} not minidumped (beyond the pmap section)")
        if not pte & PG_V:
            raise TranslationError(va, "pte not valid")
        page = pte & self.mode.pg_frame
        off = self.phys.pa_to_offset(page)
        if off is None:
            raise TranslationError(va, f"physical address {page:#x} not in minidump")
        return off + offset, page + offset, PAGE_SIZE - offset
