"""The translation core's one API, on the C core (``_native``) or its pure-Python twin.

Two objects do all the work:

* a *physical* view of one dump (:func:`open_phys`): physical address →
  file offset (run table, or the minidump bitmap with its rank index) and
  reads of physical memory;
* an *address space* over it (:func:`open_space`): a 4- or 5-level amd64
  page walk from a root, optionally with libkvm's minidump rules for kernel
  addresses (the pmap section from ``kernbase``, the direct map), offering
  ``translate``, ``read`` (one call for any length, the first failing page
  reported exactly) and ``mapping`` (a VA range as runs
  ``(va, pa, file_offset, length)``).  Other architectures' spaces come
  from the same call with ``arch=`` (``engine_i386.py``: the i386 non-PAE /
  PAE walks and the i386 minidump's PTE array) and reuse these loops.

The C implementation (``kvcore.c``, bound with cffi at install time) and the
twin (``amd64.py``/``bitmap.py``/``Dump.read_phys`` composed here) raise the
same :class:`~kvm_vol.errors.TranslationError` (same address, same reason)
and return the same bytes; ``tests/test_core_native.py`` checks that on
every forge image.  The C core is used when it was built and imports, unless
``KVM_VOL_PURE=1``; which one is in use is logged once (INFO) and shown by
``kvm-vol info``.

The ``dump`` objects come from :mod:`kvm_vol.formats` (duck-typed here so
that ``core`` keeps not importing ``formats``): ``kind``, ``what``,
``read_phys``, ``pa_to_offset``, ``phys_runs``; minidumps also
``bitmap_index``, ``header``, ``pmap_entry``/``pmap_entries`` and ``_pmap``.
"""

import logging
import os
import threading
from bisect import bisect_right
from typing import Iterator, Optional, Tuple

from kvm_vol.core.amd64 import (
    NBPDR, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PDRSHIFT, PG_FRAME, PG_PS, PG_V, Mapping, MinidumpAmd64Translator,
    PageTableTranslator, _merge_runs, _read_by_page, is_canonical,
)
from kvm_vol.errors import TranslationError

__all__ = ["native_module", "implementation", "use_native", "open_phys", "open_space", "Mapping"]

log = logging.getLogger("kvm_vol.core")

_U64_MAX = (1 << 64) - 1
_MASK48 = (1 << 48) - 1
_SIGN48 = 1 << 47
_HIGH16 = 0xFFFF << 48
_LEVEL_NAMES = ("pte", "pde", "pdpe", "pml4e", "pml5e")
_MAP_BATCH = 4096  # runs per kv_map call

_native = None
_native_error: Optional[str] = None
_announced = False


def _load_native():
    global _native, _native_error
    if _native is None and _native_error is None:
        try:
            from kvm_vol.core import _native as mod  # built by cffi at install time
        except ImportError as exc:
            _native_error = str(exc) or type(exc).__name__
        else:
            _native = mod
    return _native


def native_module():
    """The cffi module ``kvm_vol.core._native``, or None when it is not built or cannot load."""
    return _load_native()


def use_native(pure: Optional[bool] = None) -> bool:
    """Whether the C core serves a new object (``pure=True`` asks for the twin)."""
    if pure is None:
        pure = os.environ.get("KVM_VOL_PURE", "") not in ("", "0")
    return not pure and _load_native() is not None


def implementation() -> str:
    """One line saying which core is in use and why (for ``kvm-vol info`` and the log)."""
    if use_native():
        return "C core (cffi)"
    if os.environ.get("KVM_VOL_PURE", "") not in ("", "0"):
        return "pure-Python twin (KVM_VOL_PURE is set)"
    _load_native()
    return f"pure-Python twin (C core unavailable: {_native_error})"


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        log.info("kvm-vol translation core: %s", implementation())


def _sext48(va: int) -> int:
    return va | _HIGH16 if va & _SIGN48 and va <= _MASK48 else va


