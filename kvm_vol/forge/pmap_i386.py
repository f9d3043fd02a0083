"""FreeBSD/i386 page tables as the kernel's pmap builds them, in a :class:`PhysMem`.

Used by the i386 forge machine and by the core tests.  :meth:`I386PageTables.kernel`
follows ``pmap_cold()`` (``sys/i386/i386/pmap.c``): the page directory
(``NPGPTD`` pages; ``IdlePTD_pae``/``IdlePTD_nopae``) and, with PAE, the
PDPT (``IdlePDPT``) pointing at its four pages; the recursive PDEs at
``PTDPTDI`` (``PTmap``); the kernel image mapped with superpages (``PG_PS``,
4 MiB or 2 MiB) at ``KERNBASE`` == ``KERNLOAD``, VA == PA.  Everything
else (kernel_map pages, process pages) is mapped with 4 KiB PTEs in page-table
pages taken from a caller-supplied allocator, as ``pmap_growkernel`` /
``_pmap_allocpte`` do.  :meth:`I386PageTables.user` builds a process pmap
(``pmap_pinit``): its own PD (and PDPT) holding only the kernel's trampoline
PDE, no kernel mappings (the 4/4G split).
"""

from typing import Callable, Optional

from kvm_vol.core.i386 import (
    KERNBASE, NPDPTEPG, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PG_A, PG_M, PG_PS, PG_RW, PG_U, PG_V, PmapMode, walk,
)
from kvm_vol.forge.physmem import PhysMem

__all__ = ["I386PageTables"]

#: What pmap_cold() gives kernel mappings (``pmap_cold_map``: "Kernel mappings never have any access restrictions").
KERNEL_FLAGS = PG_V | PG_RW | PG_A | PG_M


