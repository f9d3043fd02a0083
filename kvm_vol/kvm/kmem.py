"""Fast reads of FreeBSD kernel memory for the libkvm-style API.

libkvm's ``kvm_getprocs()`` reads each ``struct proc`` (and its ucred, pgrp,
session, vmspace ...) as a whole with ``kvm_read()`` and picks fields out of
the copy.  :class:`KernelMemory` and :class:`StructReader` do the same over a
Volatility kernel layer, because building a Volatility object per field costs
tens of microseconds and the API must list tens of thousands of processes
per second:

* :class:`KernelMemory` caches memory by 4 KiB page (a cache unit, whatever
  the kernel's page size).  On architectures with a direct map
  (:mod:`kvm_vol.arch`: amd64, arm64) its addresses (``PHYS_TO_DMAP``: UMA
  items such as procs, threads and creds) are read from the physical layer
  in 64 KiB chunks, since ``pa = va - DMAP_MIN`` (+ ``dmap_phys_base`` on
  arm64) holds for every such kernel; any other address (all of them on
  i386) goes through the kernel layer's own translation, page by page.
  Pointers are :attr:`KernelMemory.ptr_size` bytes (the symbol table's).
  Pointers read from memory are already sign-extended; only masked (48-bit)
  addresses need :func:`canonical`, which leaves 32-bit addresses alone.
  A page that is not in the dump raises ``InvalidAddressException`` like
  any Volatility read.
* :class:`StructReader` turns a struct's layout (from the kernel's symbol
  table: DWARF ISF or type pack) into one precompiled ``struct.Struct`` for
  the fields the caller names, so one ``unpack_from`` reads them all.
  Fields the ISF lacks read as ``None``.
"""

import collections
import mmap
import struct
from typing import Dict, Optional, Tuple

from volatility3.framework import exceptions, interfaces

from kvm_vol.core import amd64 as A
from kvm_vol.core.amd64 import canonical

__all__ = ["KernelMemory", "StructReader"]

_CHUNK_SHIFT = 16  # physical read size for the direct map: 64 KiB
_CHUNK = 1 << _CHUNK_SHIFT
_MAX_CACHED = 1 << 15  # cached chunks/pages before the caches are dropped (~2 GiB worst case)
_ADDRESS_MASK = (1 << 48) - 1