class _Shared:
    """Core objects are per-file state shared by every layer over that file.

    Volatility deep-copies contexts (``ContextInterface.clone``), layers
    included; a copy of a layer shares its core object, as layers rebuilt
    from config do.  The C objects use one scratch buffer each, so a C core
    object serves the thread that created it; another thread gets the
    allocating (slower, thread-safe) path.
    """

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self


# ======================================================================
# the twin


class _TwinPhys(_Shared):
    """Physical memory of ``dump`` by its own run table (``Dump.read_phys``)."""

    native = False

    def __init__(self, dump):
        self.dump = dump
        self.what = dump.what
        self.kind = dump.kind

    def lookup(self, pa: int) -> Optional[int]:
        return self.dump.pa_to_offset(pa)

    def find(self, pa: int) -> Optional[Tuple[int, int]]:
        """``(file_offset, bytes contiguous from there)`` of ``pa``, or None."""
        run = self.dump._find_run(pa)
        if run is None:
            return None
        return run[1] + pa - run[0], run[0] + run[2] - pa

    def read(self, pa: int, length: int, pad: bool = False) -> bytes:
        if not pad:
            return self.dump.read_phys(pa, length)
        out = bytearray()
        runs = self.dump.phys_runs()
        while length > 0:
            found = self.find(pa)
            if found is None:
                i = bisect_right(self.dump._run_starts, pa)
                gap = runs[i][0] - pa if i < len(runs) else length
                take = min(gap, length)
                out += bytes(take)
            else:
                off, avail = found
                take = min(avail, length)
                data = self.dump.source.read(off, take)
                out += data + bytes(take - len(data))
            pa += take
            length -= take
        return bytes(out)


