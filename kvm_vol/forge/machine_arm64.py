"""A synthetic FreeBSD/arm64 machine: RAM, kernel page tables and image laid out as the kernel does.

:class:`MachineArm64` overrides only the architecture facts of
:class:`kvm_vol.forge.machine.Machine` (``/work/notes/arch-hooks.md``):

* RAM starts at 1 GiB (``0x40000000``, QEMU's ``virt`` board and most arm64
  servers have nothing at physical 0); the loader stages the kernel at a
  2 MiB-aligned address in it (``kernphys``).
* The kernel's TTBR1 tables are rooted at ``pagetable_l0_ttbr1`` (locore.S),
  a page inside the kernel image, so its physical address is
  ``kernphys + (symbol - KERNBASE)``; ``kernel_pmap_store.pm_l0_paddr``
  records it, as ``pmap_bootstrap`` does.
* The kernel image is mapped at ``KERNBASE`` (= VM_MIN_KERNEL_ADDRESS) with
  L2 blocks (4 KiB granule) or, since a 32 MiB block would need a 32 MiB
  aligned load address, with L3 pages (16 KiB granule), and a little
  beyond its end where the early page tables live (locore's "extra" map).
* The direct map (``pmap_bootstrap_dmap``): ``dmap_phys_base`` is the
  lowest RAM address rounded down to an L1 block (1 GiB / 64 GiB); each RAM
  range is mapped with L3 pages up to the next L2 boundary, L2 blocks up to
  an L1 boundary, L1 blocks (4 KiB granule only), then L2 blocks and L3
  pages again at the end.
* Processes get a fresh, empty L0 table for TTBR0 (``pmap_pinit``): the
  kernel half is not copied, TTBR1 serves it.

``page_size`` 4096 or 16384 selects the granule (``GENERIC`` / ``GENERIC-16K``).
"""

from typing import Any, Dict, List, Optional, Tuple

from kvm_vol.core import arm64 as A
from kvm_vol.forge.machine import Machine
from kvm_vol.forge.physmem import PAGE_SIZE as FRAME
from kvm_vol.forge.writers import write_raw
from kvm_vol.forge.writers_arm64 import write_minidump_arm64
from kvm_vol.formats.minidump_arm64 import KDH_ARCHITECTURE

__all__ = ["MachineArm64", "RAM_BASE"]

#: Start of RAM on QEMU's ``virt`` machine (and where kvm-vol's arm64 forge puts it).
RAM_BASE = 0x40000000
_TWO_MIB = 1 << 21
#: Page-table pages reserved after the image for the boot tables (locore + pmap_bootstrap).
_BOOT_PT_BYTES = 1 << 20
_KERN_ATTRS = A.ATTR_DEFAULT | A.ATTR_S1_XN | A.ATTR_S1_IDX(A.VM_MEMATTR_WRITE_BACK)
_USER_ATTRS = (A.ATTR_DEFAULT | A.ATTR_S1_AP(A.ATTR_S1_AP_USER) | A.ATTR_S1_nG | A.ATTR_S1_PXN
               | A.ATTR_S1_IDX(A.VM_MEMATTR_WRITE_BACK) | A.ATTR_SW_MANAGED)


