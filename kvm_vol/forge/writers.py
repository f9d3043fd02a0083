"""Dump writers: a :class:`PhysMem` → raw image, ELF full dump, amd64 minidump.

Mirror images of :mod:`kvm_vol.formats`: they take the header layouts from
the parsers' modules, so a writer and its reader cannot drift apart.  What
goes into a minidump follows ``sys/amd64/amd64/minidump_machdep.c``
(``cpu_minidumpsys``); the ELF layout follows ``dumpsys_generic`` in
``sys/kern/kern_dump.c``; the kerneldumpheader leader and trailer follow
``dump_write_headers`` in ``sys/kern/kern_shutdown.c``.

All writers leave pages of zeros as holes (sparse files), so a machine with
a large, mostly empty physical address space costs what it holds.
"""

import os
import struct
from bisect import bisect_right
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from kvm_vol.core.amd64 import (
    DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, KERNBASE, NBPDP, NBPDR, NPDEPG, NPTEPG, PAGE_SHIFT, PAGE_SIZE, PML4SHIFT,
    PDPMASK, PDPSHIFT, PG_A, PG_FRAME, PG_M, PG_PS, PG_PS_FRAME, PG_PS_PDP_FRAME, PG_RW, PG_V, VM_MIN_KERNEL_ADDRESS,
    round_page,
)
from kvm_vol.core.bitmap import DumpAvail
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.formats.elfcore import ELF64, ELFOSABI_STANDALONE, PF_R, PT_LOAD, ElfLayout, Phdr, pack_ehdr, pack_phdr
from kvm_vol.formats.kdh import ARCHITECTURE_VERSIONS, KDH_SIZE, KERNELDUMPMAGIC, KernelDumpHeader
from kvm_vol.formats.minidump import DUMP_AVAIL_PAIR, MinidumpHeader

__all__ = ["write_raw", "write_elf", "build_pmap_section", "write_minidump", "wrap_kdh"]

_ZERO_PAGE = bytes(PAGE_SIZE)
_TABLE = struct.Struct(f"<{NPTEPG}Q")
_ZERO_TABLE = (0,) * NPTEPG
_U64_MASK = (1 << 64) - 1
#: Flags of the PTEs a v1 minidump synthesises for a large page (as the kernel did).
_FAKE_PTE_FLAGS = PG_V | PG_RW | PG_A | PG_M
_COPY_CHUNK = 1 << 20