class _TwinSpace(_Shared):
    """Address space made of :class:`PageTableTranslator` and :class:`MinidumpAmd64Translator`."""

    native = False

    def __init__(self, phys: _TwinPhys, root: int, levels: int, canon48: bool, minidump: bool):
        if levels not in (4, 5):
            raise ValueError(f"amd64 paging has 4 or 5 levels, not {levels}")
        self.phys = phys
        self.root = root
        self.levels = levels
        self.canon48 = canon48
        dump = phys.dump
        self._walker = PageTableTranslator(dump.read_phys, root, levels)
        self._md: Optional[MinidumpAmd64Translator] = dump.translator() if minidump else None
        if self._md is not None:
            self._kernbase, self._dmapbase, self._dmapend = self._md.kernbase, self._md.dmapbase, self._md.dmapend

    def _is_md(self, va: int) -> bool:
        return self._md is not None and (va >= self._kernbase or self._dmapbase <= va < self._dmapend)

    def _locate(self, va: int) -> Tuple[int, int, int]:
        """``(pa, file_offset, bytes usable from there)`` of canonical ``va``."""
        if self._is_md(va):
            off, pa, avail = self._md.kvatop(va)
            return pa, off, avail
        pa, avail = self._walker.kvatop(va)
        found = self.phys.find(pa)
        if found is None:
            raise TranslationError(va, f"physical page {pa & ~PAGE_MASK:#x} not in {self.phys.what}")
        return pa, found[0], min(avail, found[1])

    def _skip(self, va: int) -> int:
        """Size of the aligned block around ``va`` that fails like ``va`` (0: the rest).

        Derived from the same tables as the failed translation, so mapping a
        huge sparse range costs the blocks it contains, not its pages.
        """
        if self._is_md(va):
            md = self._md
            if va < self._kernbase:
                return PAGE_SIZE
            index = (va - self._kernbase) >> (PAGE_SHIFT if md.version == 1 else PDRSHIFT)
            if index >= md.pmap_entries:
                return 0
            if md.version == 1:
                return PAGE_SIZE
            pde = md.pmap_entry(index)
            if not pde & PG_V or (not pde & PG_PS and md.phys.pa_to_offset(pde & PG_FRAME) is None):
                return NBPDR
            return PAGE_SIZE
        if not is_canonical(va, self.levels):
            return 0
        table = self.root & PG_FRAME
        for level in range(self.levels, 0, -1):
            shift = PAGE_SHIFT + 9 * (level - 1)
            try:
                entry = int.from_bytes(self.phys.dump.read_phys(table + ((va >> shift) & 511) * 8, 8), "little")
            except TranslationError:
                return 1 << (shift + 9) if shift + 9 < 64 else 0
            if not entry & PG_V:
                return 1 << shift
            if entry & PG_PS and level in (2, 3):
                break
            table = entry & PG_FRAME
        return PAGE_SIZE

    def _step_to_end(self, va: int, remaining: int) -> int:
        """How far to step from ``va`` when everything above it fails: to the
        next canonical address (the upper half), else past the rest."""
        hi = 0xFF00000000000000 if self.levels == 5 else 0xFFFF800000000000
        if not is_canonical(va, self.levels) and not self.canon48 and va < hi:
            return hi - va
        return remaining

    def translate(self, va: int) -> Tuple[int, int]:
        """``(pa, file_offset)`` of ``va``; raises :class:`TranslationError`."""
        cva = _sext48(va) if self.canon48 else va
        try:
            pa, off, _avail = self._locate(cva)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None
        return pa, off

    def _chunk(self, va: int, n: int) -> bytes:
        cva = _sext48(va) if self.canon48 else va
        try:
            if self._is_md(cva):
                return self._md._chunk(cva, n)
            pa, _off, _avail = self._locate(cva)
            return self.phys.dump.read_phys(pa, n)
        except TranslationError as exc:
            raise TranslationError(va, exc.reason) from None

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        return _read_by_page(va, length, self._chunk, pad)

    def mapping(self, va: int, length: int, ignore_errors: bool = False) -> Iterator[Mapping]:
        yield from _merge_runs(self._pieces(va, length, ignore_errors))

    def _pieces(self, va: int, length: int, ignore_errors: bool) -> Iterator[Mapping]:
        """The mapped pieces of ``[va, va+length)``, one translation each, for :meth:`mapping`."""
        pos = 0
        while pos < length:
            cur = va + pos
            cva = _sext48(cur) if self.canon48 else cur
            try:
                pa, off, avail = self._locate(cva)
            except TranslationError as exc:
                if not ignore_errors:
                    raise TranslationError(cur, exc.reason) from None
                skip = self._skip(cva)
                if skip == 0:
                    step = self._step_to_end(cva, length - pos)
                else:
                    step = skip - (cva & (skip - 1))
                pos = min(length, pos + step)
                continue
            take = min(avail, length - pos)
            yield cur, pa, off, take
            pos += take


# ======================================================================
# the C core


def _reason(code: int, addr: int, detail: int, detail2: int, what: str) -> str:
    """The twin's message for a C error (see kvcore.h)."""
    lib = _native.lib
    if code == lib.KV_E_NONCANON:
        return "non-canonical address"
    if code == lib.KV_E_ENTRY:
        return f"{_LEVEL_NAMES[detail - 1]} not valid"
    if code == lib.KV_E_PHYS:
        return f"physical page {detail:#x} not in {what}"
    if code == lib.KV_E_FILE_END:
        return f"file ends at offset {detail:#x}"
    if code == lib.KV_E_MD_BEYOND:
        return f"virtual address {addr:#x} not minidumped (beyond the pmap section)"
    if code == lib.KV_E_MD_PTPAGE:
        return f"page-table page {detail:#x} not in minidump"
    if code == lib.KV_E_MD_PTTRUNC:
        return f"page-table page {detail:#x} truncated in the file"
    if code == lib.KV_E_MD_PHYS:
        return f"physical address {detail:#x} not in minidump"
    if code == lib.KV_E_MD_DMAP:
        return f"direct map address {addr:#x} not in minidump"
    if code == lib.KV_E_MD_NOTDUMPED:
        return f"virtual address {addr:#x} not minidumped"
    if code == lib.KV_E_MD_FILE_END:
        return f"physical address {detail:#x}: file ends at offset {detail2:#x}"
    if code == lib.KV_E_MD_PTE:
        return "pte not valid"
    if code == lib.KV_E_MD_PDE:
        return "pde not valid"
    if code == lib.KV_E_VA32:
        from kvm_vol.core.i386 import REASON_VA32

        return REASON_VA32
    if code in (lib.KV_E_A64_DESC, lib.KV_E_A64_BLOCK, lib.KV_E_A64_NOTABLE):
        from kvm_vol.core import arm64

        if code == lib.KV_E_A64_DESC:
            return arm64.reason_descriptor(detail)
        if code == lib.KV_E_A64_BLOCK:
            return arm64.reason_block(detail, detail2)
        return arm64.reason_no_table(detail)
    return f"translation error {code}"


