"""A synthetic FreeBSD/i386 machine, PAE or not, laid out as ``pmap_cold()`` lays it out.

:class:`MachineI386` overrides only the architecture facts of
:class:`kvm_vol.forge.machine.Machine` (``/work/notes/arch-hooks.md``):

* The kernel image is linked and loaded at 8 MiB, ``KERNBASE`` (VA) ==
  ``KERNLOAD`` (PA), and mapped with superpages (4 MiB, or 2 MiB with PAE);
  i386 kernels are not relocated, so ``kernphys`` is always ``KERNLOAD``.
* ``pmap_cold()`` then takes pages right after the image (``allocpages``):
  ``NKPT`` kernel page-table pages (``KPTphys``, installed as PDEs 0 ..
  NKPT-1), the PDPT (``IdlePDPT``, PAE) and the ``NPGPTD`` page-directory
  pages (``IdlePTD_pae`` / ``IdlePTD_nopae``), identity-mapped (VA == PA),
  the recursive PDEs at ``PTDPTDI``, and the fixed map of low memory at
  ``PMAP_MAP_LOW``.  ``kernel_vm_end`` starts at ``NKPT * NBPDR``.
* No direct map: UMA slabs come from kernel_map KVA (:meth:`_uma_page`), so
  a minidump holds them as kernel-mapped pages.
* Processes get their own page directory (and PDPT, a 32-byte slot of
  ``pdptzone``) with only the recursive and trampoline PDEs of the kernel:
  the 4/4G split, user and kernel each own the whole 4 GiB.  ``struct pmap``
  records the *kernel virtual* addresses of those tables.
* Pointers, ``long`` and ``time_t`` are 4 bytes (the i386 type pack says so).

``pae`` selects the pmap: ``pmap_cold()`` sets ``pae_mode = (cpu_feature &
CPUID_PAE) != 0`` (``sys/i386/i386/pmap_base.c``, tunable ``vm.pmap.pae_mode``),
so every CPU since the Pentium Pro runs PAE, the default here;
``pae=False`` is the non-PAE pmap (old CPUs, or ``vm.pmap.pae_mode=0``).  Images: ``vmcore``
(minidump v2, what 14/15 write), ``minidump-v1``, ``full`` (ELF32 / EM_386),
``raw``, and the first two behind a kerneldumpheader.
"""

from typing import Any, Dict, List, Optional, Tuple

from kvm_vol.core import i386 as I
from kvm_vol.forge.machine import Machine
from kvm_vol.forge.physmem import PAGE_SIZE as FRAME
from kvm_vol.forge.pmap_i386 import KERNEL_FLAGS, I386PageTables
from kvm_vol.forge.writers import write_raw
from kvm_vol.forge.writers_i386 import write_elf_i386, write_minidump_i386

__all__ = ["MachineI386"]

#: sizeof(pdpt_entry_t) * NPGPTD: a PAE process PDPT (a ``pdptzone`` item, 32-byte aligned).
_PDPT_BYTES = I.NPDPTEPG * 8