class _PageSink:
    """Write data at given file offsets, merging neighbours and skipping zero pages.

    Skipped pages become holes, so the file stays sparse; :meth:`close`
    flushes and sets the final length (which also materialises a trailing hole).
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        self._start = 0
        self._end = -1
        self._bufs: List[bytes] = []

    def put(self, offset: int, data: bytes) -> None:
        if data == _ZERO_PAGE[:len(data)] and len(data) <= PAGE_SIZE:
            return
        if offset != self._end:
            self.flush()
            self._start = offset
        self._bufs.append(bytes(data))
        self._end = offset + len(data)

    def put_pages(self, offset: int, data: bytes) -> None:
        """:meth:`put` ``data`` page by page, so its zero pages become holes."""
        view = memoryview(data)
        for start in range(0, len(data), PAGE_SIZE):
            self.put(offset + start, view[start:start + PAGE_SIZE].tobytes())

    def flush(self) -> None:
        if self._bufs:
            self.f.seek(self._start)
            self.f.write(b"".join(self._bufs))
            self._bufs = []
            self._end = -1

    def close(self, length: int) -> None:
        self.flush()
        self.f.truncate(length)


def _table(mem: PhysMem, pa: int) -> Tuple[int, ...]:
    """The 512 entries of the page-table page at ``pa`` (zeros if never written)."""
    page = mem.pages.get(pa >> PAGE_SHIFT)
    return _ZERO_TABLE if page is None else _TABLE.unpack(page)


def _kva_gibs(mem: PhysMem, kpml4phys: int, kva_start: int, kva_end: int) -> Iterator[Tuple[int, int]]:
    """``(va, pdpe)`` for every GiB of KVA from ``kva_start`` (GiB-aligned) below ``kva_end``.

    A PDPE under an invalid PML4E reads as 0.  (The kernel dereferences the
    PML4E without checking it; its kernel PML4Es are always valid.)
    """
    va = kva_start
    while va < kva_end:
        pml4e = mem.read_u64(kpml4phys + ((va >> PML4SHIFT) & (NPTEPG - 1)) * 8)
        pdpe = mem.read_u64((pml4e & PG_FRAME) + ((va >> PDPSHIFT) & (NPTEPG - 1)) * 8) if pml4e & PG_V else 0
        yield va, pdpe
        va += NBPDP


def _fake_ptes(first_pa: int) -> bytes:
    return _TABLE.pack(*(((first_pa + k * PAGE_SIZE) | _FAKE_PTE_FLAGS) for k in range(NPTEPG)))


def build_pmap_section(mem: PhysMem, kpml4phys: int, kva_start: int, kva_end: int, version: int) -> bytes:
    """The minidump "pmap" section for KVA ``[kva_start, kva_end)``.

    v2/v3: one page of 512 PDEs per GiB, a page of zeros where the PDPE is
    invalid (or its PD page lies outside RAM), and for a 1 GiB PDPE a fake
    PD whose entry ``j`` is ``pdpe + j * 2 MiB`` (PS set, as in the PDPE).
    v1: a flat array of PTEs, one page per 2 MiB, with fake PTEs
    (``pa | V|RW|A|M``) for large pages.
    """
    out = bytearray()
    if version >= 2:
        for _va, pdpe in _kva_gibs(mem, kpml4phys, kva_start, kva_end):
            if not pdpe & PG_V:
                out += _ZERO_PAGE
            elif pdpe & PG_PS:
                out += _TABLE.pack(*(((pdpe + j * NBPDR) & _U64_MASK) for j in range(NPDEPG)))
            else:
                pd = pdpe & PG_FRAME
                out += mem.read(pd, PAGE_SIZE) if mem.in_ram(pd) else _ZERO_PAGE
        return bytes(out)
    for va_gib, pdpe in _kva_gibs(mem, kpml4phys, kva_start & ~PDPMASK, kva_end):
        pdes = _table(mem, pdpe & PG_FRAME) if pdpe & PG_V and not pdpe & PG_PS else None
        for j in range(NPDEPG):
            va = va_gib + j * NBPDR
            if not kva_start <= va < kva_end:
                continue
            if not pdpe & PG_V:
                out += _ZERO_PAGE
            elif pdes is None:
                out += _fake_ptes((pdpe & PG_PS_PDP_FRAME) + (va & PDPMASK))
            elif not pdes[j] & PG_V:
                out += _ZERO_PAGE
            elif pdes[j] & PG_PS:
                out += _fake_ptes(pdes[j] & PG_PS_FRAME)
            else:
                out += mem.read(pdes[j] & PG_FRAME, PAGE_SIZE)
    return bytes(out)


def _mapped_pfns(mem: PhysMem, kpml4phys: int, kva_start: int, kva_end: int, version: int) -> Set[int]:
    """Pages the kernel's first minidump loop marks: every page mapped in the KVA range.

    Large pages contribute all their 4 KiB pages; for v2/v3 the page-table
    pages themselves are marked too (they are not in the pmap section,
    which holds PDEs only).  v1 walks from KERNBASE in 2 MiB steps and keeps
    its PTEs in the pmap section instead.
    """
    pfns: Set[int] = set()
    span = NPTEPG  # 4 KiB pages per 2 MiB
    for va_gib, pdpe in _kva_gibs(mem, kpml4phys, kva_start & ~PDPMASK, kva_end):
        if not pdpe & PG_V:
            continue
        if pdpe & PG_PS:
            frame = pdpe & PG_PS_PDP_FRAME
            if version >= 2:
                pfns.update(range(frame >> PAGE_SHIFT, (frame >> PAGE_SHIFT) + NPDEPG * span))
                continue
            pdes: Iterable[int] = ((frame + j * NBPDR) | PG_PS | PG_V for j in range(NPDEPG))
        else:
            pdes = _table(mem, pdpe & PG_FRAME)
        for j, pde in enumerate(pdes):
            if not pde & PG_V or (version == 1 and not kva_start <= va_gib + j * NBPDR < kva_end):
                continue
            if pde & PG_PS:
                first = (pde & PG_PS_FRAME) >> PAGE_SHIFT
                pfns.update(range(first, first + span))
                continue
            if version >= 2:
                pfns.add((pde & PG_FRAME) >> PAGE_SHIFT)
            pfns.update((pte & PG_FRAME) >> PAGE_SHIFT for pte in _table(mem, pde & PG_FRAME) if pte & PG_V)
    return pfns


def bitmap_and_dump_avail(pfns: Iterable[int], avail_ranges: Sequence[Tuple[int, int]],
                          by_dump_avail: bool, page_size: int = PAGE_SIZE,
                          avail_size: Optional[int] = None) -> Tuple[bytes, bytes]:
    """The bitmap section (rounded to a page, as FreeBSD does) and the dump_avail section data.

    ``by_dump_avail`` (amd64 v3, i386 v2, ...): bits count the pages of the
    ``avail_ranges`` and the dump_avail section lists them, ``{0, 0}``
    terminated; otherwise (older versions) the bit id is the PFN and there is
    no dump_avail section (``b""``).  ``page_size`` is the unit of ``pfns``,
    of the bits and of the rounding (16 KiB for some arm64 minidumps);
    ``avail_size`` the bytes of the dump_avail section when the kernel
    writes its whole ``dump_avail[]`` array (arm64) rather than the pairs and
    their terminator.
    """
    if by_dump_avail:
        ram = DumpAvail(avail_ranges, page_size)
        nbits = ram.pages
        bit_of = ram.bit_id
        pairs = b"".join(DUMP_AVAIL_PAIR.pack(s, e) for s, e in avail_ranges)
        avail = pairs + DUMP_AVAIL_PAIR.pack(0, 0) if avail_size is None else pairs.ljust(avail_size, b"\0")
    else:
        nbits = -(-avail_ranges[-1][1] // page_size)
        bit_of = (lambda pa: pa // page_size)
        avail = b""
    size = -(-nbits // 64) * 8  # BITSET_SIZE(pages)
    bitmap = bytearray(-(-size // page_size) * page_size)  # round_page()
    for pfn in pfns:
        bit = bit_of(pfn * page_size)
        bitmap[bit >> 3] |= 1 << (bit & 7)
    return bytes(bitmap), avail


def _write_minidump_file(path: str, lay, header: bytes, msgbuf: bytes, avail: bytes, bitmap: bytes, pmap: bytes,
                         pages: Iterable[Optional[bytes]], npages: int, page_size: int = PAGE_SIZE) -> None:
    """Write a minidump of any architecture at ``lay`` (its header's ``layout()``), sparse.

    The header page, msgbuf, dump_avail, bitmap and pmap sections, then the
    ``npages`` dumped pages of ``page_size`` (``pages`` yields each one's
    data, or None for a page ``mem`` does not hold: a hole of zeros).
    """
    with open(path, "wb") as f:
        sink = _PageSink(f)
        sink.put_pages(0, header)
        sink.put_pages(lay.msgbuf, msgbuf)
        sink.put_pages(lay.dump_avail, avail)
        sink.put_pages(lay.bitmap, bitmap)
        sink.put_pages(lay.pmap, pmap)
        for i, page in enumerate(pages):
            if page is not None:
                sink.put_pages(lay.sparse + i * page_size, page)
        sink.close(lay.sparse + npages * page_size)


def write_minidump(
    mem: PhysMem,
    path: str,
    *,
    version: int,
    kpml4phys: int,
    kva_end: int,
    dmapbase: int = DMAP_MIN_ADDRESS,
    dmapend: int = DMAP_MAX_ADDRESS,
    extra_pfns: Iterable[int] = (),
    exclude_pfns: Iterable[int] = (),
    msgbuf: bytes = b"",
    dump_avail: Optional[Sequence[Tuple[int, int]]] = None,
) -> MinidumpHeader:
    """Write an amd64 minidump of ``mem`` as ``cpu_minidumpsys`` would.

    Dumped pages: every page mapped in ``[kernbase, kva_end)`` by the page
    tables at ``kpml4phys`` (see :func:`_mapped_pfns`), plus ``extra_pfns``
    (pages the kernel marks with ``dump_add_page``, e.g. UMA direct-map
    pages), minus ``exclude_pfns``, keeping only pages inside ``mem.ranges``
    and the direct map (the kernel drops the rest the same way).  The header
    ``kernbase`` is VM_MIN_KERNEL_ADDRESS for v2/v3 and KERNBASE for v1.  v3
    writes ``dump_avail = mem.ranges`` and numbers bits over those ranges;
    v1/v2 number bits by PFN.  The bitmap is rounded to a page, as FreeBSD
    does.  ``dump_avail`` replaces ``mem.ranges`` as the RAM the dump
    describes (sorted ``[start, end)`` ranges): it may describe far more RAM
    than ``mem`` holds, e.g. a terabyte, for a huge sparse bitmap whose
    unwritten pages stay holes in the file.  Returns the header written.
    """
    if version not in (1, 2, 3):
        raise ValueError(f"amd64 minidump version {version} is not 1, 2 or 3")
    kernbase = VM_MIN_KERNEL_ADDRESS if version >= 2 else KERNBASE
    pmap = build_pmap_section(mem, kpml4phys, kernbase, kva_end, version)
    avail_ranges = list(mem.ranges if dump_avail is None else dump_avail)
    ram = DumpAvail(avail_ranges)
    dmap_pages = (dmapend - dmapbase) >> PAGE_SHIFT
    wanted = (_mapped_pfns(mem, kpml4phys, kernbase, kva_end, version) | set(extra_pfns)) - set(exclude_pfns)
    pfns = sorted(p for p in wanted if p < dmap_pages and ram.bit_id(p << PAGE_SHIFT) is not None)

    bitmap, avail = bitmap_and_dump_avail(pfns, avail_ranges, version >= 3)

    hdr = MinidumpHeader(
        version=version, msgbufsize=len(msgbuf), bitmapsize=len(bitmap), pmapsize=len(pmap), kernbase=kernbase,
        dmapbase=dmapbase, dmapend=dmapend, dumpavailsize=round_page(len(avail)),
    )
    _write_minidump_file(path, hdr.layout(), hdr.pack(), msgbuf, avail, bitmap, pmap,
                         (mem.pages.get(pfn) for pfn in pfns), len(pfns))
    return hdr


def write_raw(mem: PhysMem, path: str) -> None:
    """A raw physical image: byte ``pa`` at offset ``pa`` up to ``mem.end``; holes read as zeros."""
    with open(path, "wb") as f:
        sink = _PageSink(f)
        for pfn in mem.populated():
            sink.put(pfn << PAGE_SHIFT, mem.pages[pfn])
        sink.close(mem.end)


def write_elf(mem: PhysMem, path: str, osabi: int = ELFOSABI_STANDALONE, layout: ElfLayout = ELF64) -> List[Phdr]:
    """An ELF full dump like ``dumpsys_generic``: one PT_LOAD per RAM range.

    ``layout`` is the ELF class and machine: ELF64/EM_X86_64 (amd64) or
    ELF32/EM_386 (i386, :data:`~kvm_vol.formats.elfcore.ELF32`).

    ``p_vaddr = p_paddr`` = range start, ``p_flags = PF_R``, ``p_align`` a
    page, the data page-aligned after the headers and the segments back to
    back.  ``osabi`` 255 (STANDALONE) is what FreeBSD writes.  Returns the
    program headers.
    """
    data_start = round_page(layout.ehdr.size + len(mem.ranges) * layout.phdr.size)
    phdrs, offset = [], data_start
    for start, end in mem.ranges:
        phdrs.append(Phdr(PT_LOAD, PF_R, offset, start, start, end - start, end - start, PAGE_SIZE))
        offset += end - start
    starts = [p.paddr for p in phdrs]
    with open(path, "wb") as f:
        sink = _PageSink(f)
        sink.put(0, pack_ehdr(len(phdrs), osabi, layout) + b"".join(pack_phdr(p, layout) for p in phdrs))
        for pfn in mem.populated():
            pa, page = pfn << PAGE_SHIFT, mem.pages[pfn]
            i = max(0, bisect_right(starts, pa) - 1)
            while i < len(phdrs) and phdrs[i].paddr < pa + PAGE_SIZE:
                p = phdrs[i]
                lo, hi = max(pa, p.paddr), min(pa + PAGE_SIZE, p.paddr + p.memsz)
                if lo < hi:
                    sink.put(p.offset + lo - p.paddr, page[lo - pa:hi - pa])
                i += 1
        sink.close(offset)
    return phdrs


def wrap_kdh(
    inner_path: str,
    out_path: str,
    *,
    versionstring: str,
    hostname: str = "",
    panicstring: str = "",
    dumptime: int = 0,
    blocksize: int = 512,
    magic: bytes = KERNELDUMPMAGIC,
    compression: int = 0,
    dumpkey: bytes = b"",
    trailer: bool = True,
    architecture: str = "amd64",
    extent: Optional[int] = None,
) -> KernelDumpHeader:
    """Put a kerneldumpheader leader (and trailer) around the dump in ``inner_path``.

    The result is laid out like the dump area of a dump device:
    ``leader block | key | dump | trailer block``, each block ``blocksize``
    bytes (header then zeros), the key padded to a block (its size is then
    ``dumpkeysize``) and the dump to a whole number of blocks (``dumpextent``;
    ``dumplength`` stays the true size).  Returns the header.
    """
    if blocksize < KDH_SIZE:
        raise ValueError(f"block size {blocksize} is smaller than the {KDH_SIZE}-byte header")
    length = os.path.getsize(inner_path)
    keysize = -(-len(dumpkey) // blocksize) * blocksize
    # dumpextent: the space reserved for the dump.  For a compressed dump
    # dump_start() reserves the uncompressed size, so the stream (dumplength)
    # ends well before the trailer; callers pass that size as ``extent``.
    extent = -(-max(length, extent or 0) // blocksize) * blocksize
    hdr = KernelDumpHeader(
        magic=magic, dumplength=length, dumptime=dumptime, dumpkeysize=keysize, blocksize=blocksize,
        hostname=hostname, versionstring=versionstring, panicstring=panicstring, compression=compression,
        dumpextent=extent, architecture=architecture, architectureversion=ARCHITECTURE_VERSIONS[architecture],
    )
    block = hdr.pack() + bytes(blocksize - KDH_SIZE)
    start = blocksize + keysize
    with open(inner_path, "rb") as src, open(out_path, "wb") as f:
        sink = _PageSink(f)
        sink.put(0, block)
        sink.put(blocksize, dumpkey)
        pos = 0
        while True:
            chunk = src.read(_COPY_CHUNK)
            if not chunk:
                break
            sink.put_pages(start + pos, chunk)
            pos += len(chunk)
        end = start + extent
        if trailer:
            sink.put(end, block)
            end += blocksize
        sink.close(end)
    return hdr