class _NativePhys(_Shared):
    """A ``kv_phys``: the dump file mapped (or pread) plus its run table or bitmap index."""

    native = True

    def __init__(self, dump, path: Optional[str] = None, data: Optional[bytes] = None, use_mmap: bool = True):
        ffi, lib = _native.ffi, _native.lib
        self.dump = dump
        self.what = dump.what
        self.kind = dump.kind
        self._keep = []  # Python objects whose memory the C side points into
        if path is not None:
            handle = lib.kv_phys_open(os.fsencode(path), 1 if use_mmap else 0)
            if handle == ffi.NULL:
                raise OSError(ffi.errno, os.strerror(ffi.errno), path)
        else:
            buf = ffi.from_buffer(data if data is not None else b"")
            self._keep.append(buf)
            handle = lib.kv_phys_from_memory(buf, len(buf))
        self._h = ffi.gc(handle, lib.kv_phys_free)
        index = getattr(dump, "bitmap_index", None)
        if index is not None:
            bitmap = ffi.from_buffer(index._bitmap)
            avail = index.avail
            table = [v for r in range(len(avail.ranges))
                     for v in (avail._first_pfn[r], avail._end_pfn[r], avail._first_bit[r])]
            self._keep.append(bitmap)
            rc = lib.kv_phys_set_bitmap(self._h, bitmap, len(index._bitmap), ffi.new("uint64_t[]", table or [0]),
                                        len(avail.ranges), index.sparse_off, index.present)
            if rc == 0 and index.page_size != PAGE_SIZE:  # 16 KiB pages: arm64 minidump v3
                rc = lib.kv_phys_set_page_shift(self._h, index.page_size.bit_length() - 1)
        else:
            runs = dump.phys_runs()
            rc = lib.kv_phys_set_runs(self._h, ffi.new("uint64_t[]", [v for run in runs for v in run] or [0]),
                                      len(runs))
        if rc != 0:
            raise MemoryError("kvm-vol C core: cannot allocate the physical index")
        self._err = ffi.new("kv_err *")
        self._off = ffi.new("uint64_t *")
        self._scratch_size = lib.KV_SCRATCH
        self._scratch = ffi.new("uint8_t[]", self._scratch_size)
        self._owner = threading.get_ident()

    @property
    def mapped(self) -> bool:
        return bool(_native.lib.kv_phys_is_mapped(self._h))

    def index_bytes(self) -> int:
        """Memory of the bitmap rank index (0 for a run table)."""
        return int(_native.lib.kv_phys_index_bytes(self._h))

    def lookup(self, pa: int) -> Optional[int]:
        if not 0 <= pa <= _U64_MAX:
            return None
        return self._off[0] if _native.lib.kv_phys_lookup(self._h, pa, self._off) else None

    def _raise(self, e=None) -> None:
        e = self._err if e is None else e
        raise TranslationError(e.addr, _reason(e.code, e.addr, e.detail, e.detail2, self.what), self.kind)

    def read(self, pa: int, length: int, pad: bool = False) -> bytes:
        if length < 0:
            raise ValueError("negative length")
        if not 0 <= pa <= _U64_MAX or pa + length > _U64_MAX + 1:
            if pad:
                return bytes(length)
            raise TranslationError(pa, f"physical page {pa & ~PAGE_MASK:#x} not in {self.what}", self.kind)
        ffi = _native.ffi
        own = threading.get_ident() == self._owner
        buf = self._scratch if own and length <= self._scratch_size else ffi.new("uint8_t[]", max(length, 1))
        err = self._err if own else ffi.new("kv_err *")
        if _native.lib.kv_phys_read(self._h, pa, length, buf, pad, err) != 0:
            self._raise(err)
        return ffi.unpack(ffi.cast("char *", buf), length)