class KernelMemory:
    """Page-cached reads of a kernel virtual address space (a Volatility layer)."""

    def __init__(self, context: interfaces.context.ContextInterface, layer_name: str,
                 ptr_size: Optional[int] = None):
        """``ptr_size``: the kernel's ``sizeof(void *)``, from its symbol table (KVM passes it);
        without it, the layer's register width (Volatility's ``bits_per_register``)."""
        from kvm_vol import arch as archmod

        self.layer = context.layers[layer_name]
        self.arch = archmod.for_layer(self.layer)
        self.ptr_size = ptr_size or getattr(self.layer, "bits_per_register", 64) // 8
        self._ptr = struct.Struct({4: "<I", 8: "<Q"}[self.ptr_size])
        phys_name = self.layer.config.get("memory_layer")
        self.phys = context.layers[phys_name] if phys_name in context.layers else None
        # The direct-map fast path, where the architecture has one.  A kernel
        # layer may know the window better (``dmap_window``: VA start, VA end,
        # physical address of the start; arm64's DMAP begins at dmap_phys_base),
        # else the architecture's constant range maps from physical 0.
        lo, hi, pa_base = getattr(self.layer, "dmap_window", None) or (self.arch.dmap or (0, 0)) + (0,)
        self._dmap_lo, self._dmap_hi = canonical(lo), canonical(hi)
        if self.phys is None or not self.arch.has_dmap:
            self._dmap_lo = self._dmap_hi = pa_base = 0
        self._dmap_origin = self._dmap_lo - pa_base  # pa = va - origin inside the window
        self._chunks_tried = set()  # pa >> 16 of the chunks already read
        self._ppages: Dict[int, bytes] = {}  # pfn -> page (direct map)
        self._vpages: Dict[int, bytes] = {}  # va >> 12 -> page, outside the direct map
        # Direct-map pages of a dump file are unpacked in place from a read-only
        # mmap of the file: pfn -> file offset is one core lookup per page, and
        # no page is ever copied (see :meth:`locate`).
        self._file: Optional[mmap.mmap] = None
        self._pfn_off: Dict[int, int] = {}
        self._lookup = None
        if self._dmap_hi:
            self._map_file()

    def _map_file(self) -> None:
        """Open the dump file behind the physical layer for in-place reads, when it is a local file."""
        from kvm_vol.layers import coreglue
        from kvm_vol.layers.physical import FreebsdDumpLayer

        if not isinstance(self.phys, FreebsdDumpLayer):
            return
        try:
            file_layer = self.phys.context.layers[self.phys.config["base_layer"]]
            path = coreglue.local_path(file_layer)
            if path is None:
                return
            lookup = coreglue.phys_for(self.phys.dump, file_layer).lookup
            with open(path, "rb") as fh:  # read-only: evidence is never modified
                self._file = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, KeyError):
            self._file = None
            return
        self._lookup = lookup

    def locate(self, va: int) -> Tuple[object, int]:
        """``(buffer, offset)`` where the bytes of kernel VA ``va`` up to its page end lie.

        For the direct map of a local dump file the buffer is the file's mmap
        (nothing copied); otherwise it is the cached page.  Raises
        InvalidAddressException when the page is not in the dump.
        """
        if self._dmap_lo <= va < self._dmap_hi and self._file is not None:
            pa = va - self._dmap_origin
            pfn = pa >> A.PAGE_SHIFT
            off = self._pfn_off.get(pfn)
            if off is None:
                off = self._lookup(pfn << A.PAGE_SHIFT)
                if off is None:
                    self._phys_page(pfn)  # raises the layer's own "not in the dump" error
                    off = -1  # (unreachable unless the two views disagree)
                self._pfn_off[pfn] = off
            if off >= 0:
                return self._file, off + (pa & A.PAGE_MASK)
        return self.page(va), va & A.PAGE_MASK

    def _phys_page(self, pfn: int) -> bytes:
        key = pfn >> (_CHUNK_SHIFT - A.PAGE_SHIFT)
        if key not in self._chunks_tried:
            if len(self._ppages) > _MAX_CACHED * 16:
                self._ppages.clear()
                self._chunks_tried.clear()
            self._chunks_tried.add(key)
            try:
                chunk = self.phys.read(key << _CHUNK_SHIFT, _CHUNK)
            except exceptions.InvalidAddressException:
                chunk = None  # holes in this chunk: page by page
            if chunk is not None:
                first = key << (_CHUNK_SHIFT - A.PAGE_SHIFT)
                for i in range(_CHUNK >> A.PAGE_SHIFT):
                    self._ppages[first + i] = chunk[i << A.PAGE_SHIFT:(i + 1) << A.PAGE_SHIFT]
                return self._ppages[pfn]
        page = self._ppages.get(pfn)
        if page is None:
            page = self.phys.read(pfn << A.PAGE_SHIFT, A.PAGE_SIZE)  # raises when absent
            self._ppages[pfn] = page
        return page

    def page(self, va: int) -> bytes:
        """The 4 KiB page holding kernel VA ``va`` (raises InvalidAddressException)."""
        if self._dmap_lo <= va < self._dmap_hi:
            page = self._ppages.get((va - self._dmap_origin) >> A.PAGE_SHIFT)
            return page if page is not None else self._phys_page((va - self._dmap_origin) >> A.PAGE_SHIFT)
        va = canonical(va)
        vpn = va >> A.PAGE_SHIFT
        page = self._vpages.get(vpn)
        if page is None:
            if self._dmap_lo <= va < self._dmap_hi:
                return self._phys_page((va - self._dmap_origin) >> A.PAGE_SHIFT)
            if len(self._vpages) > _MAX_CACHED:
                self._vpages.clear()
            # the layer's own mask: 48 bits on amd64, none on arm64 (its kernel VAs have bit 47 clear)
            page = self.layer.read((vpn << A.PAGE_SHIFT) & self.layer.address_mask, A.PAGE_SIZE)
            self._vpages[vpn] = page
        return page

    def read(self, va: int, length: int) -> bytes:
        """``length`` bytes at kernel VA ``va``; raises InvalidAddressException if any page is absent."""
        off = va & A.PAGE_MASK
        if off + length <= A.PAGE_SIZE:
            return self.page(va)[off:off + length]
        parts = []
        while length > 0:
            n = min(length, A.PAGE_SIZE - (va & A.PAGE_MASK))
            parts.append(self.page(va)[va & A.PAGE_MASK:(va & A.PAGE_MASK) + n])
            va += n
            length -= n
        return b"".join(parts)

    def u64(self, va: int) -> int:
        return struct.unpack("<Q", self.read(va, 8))[0]

    def ptr(self, va: int) -> int:
        """The kernel pointer stored at ``va`` (:attr:`ptr_size` bytes: 4 on i386)."""
        return self._ptr.unpack(self.read(va, self.ptr_size))[0]

    def cstring(self, va: int, limit: int) -> bytes:
        """A NUL-terminated string of at most ``limit`` bytes (stops early at a missing page)."""
        out = b""
        while len(out) < limit:
            n = min(limit - len(out), A.PAGE_SIZE - (va & A.PAGE_MASK))
            data = self.read(va, n)
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            va += n
        return out


