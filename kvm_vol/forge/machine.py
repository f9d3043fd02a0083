"""A synthetic FreeBSD/amd64 machine, laid out the way the kernel lays it out.

:class:`Machine` owns the physical memory, the kernel page tables (built like
``create_pagetables()`` in ``sys/amd64/amd64/pmap.c``), the kernel image with
its symbols, and allocators that place kernel objects where FreeBSD puts
them: UMA items in the direct map, kernel stacks in KVA with 4 KiB pages.
Every struct is written through :class:`kvm_vol.forge.layout.Layout`, i.e.
with the offsets of a real FreeBSD release's headers.

The population (processes, threads, credentials) is added by
:mod:`kvm_vol.forge.procs`; the dump files are written by
:mod:`kvm_vol.forge.writers`.
"""

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kvm_vol.core import amd64 as A
from kvm_vol.forge.layout import Layout
from kvm_vol.forge.physmem import PAGE_SIZE, PhysMem

NBPDR = 1 << 21  # bytes mapped by a page-directory entry
NBPDP = 1 << 30  # bytes mapped by a page-directory-pointer entry
_PTE_KERNEL = A.PG_V | A.PG_RW | A.PG_A | A.PG_M | A.PG_G
_PTE_TABLE = A.PG_V | A.PG_RW
_PTE_USER_TABLE = A.PG_V | A.PG_RW | A.PG_U


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class Machine:
    """Physical memory + kernel page tables + kernel image of one FreeBSD/amd64 box.

    Args:
        layout: struct layouts of the release being imitated.
        ram_size: end of RAM (bytes).  ``dump_avail`` becomes
            ``[0x1000, 0x9f000) [0x100000, ram_size)`` like a BIOS machine's.
        kernphys: physical address of the kernel's first 2 MiB page (KERNSTART).
            0x200000 is the BIOS loader's choice; UEFI loaders stage the kernel
            elsewhere (any 2 MiB-aligned address), which shifts the image by
            ``kernphys - KERNLOAD``.
        dmap_1g: CPU supports 1 GiB pages, so the direct map uses them for
            whole gigabytes of RAM (and 2 MiB pages around the kernel).
        seed: physical pages for kernel objects are handed out in a shuffled
            order (like a fragmented free list), so VA-contiguous KVA is
            PA-scattered.
    """

    KERNEL_IMAGE_SIZE = 2 * NBPDR  # text + data of the synthetic kernel
    NKPT = 32  # kernel page-table pages preallocated by create_pagetables()
    KSTACK_PAGES = 4  # KSTACK_PAGES on amd64

    def __init__(self, layout: Layout, ram_size: int = 64 << 20, kernphys: int = A.KERNLOAD,
                 dmap_1g: bool = False, seed: int = 1):
        if kernphys % NBPDR:
            raise ValueError("kernphys must be 2 MiB aligned")
        if ram_size % NBPDR or ram_size < 32 << 20:
            raise ValueError("ram_size must be a multiple of 2 MiB and at least 32 MiB")
        self.layout = layout
        self.ram_size = ram_size
        self.kernphys = kernphys
        self.dmap_1g = dmap_1g
        self.mem = PhysMem([(0x1000, 0x9F000), (0x100000, ram_size)])
        self.symbols: Dict[str, int] = {"kernbase": A.KERNBASE}
        self.symbol_types: Dict[str, Dict[str, Any]] = {}
        self.uma_pfns: set = set()  # direct-map pages holding UMA slabs (dumped by minidumps)
        self.kva_pages: Dict[int, int] = {}  # 4 KiB KVA mappings made after boot: va -> pa

        # Physical address plan: [kernphys, kernphys + image) is the kernel;
        # boot page tables follow it (allocpages() from KERNend); the message
        # buffer sits at the top of RAM; everything else is a shuffled pool.
        self._kernend = kernphys + self.KERNEL_IMAGE_SIZE
        self._firstaddr = self._kernend
        self.msgbuf_size = 0x18000  # MSGBUF_SIZE default (96 KiB)
        self.msgbuf_pa = ram_size - _round_up(self.msgbuf_size, PAGE_SIZE)
        pool_lo = max(_round_up(self._kernend, NBPDR) + 8 * NBPDR, 16 << 20)
        self._pool: List[int] = list(range(pool_lo, self.msgbuf_pa, PAGE_SIZE))
        random.Random(seed).shuffle(self._pool)

        self._data_cursor = A.KERNSTART + 0x100000  # .data/.bss of the image
        self._rodata_cursor = A.KERNSTART + 0x80000  # .rodata
        self._rodata_literals: Dict[Tuple[bytes, int], int] = {}  # merged string literals
        self._kva_cursor = A.VM_MIN_KERNEL_ADDRESS + 0x400000  # kernel_map allocations
        self.kernel_vm_end = A.VM_MIN_KERNEL_ADDRESS
        self._slabs: Dict[int, Tuple[int, int]] = {}  # item size -> (slab pa, next offset)

        self._create_pagetables()

    # ------------------------------------------------------------------
    # physical pages
    def _allocpages(self, n: int) -> int:
        """Boot-time allocation right after the kernel (pmap.c allocpages())."""
        pa = self._firstaddr
        self._firstaddr += n * PAGE_SIZE
        for i in range(n):
            self.mem.touch((pa >> 12) + i)
        return pa

    def alloc_page(self) -> int:
        """A zeroed physical page from the (shuffled) free pool."""
        if not self._pool:
            raise MemoryError("forge machine is out of RAM; use a larger ram_size")
        pa = self._pool.pop()
        self.mem.touch(pa >> 12)
        return pa

    # ------------------------------------------------------------------
    # page tables
    def _create_pagetables(self) -> None:
        """Build the kernel page tables like create_pagetables() does."""
        mem = self.mem
        self.kpml4phys = self._allocpages(1)
        self.kpdpphys = self._allocpages(A.NKPML4E)
        ndmpdp = max(-(-self.ram_size // NBPDP), 4)  # "Minimum 4GB of dirmap"
        ndm1g = self.ram_size // NBPDP if self.dmap_1g else 0
        dmpdpphys = self._allocpages(1)
        dmpdphys = self._allocpages(ndmpdp - ndm1g) if ndmpdp > ndm1g else 0
        kptphys = self._allocpages(self.NKPT)
        kpdphys = self._allocpages(1)

        # Kernel PD: PT pages for the KERNBASE region, then 2 MiB pages for
        # the kernel image ("for compatibility, identity map 2M at the start").
        for i in range(self.NKPT):
            mem.write_u64(kpdphys + 8 * i, (kptphys + i * PAGE_SIZE) | _PTE_TABLE)
        mem.write_u64(kpdphys, A.PG_V | A.PG_PS | A.PG_G | A.PG_M | A.PG_A | A.PG_RW | A.PG_NX)
        pax, i = self.kernphys, 1
        while pax < self._kernend:
            mem.write_u64(kpdphys + 8 * i, pax | A.PG_V | A.PG_PS | A.PG_G | A.PG_M | A.PG_A | A.PG_RW)
            pax += NBPDR
            i += 1
        self._kernel_2m = i  # PD slots [0, i) are 2 MiB pages
        kpdp_page = self.kpdpphys + (A.KPML4I - A.KPML4BASE) * PAGE_SIZE
        mem.write_u64(kpdp_page + 8 * A.KPDPI, kpdphys | _PTE_TABLE)

        # Direct map: 1 GiB pages where possible, 2 MiB pages for the rest.
        for k, gib in enumerate(range(ndm1g, ndmpdp)):
            for j in range(512):
                pa = gib * NBPDP + j * NBPDR
                mem.write_u64(dmpdphys + k * PAGE_SIZE + 8 * j,
                              pa | A.PG_RW | A.PG_V | A.PG_PS | A.PG_G | A.PG_M | A.PG_A | A.PG_NX)
        for gib in range(ndm1g):
            mem.write_u64(dmpdpphys + 8 * gib,
                          (gib * NBPDP) | A.PG_RW | A.PG_V | A.PG_PS | A.PG_G | A.PG_M | A.PG_A | A.PG_NX)
        for k, gib in enumerate(range(ndm1g, ndmpdp)):
            mem.write_u64(dmpdpphys + 8 * gib, (dmpdphys + k * PAGE_SIZE) | A.PG_RW | A.PG_V | A.PG_NX)
        if ndm1g:
            # "Instead of using a 1G page for the memory containing the
            # kernel, use 2M pages with read-only and no-execute permissions."
            kgib = self.kernphys // NBPDP
            if kgib < ndm1g:
                pd = self._allocpages(1)
                for j in range(512):
                    mem.write_u64(pd + 8 * j, (kgib * NBPDP + j * NBPDR)
                                  | A.PG_V | A.PG_PS | A.PG_G | A.PG_M | A.PG_A | A.PG_NX)
                mem.write_u64(dmpdpphys + 8 * kgib, pd | A.PG_RW | A.PG_V | A.PG_NX)

        # Recursive slot, direct-map slot, KVA slots.
        mem.write_u64(self.kpml4phys + 8 * A.PML4PML4I, self.kpml4phys | A.PG_RW | A.PG_V | A.PG_NX)
        mem.write_u64(self.kpml4phys + 8 * A.DMPML4I, dmpdpphys | A.PG_RW | A.PG_V | A.PG_NX)
        for i in range(A.NKPML4E):
            mem.write_u64(self.kpml4phys + 8 * (A.KPML4BASE + i), (self.kpdpphys + i * PAGE_SIZE) | _PTE_TABLE)
        self.boot_pt_end = self._firstaddr

    def _table(self, table_pa: int, index: int, user: bool) -> int:
        """Next-level table under ``table_pa[index]``, allocated on demand."""
        entry = self.mem.read_u64(table_pa + 8 * index)
        if entry & A.PG_V:
            if entry & A.PG_PS:
                raise ValueError("forge: mapping inside a large page")
            return entry & A.PG_FRAME
        pa = self.alloc_page()
        self.mem.write_u64(table_pa + 8 * index, pa | (_PTE_USER_TABLE if user else _PTE_TABLE))
        return pa

    def map_page(self, va: int, pa: int, root: Optional[int] = None, user: bool = False,
                 flags: Optional[int] = None) -> int:
        """Map one 4 KiB page; returns the page-table page that holds the PTE."""
        root = self.kpml4phys if root is None else root
        table = root
        for shift in (39, 30, 21):
            table = self._table(table, (va >> shift) & 511, user)
        if flags is None:
            flags = (A.PG_V | A.PG_RW | A.PG_A | A.PG_M | A.PG_U) if user else (_PTE_KERNEL | A.PG_NX)
        self.mem.write_u64(table + 8 * ((va >> 12) & 511), pa | flags)
        return table

    # ------------------------------------------------------------------
    # address conversions
    @staticmethod
    def dmap(pa: int) -> int:
        """PHYS_TO_DMAP()."""
        return A.DMAP_MIN_ADDRESS + pa

    def kva_to_pa(self, va: int) -> int:
        """Physical address of a kernel VA the forge created (image, DMAP or KVA)."""
        if A.DMAP_MIN_ADDRESS <= va < A.DMAP_MAX_ADDRESS:
            return va - A.DMAP_MIN_ADDRESS
        if va >= A.KERNBASE:
            off = va - A.KERNBASE
            if off < NBPDR:
                return off  # the identity-mapped first 2 MiB
            return self.kernphys + off - NBPDR
        page = self.kva_pages.get(va & ~0xFFF)
        if page is None:
            raise KeyError(f"forge: {va:#x} is not mapped")
        return page + (va & 0xFFF)

    def write_kva(self, va: int, data: bytes) -> None:
        """Write through the kernel's view, page by page."""
        data = bytes(data)
        while data:
            n = min(len(data), PAGE_SIZE - (va & 0xFFF))
            self.mem.write(self.kva_to_pa(va), data[:n])
            va += n
            data = data[n:]

    def read_kva(self, va: int, length: int) -> bytes:
        out = b""
        while length > 0:
            n = min(length, PAGE_SIZE - (va & 0xFFF))
            out += self.mem.read(self.kva_to_pa(va), n)
            va += n
            length -= n
        return out

    # ------------------------------------------------------------------
    # kernel objects
    def set_fields(self, va: int, struct_name: str, values: Dict[str, Any]) -> None:
        """Write ``values`` (dotted field path -> value) into the struct at ``va``."""
        for path, value in values.items():
            off, desc = self.layout.field(struct_name, path)
            self.write_kva(va + off, self.layout.encode(desc, value))

    def uma_alloc(self, size: int, align: int = 16) -> int:
        """An item from a single-page UMA slab, addressed through the direct map.

        amd64 UMA uses uma_small_alloc() (PHYS_TO_DMAP of a fresh page) for
        one-page slabs, which is why procs, threads and creds live at
        0xfffff800... addresses.  The slab page is recorded for the minidump
        (the kernel marks such pages with dump_add_page()).
        """
        if size > PAGE_SIZE:
            return self.kmem_alloc(size)
        size = _round_up(size, align)
        pa, off = self._slabs.get(size, (0, PAGE_SIZE))
        if off + size > PAGE_SIZE:
            pa, off = self.alloc_page(), 0
            self.uma_pfns.add(pa >> 12)
        self._slabs[size] = (pa, off + size)
        return self.dmap(pa + off)

    def alloc_struct(self, struct_name: str, values: Optional[Dict[str, Any]] = None) -> int:
        va = self.uma_alloc(self.layout.sizeof(struct_name))
        if values:
            self.set_fields(va, struct_name, values)
        return va

    def kmem_alloc(self, size: int, guard_pages: int = 0) -> int:
        """Wired KVA from kernel_map, 4 KiB pages at scattered physical pages."""
        self._kva_cursor += guard_pages * PAGE_SIZE
        va = self._kva_cursor
        npages = -(-size // PAGE_SIZE)
        for i in range(npages):
            pa = self.alloc_page()
            self.map_page(va + i * PAGE_SIZE, pa)
            self.kva_pages[va + i * PAGE_SIZE] = pa
        self._kva_cursor += npages * PAGE_SIZE
        self.kernel_vm_end = max(self.kernel_vm_end, _round_up(self._kva_cursor, NBPDR))
        return va

    def kernel_var(self, name: str, type_desc: Dict[str, Any], value: Any = None,
                   rodata: bool = False, align: int = 16) -> int:
        """Place a kernel global in the image and record its symbol and type."""
        size = self.layout.type_size(type_desc)
        if rodata:
            va = _round_up(self._rodata_cursor, align)
            self._rodata_cursor = va + size
        else:
            va = _round_up(self._data_cursor, align)
            self._data_cursor = va + size
        if self._data_cursor > A.KERNSTART + self.KERNEL_IMAGE_SIZE:
            raise MemoryError("forge kernel image is full")
        self.symbols[name] = va
        self.symbol_types[name] = type_desc
        if value is not None:
            self.write_kva(va, self.layout.encode(type_desc, value))
        return va

    def place_rodata(self, data: bytes, align: int = 8) -> int:
        """Anonymous read-only data in the image (string literals such as wmesg).

        Identical literals are placed once, as the compiler merges them (every
        thread sleeping in select() points at the same "select"), and .rodata
        may not run into .data.
        """
        key = (bytes(data), align)
        literals = self._rodata_literals
        if key in literals:
            return literals[key]
        va = _round_up(self._rodata_cursor, align)
        if va + len(data) > A.KERNSTART + 0x100000:
            raise MemoryError("forge kernel .rodata is full")
        self._rodata_cursor = va + len(data)
        self.write_kva(va, data)
        literals[key] = va
        return va

    @property
    def kva_end(self) -> int:
        """End of the KVA a minidump covers: MAX(KERNBASE + nkpt*NBPDR, kernel_vm_end)."""
        return max(A.KERNBASE + self.NKPT * NBPDR, self.kernel_vm_end)

    def write_kernel_elf_header(self) -> None:
        """The start of the loaded image: an ELF header and the PT_INTERP string.

        FreeBSD kernels carry ``/red/herring`` as their interpreter; tools
        (ant1's Volatility fork) look for it to find the kernel physically.
        """
        hdr = bytearray(64)
        hdr[0:4] = b"\x7fELF"
        hdr[4], hdr[5], hdr[6], hdr[7] = 2, 1, 1, 9  # ELFCLASS64, LSB, EV_CURRENT, FreeBSD
        hdr[16:18] = (2).to_bytes(2, "little")  # ET_EXEC
        hdr[18:20] = (62).to_bytes(2, "little")  # EM_X86_64
        self.write_kva(A.KERNSTART, bytes(hdr))
        self.write_kva(A.KERNSTART + 0x200, b"/red/herring\0\0\0\0")

    def dump_avail(self) -> Sequence[Tuple[int, int]]:
        return self.mem.ranges