class _NativeSpace(_Shared):
    """A ``kv_space`` over a :class:`_NativePhys`."""

    native = True

    def __init__(self, phys: _NativePhys, root: int, levels: int, canon48: bool, minidump: bool):
        ffi, lib = _native.ffi, _native.lib
        if levels not in (4, 5):
            raise ValueError(f"amd64 paging has 4 or 5 levels, not {levels}")
        self.phys = phys
        self.root = root
        self.levels = levels
        self.canon48 = canon48
        handle = lib.kv_space_new(phys._h, root & _U64_MAX, levels, 1 if canon48 else 0)
        if handle == ffi.NULL:
            raise MemoryError("kvm-vol C core: cannot allocate an address space")
        self._h = ffi.gc(handle, lib.kv_space_free)
        if minidump:
            dump = phys.dump
            hdr = dump.header
            pmap = dump._pmap
            if lib.kv_space_set_minidump(self._h, hdr.version, hdr.kernbase, hdr.dmapbase, hdr.dmapend,
                                         ffi.from_buffer(pmap), dump.pmap_entries) != 0:
                raise MemoryError("kvm-vol C core: cannot copy the pmap section")
        self._bind()

    def _bind(self) -> None:
        """Cache what the hot read path needs from the space handle ``self._h`` (any architecture)."""
        ffi, lib = _native.ffi, _native.lib
        self._err = lib.kv_space_error(self._h)
        self._pa = ffi.new("uint64_t *")
        self._off = ffi.new("uint64_t *")
        self._scratch_chars = ffi.cast("char *", lib.kv_space_scratch(self._h))
        # Bound once: the read path is the hot one (a small read = one C call).
        self._kv_read = lib.kv_read_scratch
        self._scratch_size = lib.KV_SCRATCH
        self._owner = threading.get_ident()
        self._ident = threading.get_ident
        self._unpack = ffi.unpack

    def _raise(self, e=None) -> None:
        e = self._err if e is None else e
        raise TranslationError(e.addr, _reason(e.code, e.addr, e.detail, e.detail2, self.phys.what))

    def translate(self, va: int) -> Tuple[int, int]:
        if not 0 <= va <= _U64_MAX:
            raise TranslationError(va, "non-canonical address")
        ffi = _native.ffi
        own = self._ident() == self._owner
        pa, off = (self._pa, self._off) if own else (ffi.new("uint64_t *"), ffi.new("uint64_t *"))
        err = self._err if own else ffi.new("kv_err *")
        if _native.lib.kv_translate(self._h, va, pa, off, err) != 0:
            self._raise(err)
        return pa[0], off[0]

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        if 0 < length <= self._scratch_size and 0 <= va and va + length <= _U64_MAX and self._ident() == self._owner:
            if self._kv_read(self._h, va, length, pad) == 0:
                return self._unpack(self._scratch_chars, length)
            self._raise()
        return self._read_slow(va, length, pad)

    def _read_slow(self, va: int, length: int, pad: bool) -> bytes:
        if length < 0:
            raise ValueError("negative length")
        if length == 0:
            return b""
        if not 0 <= va or va + length > _U64_MAX + 1:
            # past 2**64: the twin's per-page rule (non-canonical) for each page
            return _read_by_page(va, length, self._chunk_outside, pad)
        ffi = _native.ffi
        buf = ffi.new("char[]", length)
        err = ffi.new("kv_err *")
        if _native.lib.kv_read(self._h, va, length, ffi.cast("uint8_t *", buf), pad, err) != 0:
            self._raise(err)
        return ffi.buffer(buf, length)[:]

    def _chunk_outside(self, va: int, n: int) -> bytes:
        if 0 <= va <= _U64_MAX:
            return self.read(va, n)
        raise TranslationError(va, "non-canonical address")

    def mapping(self, va: int, length: int, ignore_errors: bool = False) -> Iterator[Mapping]:
        if length <= 0:
            return
        if va < 0:
            raise ValueError(f"negative address {va:#x}")
        length = min(length, _U64_MAX + 1 - va)  # nothing maps past 2**64 (the twin finds the same)
        yield from _merge_runs(self._batches(va, length, ignore_errors))

    def _batches(self, va: int, length: int, ignore_errors: bool) -> Iterator[Mapping]:
        """kv_map's runs of ``[va, va+length)``, batch after batch (:meth:`mapping` merges across batches)."""
        ffi, lib = _native.ffi, _native.lib
        out = ffi.new("uint64_t[]", 4 * _MAP_BATCH)
        count, done, err = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("kv_err *")
        pos = 0
        while pos < length:
            rc = lib.kv_map(self._h, va + pos, min(length - pos, _U64_MAX), 1 if ignore_errors else 0, out, _MAP_BATCH,
                            count, done, err)
            flat = ffi.unpack(out, 4 * count[0])
            for i in range(0, len(flat), 4):
                yield tuple(flat[i:i + 4])
            if rc != 0:
                self._raise(err)
            pos += done[0]