_new_tuple = tuple.__new__

_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
              (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


class StructReader:
    """Reads chosen fields of one struct type with a single ``unpack_from``.

    ``fields`` maps result names to dotted member paths (``"vm_pmap.pm_cr3"``);
    integers, pointers and enums become ints, char arrays raw bytes (cut them
    at the first NUL where they are used).  Records are namedtuples (three
    times cheaper to build than dicts).  A path the symbol table does not
    have reads as ``None``.
    """

    def __init__(self, context: interfaces.context.ContextInterface, symbol_table: str, type_name: str,
                 fields: Dict[str, str]):
        self._context = context
        self._table = symbol_table
        self.type_name = type_name
        template = context.symbol_space.get_type(f"{symbol_table}!{type_name}")
        self.size = template.size
        placed = []  # (offset, name, code, is_string)
        self.missing = []
        for name, path in fields.items():
            found = self._locate(template, path)
            if found is None:
                self.missing.append(name)
                continue
            offset, code, is_string = found
            placed.append((offset, name, code, is_string))
        placed.sort()
        fmt, cursor = ["<"], 0
        self._singles = []  # fields overlapping others (unions): unpacked on their own
        names = []
        for offset, name, code, is_string in placed:
            size = struct.calcsize("<" + code)
            if offset < cursor:
                self._singles.append((name, struct.Struct("<" + code), offset))
                continue
            if offset > cursor:
                fmt.append(f"{offset - cursor}x")
            fmt.append(code)
            names.append(name)
            cursor = offset + size
        self._struct = struct.Struct("".join(fmt))
        names += [n for n, _st, _off in self._singles] + self.missing
        #: the record type: a namedtuple of the requested fields (char arrays as raw bytes)
        self.Record = collections.namedtuple(f"{type_name}_fields", names)
        self._none_tail = (None,) * len(self.missing)
        self._plain = not self._singles and not self.missing
        #: bytes from the struct's start that cover every field read
        self.span = max([self._struct.size] + [off + st.size for _n, st, off in self._singles])

    def _resolve(self, template):
        if "object_class" not in template.vol:
            return self._context.symbol_space.get_type(template.vol.type_name)
        return template

    def _locate(self, template, path: str) -> Optional[Tuple[int, str, bool]]:
        offset = 0
        for part in path.split("."):
            template = self._resolve(template)
            members = template.vol.get("members", {})
            if part not in members:
                return None
            rel, template = members[part]
            offset += rel
        template = self._resolve(template)
        cls = template.vol.object_class.__name__
        if cls in ("Integer", "Pointer", "Char", "Bool"):
            fmt = template.vol.data_format
            return offset, _INT_CODES[(fmt.length, fmt.signed)], False
        if cls == "Enumeration":
            fmt = template.vol.base_type.vol.data_format
            return offset, _INT_CODES[(fmt.length, fmt.signed)], False
        if cls == "Array":
            return offset, f"{template.size}s", True
        if cls in ("StructType", "UnionType"):  # raw bytes of an embedded struct
            return offset, f"{template.size}s", False
        return None

    def unpack(self, data: bytes, offset: int = 0):
        """The fields at ``data[offset:]`` as a :attr:`Record` (char arrays keep their NULs)."""
        values = self._struct.unpack_from(data, offset)
        if self._singles:
            values += tuple(st.unpack_from(data, offset + off)[0] for _n, st, off in self._singles)
        if self._none_tail:
            values += self._none_tail
        return _new_tuple(self.Record, values)

    def read(self, mem: KernelMemory, va: int):
        """The fields of the struct at kernel VA ``va`` (raises InvalidAddressException)."""
        if (va & 0xFFF) + self.span <= 0x1000:  # the common case: unpack in place, no copy
            # mem.locate() inlined for the direct map of a dump file (most structs);
            # 4 KiB is the cache's granule on every architecture.
            off = mem._pfn_off.get((va - mem._dmap_origin) >> 12, -1) if mem._dmap_lo <= va < mem._dmap_hi else -1
            if off >= 0:
                buf, off = mem._file, off + (va & 0xFFF)
            else:
                buf, off = mem.locate(va)
            if self._plain:  # no unions, nothing missing: one unpack_from and the tuple
                return _new_tuple(self.Record, self._struct.unpack_from(buf, off))
            return self.unpack(buf, off)
        return self.unpack(mem.read(va, self.span))