class MachineArm64(Machine):
    """Physical memory + TTBR1 tables + kernel image of one FreeBSD/arm64 box (see the module docstring)."""

    ARCH = "arm64"
    FORMATS = ("vmcore", "raw", "minidump-v1", "minidump-v2", "kdh-vmcore")
    DEMO_FORMATS = ("vmcore", "raw")
    PAGE_SIZE = A.PAGE_SIZE_4K
    KERNBASE = A.KERNBASE
    KERNSTART = A.KERNBASE  # the loaded image starts with its ELF header at KERNBASE
    KERNLOAD = RAM_BASE + _TWO_MIB  # where loader.efi stages it by default
    KERNEL_ALIGN = _TWO_MIB
    KERNEL_IMAGE_SIZE = 2 * _TWO_MIB
    KVA_MIN = A.VM_MIN_KERNEL_ADDRESS
    KVA_START = A.VM_MIN_KERNEL_ADDRESS + 4 * _TWO_MIB  # past the image and the boot tables
    KSTACK_PAGES = 4
    POOL_FLOOR = RAM_BASE + (16 << 20)
    HAS_DMAP = True
    ELF_CLASS, ELF_MACHINE = 2, 183  # ELFCLASS64, EM_AARCH64
    PHYS_AVAIL_COUNT = A.PHYS_AVAIL_COUNT
    KDH_ARCHITECTURE = KDH_ARCHITECTURE  # kerneldumpheader.architecture: MACHINE_ARCH "aarch64"

    @classmethod
    def ram_ranges(cls, ram_size: int) -> List[Tuple[int, int]]:
        return [(RAM_BASE, RAM_BASE + ram_size)]

    def __init__(self, layout, ram_size: int = 64 << 20, kernphys: Optional[int] = None, page_size: int = 4096,
                 seed: int = 1):
        self.granule = A.granule_for(page_size)
        self.PAGE_SIZE = page_size
        if page_size != A.PAGE_SIZE_4K:  # minidump v1/v2 kernels had 4 KiB pages only
            self.FORMATS = tuple(f for f in type(self).FORMATS if f not in ("minidump-v1", "minidump-v2"))
        self.KVA_GRANULE = 1 << self.granule.l2_shift  # pmap_growkernel() adds L2 slots
        super().__init__(layout, ram_size=ram_size, kernphys=kernphys, seed=seed)

    # -- page tables ---------------------------------------------------------
    def _create_pagetables(self) -> None:
        """locore's TTBR1 tables for the image, then pmap_bootstrap_dmap()."""
        ps = self.PAGE_SIZE
        g = self.granule
        ulong = {"kind": "base", "name": "unsigned long"}
        l0_va = self.kernel_var(A.ROOT_SYMBOL, {"kind": "array", "count": ps // 8, "subtype": ulong},
                                align=ps)
        self.l0phys = self.kernphys + (l0_va - self.KERNSTART)
        # the early tables pmap_bootstrap allocates from the end of the kernel
        self._firstaddr = self._round(self._kernend, ps)
        self._pt_limit = self._kernend + _BOOT_PT_BYTES
        self._mapped_image = self.KERNEL_IMAGE_SIZE + _BOOT_PT_BYTES
        # the image (and its trailing boot tables) at KERNBASE
        if g.page_shift == 12:
            for off in range(0, self._mapped_image, _TWO_MIB):
                l2 = self._walk_alloc(self.l0phys, self.KERNSTART + off, 2, boot=True)
                self.mem.write_u64(l2 + 8 * g.index(2, self.KERNSTART + off),
                                   (self.kernphys + off) | _KERN_ATTRS & ~A.ATTR_S1_XN | A.L2_BLOCK)
        else:
            for off in range(0, self._mapped_image, ps):
                l3 = self._walk_alloc(self.l0phys, self.KERNSTART + off, 3, boot=True)
                self.mem.write_u64(l3 + 8 * g.index(3, self.KERNSTART + off),
                                   (self.kernphys + off) | _KERN_ATTRS & ~A.ATTR_S1_XN | A.L3_PAGE)
        self._bootstrap_dmap()
        self.boot_pt_end = self._firstaddr

    @staticmethod
    def _round(x: int, align: int) -> int:
        return (x + align - 1) // align * align

    def _boot_page(self) -> int:
        pa = self._allocpages(1)
        if self._firstaddr > self._pt_limit:
            raise MemoryError("forge: the arm64 boot page tables outgrew their reserved area")
        return pa

    def _walk_alloc(self, root: int, va: int, level: int, boot: bool = False) -> int:
        """The table of ``level`` (1-3) that maps ``va`` under L0 ``root``, allocating tables on the way."""
        g = self.granule
        table = root
        for lvl in range(level):
            slot = table + 8 * g.index(lvl, va)
            entry = self.mem.read_u64(slot)
            kind = entry & A.ATTR_DESCR_MASK
            if kind == A.L0_TABLE:
                table = A.pte_to_phys(entry)
                continue
            if kind != 0:
                raise ValueError(f"forge: {va:#x} is inside a block mapping")
            new = self._boot_page() if boot else self.alloc_page()
            self.mem.write_u64(slot, new | A.L0_TABLE)
            table = new
        return table

    def _bootstrap_dmap(self) -> None:
        g, ps = self.granule, self.PAGE_SIZE
        l1_size, l2_size = 1 << g.l1_shift, 1 << g.l2_shift
        self.dmap_phys_base = min(s for s, _ in self.mem.ranges) & ~(l1_size - 1)
        for start, end in self.mem.ranges:
            pa = start & ~(ps - 1)
            while pa < end:
                va = self.dmap(pa)
                if g.block_allowed(1) and pa % l1_size == 0 and pa + l1_size <= end:
                    l1 = self._walk_alloc(self.l0phys, va, 1, boot=True)
                    self.mem.write_u64(l1 + 8 * g.index(1, va), pa | _KERN_ATTRS | A.L1_BLOCK)
                    pa += l1_size
                elif pa % l2_size == 0 and pa + l2_size <= end:
                    l2 = self._walk_alloc(self.l0phys, va, 2, boot=True)
                    self.mem.write_u64(l2 + 8 * g.index(2, va), pa | _KERN_ATTRS | A.L2_BLOCK)
                    pa += l2_size
                else:
                    l3 = self._walk_alloc(self.l0phys, va, 3, boot=True)
                    self.mem.write_u64(l3 + 8 * g.index(3, va), pa | _KERN_ATTRS | A.L3_PAGE)
                    pa += ps

    def map_page(self, va: int, pa: int, root: Optional[int] = None, user: bool = False,
                 flags: Optional[int] = None) -> int:
        """Map one page (of the granule); returns the L3 table holding its entry."""
        root = self.l0phys if root is None else root
        l3 = self._walk_alloc(root, va, 3)
        if flags is None:
            flags = _USER_ATTRS if user else _KERN_ATTRS
        self.mem.write_u64(l3 + 8 * self.granule.index(3, va), pa | flags | A.L3_PAGE)
        return l3

    # -- address conversions -------------------------------------------------
    def dmap(self, pa: int) -> int:  # type: ignore[override]
        """PHYS_TO_DMAP(): ``pa - dmap_phys_base + DMAP_MIN_ADDRESS``."""
        return pa - self.dmap_phys_base + A.DMAP_MIN_ADDRESS

    def kva_to_pa(self, va: int) -> int:
        if A.DMAP_MIN_ADDRESS <= va < A.DMAP_MAX_ADDRESS:
            return va - A.DMAP_MIN_ADDRESS + self.dmap_phys_base
        if self.KERNSTART <= va < self.KERNSTART + getattr(self, "_mapped_image", self.KERNEL_IMAGE_SIZE):
            return va - self.KERNSTART + self.kernphys
        page = self.kva_pages.get(va & ~(FRAME - 1))
        if page is None:
            raise KeyError(f"forge: {va:#x} is not mapped")
        return page + (va & (FRAME - 1))

    @property
    def kva_end(self) -> int:
        """kernel_vm_end: what the minidump's pmap section covers (whole L2 slots)."""
        l2 = 1 << self.granule.l2_shift
        return self._round(max(self.KVA_START, self.kernel_vm_end), l2)

    # -- what the kernel publishes -----------------------------------------------
    def pcb_address(self, kstack: int, pcb_size: int) -> int:
        """arm64 cpu_thread_alloc(): the pcb at the very top of the kernel stack."""
        return kstack + self.KSTACK_PAGES * self.PAGE_SIZE - pcb_size

    def kernel_globals(self, kernel) -> None:
        """``kernel_pmap_store`` with ``pm_l0_paddr``/``pm_l0`` of the TTBR1 table, and the DMAP bounds."""
        ulong = {"kind": "base", "name": "unsigned long"}
        pmap = kernel.global_var("kernel_pmap_store", {"kind": "struct", "name": "pmap"})
        self.set_fields(pmap, "pmap", {"pm_l0_paddr": self.l0phys, "pm_l0": self.symbols[A.ROOT_SYMBOL],
                                       "pm_ttbr": self.l0phys, "pm_levels": 4})
        kernel.global_var("dmap_phys_base", ulong, self.dmap_phys_base)
        kernel.global_var("dmap_phys_max", ulong, self.mem.end)
        kernel.global_var("dmap_max_addr", ulong, self.dmap(self.mem.end))

    def kernel_pmap_fields(self) -> Dict[str, int]:
        """vmspace0's pmap (``pmap_pinit0``): TTBR0 is the boot identity-map L0, empty here."""
        if not hasattr(self, "_ttbr0_boot"):
            self._ttbr0_boot = self.alloc_page()
        return {"vm_pmap.pm_l0_paddr": self._ttbr0_boot, "vm_pmap.pm_l0": self.dmap(self._ttbr0_boot),
                "vm_pmap.pm_ttbr": self._ttbr0_boot, "vm_pmap.pm_levels": 4}

    def new_user_pmap(self) -> Tuple[int, Dict[str, int]]:
        """pmap_pinit(): a fresh L0 table for TTBR0 (the kernel half lives in TTBR1, nothing is copied)."""
        l0 = self.alloc_page()
        return l0, {"vm_pmap.pm_l0_paddr": l0, "vm_pmap.pm_l0": self.dmap(l0), "vm_pmap.pm_ttbr": l0,
                    "vm_pmap.pm_levels": 4}

    def sysvecs(self) -> Dict[str, Any]:
        """``elf64_freebsd_sysvec``, and COMPAT_FREEBSD32's ``elf32_freebsd_sysvec`` for armv7 binaries."""
        from kvm_vol import freebsd as F
        from kvm_vol.forge.userland import SysvecSpec

        L = self.layout
        usrstack = A.VM_MAX_USER_ADDRESS - self.PAGE_SIZE  # USRSTACK = SHAREDPAGE (arm64 vmparam.h)
        # arm64 elf32_machdep.c: FREEBSD32_MAXUSER = 4 GiB - PAGE_SIZE, USRSTACK one page below
        usrstack32 = (1 << 32) - 2 * self.PAGE_SIZE
        ptr32 = L.type_size(L.field("freebsd32_ps_strings", "ps_argvstr")[1])
        return {
            "native": SysvecSpec("elf64_freebsd_sysvec", "FreeBSD ELF64", F.SV_LP64, usrstack, "ps_strings",
                                 L.pointer_size),
            "compat32": SysvecSpec("elf32_freebsd_sysvec", "FreeBSD ELF32", F.SV_ILP32, usrstack32,
                                   "freebsd32_ps_strings", ptr32),
        }

    def manifest_fields(self) -> Dict[str, Any]:
        return {"arch": self.ARCH, "kernbase": self.KERNBASE, "kernphys": self.kernphys, "l0phys": self.l0phys,
                "page_size": self.PAGE_SIZE, "dmap": [A.DMAP_MIN_ADDRESS, A.DMAP_MAX_ADDRESS],
                "dmapphys": self.dmap_phys_base}

    def write_image(self, fmt: str, path: str, kernel) -> None:
        """``vmcore`` = minidump v3 (FreeBSD 14/15), ``minidump-v1``/``-v2`` (4 KiB only), ``raw``."""
        if fmt in ("vmcore", "minidump-v1", "minidump-v2"):
            version = {"minidump-v1": 1, "minidump-v2": 2}.get(fmt, 3)
            if version < 3 and self.PAGE_SIZE != A.PAGE_SIZE_4K:
                raise ValueError(f"arm64 minidump v{version} predates 16 KiB pages; use vmcore (v3)")
            write_minidump_arm64(self.mem, path, version=version, page_size=self.PAGE_SIZE, l0phys=self.l0phys,
                                 kva_end=self.kva_end, dmapphys=self.dmap_phys_base,
                                 extra_pages=sorted(pfn << 12 for pfn in self.uma_pfns),
                                 msgbuf=kernel.msgbuf_bytes(), dump_avail_count=self.PHYS_AVAIL_COUNT)
        elif fmt == "raw":
            write_raw(self.mem, path)
        else:
            raise ValueError(f"{self.ARCH} forge machine has no image format {fmt!r}")
