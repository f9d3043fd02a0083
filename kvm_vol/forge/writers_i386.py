"""i386 dump writers: minidump v1/v2 as ``cpu_minidumpsys`` writes them, and ELF32 full dumps.

The minidump follows ``sys/i386/i386/minidump_machdep_base.c``: for every
``NBPDR`` of KVA from ``KERNBASE`` to ``kernel_vm_end`` one page of the
pmap section — the page-table page itself for a valid PDE (its valid PTEs'
pages go into the bitmap), a fake page of PTEs ``pa | PG_V | PG_RW | PG_A |
PG_M`` for a superpage (all its pages go into the bitmap), a zero page
otherwise.  The header is :class:`~kvm_vol.formats.minidump_i386.MinidumpI386Header`;
the bitmap, dump_avail and the sparse page writing are the amd64 writer's.
The ELF full dump is :func:`kvm_vol.forge.writers.write_elf` with the ELF32
/ EM_386 layout.
"""

from typing import Iterable, List, Optional, Sequence, Set, Tuple

from kvm_vol.core.bitmap import DumpAvail
from kvm_vol.core.i386 import KERNBASE, PAGE_SHIFT, PAGE_SIZE, PG_A, PG_M, PG_PS, PG_RW, PG_V, PmapMode, round_page
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import _write_minidump_file, bitmap_and_dump_avail, write_elf
from kvm_vol.formats.elfcore import ELF32, ELFOSABI_STANDALONE, Phdr
from kvm_vol.formats.minidump_i386 import MinidumpI386Header

__all__ = ["build_pte_section", "write_minidump_i386", "write_elf_i386"]

#: The flags of the fake PTEs written for a superpage (``fakept[k] = ... | PG_V | PG_RW | PG_A | PG_M``).
_FAKE_PTE_FLAGS = PG_V | PG_RW | PG_A | PG_M


def build_pte_section(mem: PhysMem, ptd: int, mode: PmapMode, kva_end: int) -> Tuple[bytes, Set[int]]:
    """The pmap section for ``[KERNBASE, kva_end)`` and the PFNs the first loop marks for dumping.

    ``ptd`` is the kernel page directory's physical address (``IdlePTD``:
    NPGPTD contiguous pages, indexed by ``va >> PDRSHIFT``).
    """
    out = bytearray()
    pfns: Set[int] = set()
    entry = mode.entry
    for va in range(KERNBASE, kva_end, mode.nbpdr):
        pde = entry.unpack(mem.read(ptd + (va >> mode.pdrshift) * mode.entry_size, mode.entry_size))[0]
        if pde & (PG_PS | PG_V) == PG_PS | PG_V:
            first = pde & mode.pg_ps_frame
            out += b"".join(entry.pack((first + k * PAGE_SIZE) | _FAKE_PTE_FLAGS) for k in range(mode.nptepg))
            pfns.update(range(first >> PAGE_SHIFT, (first >> PAGE_SHIFT) + mode.nptepg))
        elif pde & PG_V:
            page = mem.read(pde & mode.pg_frame, PAGE_SIZE)
            out += page
            for (pte,) in entry.iter_unpack(page):
                if pte & PG_V:
                    pfns.add((pte & mode.pg_frame) >> PAGE_SHIFT)
        else:
            out += bytes(PAGE_SIZE)
    return bytes(out), pfns


def write_minidump_i386(
    mem: PhysMem,
    path: str,
    *,
    version: int,
    ptd: int,
    mode: PmapMode,
    kva_end: int,
    msgbuf: bytes = b"",
    extra_pfns: Iterable[int] = (),
    exclude_pfns: Iterable[int] = (),
    dump_avail: Optional[Sequence[Tuple[int, int]]] = None,
) -> MinidumpI386Header:
    """Write an i386 minidump (version 1 or 2) of ``mem``; returns the header.

    Dumped pages: those :func:`build_pte_section` marks, plus ``extra_pfns``
    minus ``exclude_pfns``, kept only where ``vm_phys_is_dumpable`` would
    (inside the dump_avail ranges: ``dump_avail``, default ``mem.ranges``).
    v2 numbers bitmap bits over dump_avail and writes it; v1 numbers them by PFN.
    """
    if version not in (1, 2):
        raise ValueError(f"i386 minidump version {version} is not 1 or 2")
    ptes, marked = build_pte_section(mem, ptd, mode, kva_end)
    avail_ranges = list(mem.ranges if dump_avail is None else dump_avail)
    ram = DumpAvail(avail_ranges)
    wanted = (marked | set(extra_pfns)) - set(exclude_pfns)
    pfns = sorted(p for p in wanted if ram.bit_id(p << PAGE_SHIFT) is not None)
    bitmap, avail = bitmap_and_dump_avail(pfns, avail_ranges, version >= 2)
    hdr = MinidumpI386Header(version=version, msgbufsize=len(msgbuf), bitmapsize=len(bitmap), pmapsize=len(ptes),
                             kernbase=KERNBASE, paemode=1 if mode.pae else 0,
                             dumpavailsize=round_page(len(avail)))
    _write_minidump_file(path, hdr.layout(), hdr.pack(), msgbuf, avail, bitmap, ptes,
                         (mem.pages.get(pfn) for pfn in pfns), len(pfns))
    return hdr


def write_elf_i386(mem: PhysMem, path: str, osabi: int = ELFOSABI_STANDALONE) -> List[Phdr]:
    """An i386 ELF full dump (ELFCLASS32, EM_386) of ``mem``, as ``dumpsys_generic`` writes it."""
    return write_elf(mem, path, osabi, layout=ELF32)