class MachineI386(Machine):
    """Physical memory + kernel pmap + kernel image of one FreeBSD/i386 box (see the module docstring)."""

    ARCH = "i386"
    FORMATS = ("vmcore", "full", "raw", "minidump-v1", "kdh-vmcore", "kdh-full")
    DEMO_FORMATS = ("vmcore", "full", "raw")
    PAGE_SIZE = I.PAGE_SIZE
    KERNBASE = I.KERNBASE
    KERNSTART = I.KERNBASE  # the loaded image starts with its ELF header at KERNBASE
    KERNLOAD = I.KERNLOAD
    KERNEL_ALIGN = I.NOPAE.nbpdr  # the one load address (KERNLOAD) is 4 MiB aligned
    KERNEL_IMAGE_SIZE = I.NOPAE.nbpdr  # one 4 MiB superpage, two 2 MiB ones with PAE
    KSTACK_PAGES = 4  # i386 param.h KSTACK_PAGES
    POOL_FLOOR = 16 << 20
    HAS_DMAP = False
    ELF_CLASS, ELF_MACHINE = 1, 3  # ELFCLASS32, EM_386
    KDH_ARCHITECTURE = "i386"

    def __init__(self, layout, ram_size: int = 64 << 20, kernphys: Optional[int] = None, pae: bool = True,
                 seed: int = 1):
        if kernphys not in (None, I.KERNLOAD):
            raise ValueError(f"an i386 kernel runs at KERNLOAD ({I.KERNLOAD:#x}), not at {kernphys:#x}: "
                             "KERNBASE (VA) == KERNLOAD (PA)")
        if ram_size > 1 << 32:
            raise ValueError("the forge's i386 machines have at most 4 GiB of RAM")
        self.mode = I.PAE if pae else I.NOPAE
        self.KVA_GRANULE = self.mode.nbpdr  # pmap_growkernel() adds one PDE's reach
        self.NKPT = self.mode.nkpt
        # kernel_vm_end = NKPT * NBPDR after pmap_cold(); kmem starts past the image and boot pages
        self.KVA_MIN = self.mode.nkpt * self.mode.nbpdr
        self.KVA_START = I.KERNBASE + self.KERNEL_IMAGE_SIZE + (4 << 20)
        self._pmaps: Dict[int, I386PageTables] = {}
        super().__init__(layout, ram_size=ram_size, kernphys=kernphys, seed=seed)

    # -- page tables -----------------------------------------------------------
    def _create_pagetables(self) -> None:
        """pmap_cold(): KPTphys, IdlePDPT, IdlePTD, the recursive and low-memory maps, the image."""
        mode = self.mode
        self.kptphys = self._allocpages(mode.nkpt)
        pt = I386PageTables.kernel(self.mem, mode, lambda: self._allocpages(1), self._kernend)
        self.kernel_pt = pt
        self.idleptd = pt.ptd
        self.idlepdpt = pt.pdpt
        self.root = pt.root
        self._pmaps[pt.root] = pt
        # IdlePTD[a] = (KPTphys + ptoa(a)) | PG_V | PG_RW | PG_A | PG_M, except where the image's
        # superpages (and the recursive PDEs) already are
        for a in range(mode.nkpt):
            va = a << mode.pdrshift
            if not pt.pde(va) & I.PG_V:
                pt.set_pde(va, (self.kptphys + a * FRAME) | KERNEL_FLAGS)
        # pmap_cold_map(0, NBPDR * LOWPTDI, ...): low memory at PMAP_MAP_LOW; the identity map of it is
        # removed again by remap_lower(false), so PDEs [0, LOWPTDI) end up empty
        for pa in range(0, I.PMAP_MAP_LOW, FRAME):
            if self.mem.in_ram(pa):
                pt.map_page(I.PMAP_MAP_LOW + pa, pa)
        for a in range(mode.lowptdi):
            pt.set_pde(a << mode.pdrshift, 0)
        # pmap_init_trm(): the page table of the user/kernel trampoline PDE (copied into every pmap)
        pt.set_pde(mode.trptdi << mode.pdrshift, self._allocpages(1) | KERNEL_FLAGS)
        # pmap_cold_mapident(IdlePDPT / IdlePTD): the boot tables at VA == PA
        self.boot_pt_end = self._firstaddr
        for pa in range(self._kernend, self.boot_pt_end, FRAME):
            pt.map_page(pa, pa)
        if self.boot_pt_end > self.KVA_START:
            raise MemoryError("forge: the i386 boot page tables run into kernel_map")

    def map_page(self, va: int, pa: int, root: Optional[int] = None, user: bool = False,
                 flags: Optional[int] = None) -> int:
        """Map one 4 KiB page in the pmap whose CR3 is ``root`` (the kernel's by default)."""
        pt = self._pmaps[self.root if root is None else root]
        if flags is None:
            flags = (I.PG_V | I.PG_RW | I.PG_A | I.PG_M) if user else KERNEL_FLAGS
        return pt.map_page(va, pa, flags, user=user)

    # -- address conversions -----------------------------------------------------
    def dmap(self, pa: int) -> int:  # type: ignore[override]
        raise ValueError("FreeBSD/i386 has no direct map (PMAP_HAS_DMAP 0)")

    def kva_to_pa(self, va: int) -> int:
        """The image and the boot tables are at VA == PA; kernel_map pages are where kmem put them."""
        if self.KERNSTART <= va < getattr(self, "boot_pt_end", self._kernend):
            return va
        page = self.kva_pages.get(va & ~(FRAME - 1))
        if page is None:
            raise KeyError(f"forge: {va:#x} is not mapped")
        return page + (va & (FRAME - 1))

    def msgbuf_va(self) -> int:
        """pmap_bootstrap()'s ``SYSMAP(struct msgbuf *, unused, msgbufp, ...)``: the pages at the top of
        RAM mapped into KVA (a minidump then holds them as kernel-mapped pages)."""
        pages = [self.msgbuf_pa + off for off in range(0, self.msgbuf_size, FRAME)]
        return self._kenter(pages)

    def _uma_page(self) -> int:
        """i386 has no uma_small_alloc(): one-page slabs are kernel_map pages (already in a minidump)."""
        return self.kmem_alloc(self.PAGE_SIZE)

    def _kenter(self, pas: List[int]) -> int:
        """``kva_alloc`` + ``pmap_qenter``: KVA for existing physical pages (a process's page directory)."""
        va = self._kva_cursor
        for i, pa in enumerate(pas):
            self.map_page(va + i * FRAME, pa)
            self.kva_pages[va + i * FRAME] = pa
        self._kva_cursor += len(pas) * FRAME
        self.kernel_vm_end = max(self.kernel_vm_end, -(-self._kva_cursor // self.KVA_GRANULE) * self.KVA_GRANULE)
        return va

    @property
    def kva_end(self) -> int:
        """kernel_vm_end: what the minidump's pmap section covers."""
        return max(self.KVA_MIN, self.kernel_vm_end)

    # -- what the kernel publishes ---------------------------------------------------
    def kernel_globals(self, kernel) -> None:
        """``pae_mode``, the roots of both pmaps (the unused one NULL), ``KPTphys``, ``KERNend``,
        ``tramp_idleptd`` (CR3 of the trampoline), ``kernel_pmap_store``'s page-table pointers."""
        uint = {"kind": "base", "name": "unsigned int"}
        ptr = {"kind": "pointer", "subtype": uint}
        pae = self.mode.pae
        kernel.global_var("pae_mode", {"kind": "base", "name": "int"}, 1 if pae else 0)
        kernel.global_var(I.PAE.root_symbol, ptr, self.idlepdpt if pae else 0)
        kernel.global_var(I.PAE.ptd_symbol, ptr, self.idleptd if pae else 0)
        kernel.global_var(I.NOPAE.root_symbol, ptr, 0 if pae else self.idleptd)
        kernel.global_var("KPTphys", {"kind": "base", "name": "unsigned long"}, self.kptphys)
        kernel.global_var("KERNend", {"kind": "base", "name": "unsigned long"}, self._kernend)
        kernel.global_var("tramp_idleptd", {"kind": "base", "name": "unsigned long"}, self.root)
        if "pmap" in self.layout.user_types:
            pmap = kernel.global_var("kernel_pmap_store", {"kind": "struct", "name": "pmap"})
            self.set_fields(pmap, "pmap", self._pmap_fields(self.idleptd, self.idlepdpt, prefix=""))

    def _pmap_fields(self, pdir_va: int, pdpt_va: Optional[int], prefix: str) -> Dict[str, int]:
        """``struct pmap``'s page-table pointers (KVAs) for this machine's pmap, by field path."""
        if self.mode.pae:
            fields = {"pm_pdir_pae": pdir_va, "pm_pdpt_pae": pdpt_va}
        else:
            fields = {"pm_pdir_nopae": pdir_va}
        return {prefix + name: value for name, value in fields.items()}

    def kernel_pmap_fields(self) -> Dict[str, int]:
        """vmspace0's pmap is the kernel's (pmap_pinit0): IdlePTD / IdlePDPT, at VA == PA."""
        return self._pmap_fields(self.idleptd, self.idlepdpt, prefix="vm_pmap.")

    def new_user_pmap(self) -> Tuple[int, Dict[str, int]]:
        """pmap_pinit(): PD pages from the free pool mapped into kernel_map, a PDPT slot from pdptzone."""
        pdpt_va = pdpt_pa = None
        if self.mode.pae:
            pdpt_va = self.uma_alloc(_PDPT_BYTES, align=_PDPT_BYTES)
            pdpt_pa = self.kva_to_pa(pdpt_va)
        pt = self.kernel_pt.user(alloc=self.alloc_page, pdpt=pdpt_pa)
        self._pmaps[pt.root] = pt
        pdir_va = self._kenter(pt.ptd_pages)
        return pt.root, self._pmap_fields(pdir_va, pdpt_va, prefix="vm_pmap.")

    def sysvecs(self) -> Dict[str, Any]:
        """Only the native ABI: ``elf32_freebsd_sysvec`` (i386 has no COMPAT_FREEBSD32)."""
        from kvm_vol import freebsd as F
        from kvm_vol.forge.userland import SysvecSpec

        return {"native": SysvecSpec("elf32_freebsd_sysvec", "FreeBSD ELF32", F.SV_ILP32 | F.SV_IA32, I.USRSTACK,
                                     "ps_strings", self.layout.pointer_size)}

    def manifest_fields(self) -> Dict[str, Any]:
        return {"arch": self.ARCH, "page_size": self.PAGE_SIZE, "kernbase": self.KERNBASE,
                "kernphys": self.kernphys, "pae": self.mode.pae, "pmap": self.mode.name,
                "root": self.root, "idleptd": self.idleptd, "idlepdpt": self.idlepdpt, "dmap": None}

    def write_image(self, fmt: str, path: str, kernel) -> None:
        """``vmcore`` = minidump v2 (FreeBSD 14/15), ``minidump-v1``, ``full`` (ELF32), ``raw``."""
        if fmt in ("vmcore", "minidump-v1"):
            write_minidump_i386(self.mem, path, version=1 if fmt == "minidump-v1" else 2, ptd=self.idleptd,
                                mode=self.mode, kva_end=self.kva_end, msgbuf=kernel.msgbuf_bytes())
        elif fmt == "full":
            write_elf_i386(self.mem, path)
        elif fmt == "raw":
            write_raw(self.mem, path)
        else:
            raise ValueError(f"{self.ARCH} forge machine has no image format {fmt!r}")