# ======================================================================
# factories


def open_phys(dump, path: Optional[str] = None, *, data: Optional[bytes] = None, pure: Optional[bool] = None,
              use_mmap: bool = True):
    """Physical view of ``dump`` (a :class:`kvm_vol.formats.Dump`).

    The C core needs the bytes of the outermost file: its ``path`` (mapped,
    or read with pread when ``use_mmap`` is false or mapping fails) or
    ``data``; without either, or with ``pure``, the twin serves.
    """
    _announce()
    if (path is not None or data is not None) and use_native(pure):
        return _NativePhys(dump, path=path, data=data, use_mmap=use_mmap)
    return _TwinPhys(dump)


def open_space(phys, root: int, levels: int = 4, *, canon48: bool = False, minidump: bool = False,
               arch: str = "amd64", pae: bool = False, ttbr1: Optional[int] = None, page_size: int = PAGE_SIZE):
    """Address space over ``phys`` rooted at the PML4 (PML5) page ``root``.

    ``minidump``: kernel VA and the direct map follow the dump's pmap section
    (the dump must be a minidump); ``canon48``: addresses below 2**48 with
    bit 47 set are sign-extended first (Volatility's 48-bit kernel space).
    ``arch="i386"``: the i386 walk from the page directory (``pae`` false)
    or PDPT (``pae`` true) ``root``, :mod:`kvm_vol.core.engine_i386`;
    ``levels`` and ``canon48`` do not apply there.
    ``arch="arm64"``: the AArch64 walk with ``page_size`` pages (4 or 16 KiB),
    ``root`` the TTBR0 (user) L0 table and ``ttbr1`` the kernel's (``root``
    when omitted: the kernel's own space), :mod:`kvm_vol.core.engine_arm64`.
    """
    if arch == "i386":
        from kvm_vol.core import engine_i386

        return engine_i386.open_space(phys, root, pae=pae, minidump=minidump)
    if arch == "arm64":
        from kvm_vol.core import engine_arm64

        return engine_arm64.open_space(phys, root, ttbr1=ttbr1, page_size=page_size, minidump=minidump)
    if arch != "amd64":
        raise ValueError(f"no translation core for architecture {arch!r}")
    cls = _NativeSpace if phys.native else _TwinSpace
    return cls(phys, root, levels, canon48, minidump)