class I386PageTables:
    """One i386 address space: ``root`` is what CR3 holds (the PD, or the PDPT with PAE).

    ``alloc()`` returns the physical address of a fresh page (zeroed by this
    class); every table page comes from it.  ``pdpt`` may be given (a
    32-byte-aligned slot from ``pdptzone``, as ``pmap_pinit`` gets it); the
    ``NPGPTD`` page-directory pages need not be contiguous (``pmap_pinit``
    allocates them one by one), the kernel's are (``allocpages``).
    """

    def __init__(self, mem: PhysMem, mode: PmapMode, alloc: Callable[[], int], pdpt: Optional[int] = None):
        self.mem = mem
        self.mode = mode
        self._alloc = alloc
        if mode.pae:  # pmap_cold(): IdlePDPT first, then IdlePTD
            self.pdpt: Optional[int] = self._zeroed() if pdpt is None else pdpt
        else:
            self.pdpt = None
        #: Physical addresses of the ``NPGPTD`` page-directory pages.
        self.ptd_pages = [self._zeroed() for _ in range(mode.npgptd)]
        #: The first of them (``IdlePTD_*`` for the kernel's contiguous PD).
        self.ptd = self.ptd_pages[0]
        if self.pdpt is not None:
            for i, page in enumerate(self.ptd_pages[:NPDPTEPG]):
                self._put(self.pdpt + i * 8, page | PG_V)
            self.root = self.pdpt
        else:
            self.root = self.ptd

    # -- allocation and raw entries -----------------------------------------
    def _zeroed(self) -> int:
        """A fresh page from the allocator, zeroed."""
        pa = self._alloc()
        self.mem.write(pa, bytes(PAGE_SIZE))
        return pa

    def _put(self, pa: int, value: int) -> None:
        self.mem.write(pa, self.mode.entry.pack(value))

    def _get(self, pa: int) -> int:
        return self.mode.entry.unpack(self.mem.read(pa, self.mode.entry_size))[0]

    def pde_address(self, va: int) -> int:
        """Physical address of the PDE of ``va`` (``pmap_pde``: ``pm_pdir[va >> PDRSHIFT]``)."""
        return self.pdi_address(va >> self.mode.pdrshift)

    def pdi_address(self, index: int) -> int:
        """Physical address of PDE ``index`` (0 .. NPDEPTD-1) across the page-directory pages."""
        per_page = self.mode.nptepg
        return self.ptd_pages[index // per_page] + (index % per_page) * self.mode.entry_size

    def pde(self, va: int) -> int:
        return self._get(self.pde_address(va))

    def set_pde(self, va: int, value: int) -> None:
        self._put(self.pde_address(va), value)

    # -- mappings ---------------------------------------------------------------
    def map_page(self, va: int, pa: int, flags: int = KERNEL_FLAGS, user: bool = False) -> int:
        """Map the 4 KiB page ``va`` → ``pa``; returns the page-table page's PA (allocated when needed)."""
        if va & PAGE_MASK or pa & PAGE_MASK:
            raise ValueError(f"unaligned mapping {va:#x} -> {pa:#x}")
        pde = self.pde(va)
        if pde & PG_V and pde & PG_PS:
            raise ValueError(f"{va:#x} lies in a superpage")
        if not pde & PG_V:
            pt = self._zeroed()
            pde = pt | PG_V | PG_RW | PG_A | PG_M | (PG_U if user else 0)
            self.set_pde(va, pde)
        pt = pde & self.mode.pg_frame
        self._put(pt + ((va >> PAGE_SHIFT) & (self.mode.nptepg - 1)) * self.mode.entry_size,
                  pa | flags | (PG_U if user else 0))
        return pt

    def map_superpage(self, va: int, pa: int, flags: int = KERNEL_FLAGS) -> None:
        """One ``NBPDR`` superpage (``PG_PS``), as pmap_cold() maps the kernel image."""
        if va & self.mode.pdrmask or pa & self.mode.pdrmask:
            raise ValueError(f"superpage {va:#x} -> {pa:#x} is not {self.mode.nbpdr:#x}-aligned")
        self.set_pde(va, pa | flags | PG_PS)

    def unmap_page(self, va: int) -> None:
        """Clear the PTE of ``va`` (its page-table page stays)."""
        pt = self.pde(va) & self.mode.pg_frame
        self._put(pt + ((va >> PAGE_SHIFT) & (self.mode.nptepg - 1)) * self.mode.entry_size, 0)

    def translate(self, va: int) -> int:
        """The physical address of ``va`` by the very walk the readers use (raises TranslationError)."""
        return walk(self.mem.read, self.root, va, self.mode)[0]

    # -- the two kinds of pmap ---------------------------------------------------
    def _recursive(self) -> None:
        """``PTD[PTDPTDI + a] = ptd page a | PG_V | PG_RW``: the page tables map themselves (PTmap)."""
        for i, page in enumerate(self.ptd_pages):
            self._put(self.pdi_address(self.mode.ptdptdi + i), page | PG_V | PG_RW)

    @classmethod
    def kernel(cls, mem: PhysMem, mode: PmapMode, alloc: Callable[[], int], kernend: int) -> "I386PageTables":
        """The kernel pmap of ``pmap_cold()``: recursive PDEs, image ``[KERNBASE, kernend)`` in superpages.

        ``alloc`` must hand out consecutive pages here (``allocpages``): the
        kernel's NPGPTD page-directory pages are one physically contiguous block.
        """
        pt = cls(mem, mode, alloc)
        if any(page != pt.ptd + i * PAGE_SIZE for i, page in enumerate(pt.ptd_pages)):
            raise ValueError("the kernel's page-directory pages must be physically contiguous (allocpages)")
        pt._recursive()
        for va in range(KERNBASE, kernend, mode.nbpdr):
            pt.map_superpage(va, va)  # KERNBASE (VA) == KERNLOAD (PA)
        return pt

    def user(self, alloc: Optional[Callable[[], int]] = None, pdpt: Optional[int] = None) -> "I386PageTables":
        """A process pmap as ``pmap_pinit`` makes it: zeroed PD pages and ``pm_pdir[TRPTDI] = PTD[TRPTDI]``.

        Nothing else of the kernel's, not even the recursive PDEs: with the
        4/4G split the user owns [0, VM_MAXUSER_ADDRESS), the stack sits just
        below the trampoline.  ``alloc`` (default: this pmap's) gives its
        pages, ``pdpt`` its PDPT slot (PAE).
        """
        mode = self.mode
        pt = type(self)(self.mem, mode, alloc or self._alloc, pdpt=pdpt)
        pt._put(pt.pdi_address(mode.trptdi), self._get(self.pdi_address(mode.trptdi)))
        return pt
