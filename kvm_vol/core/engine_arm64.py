"""arm64 address spaces of the translation core: ``kv_arm64.c`` and its twin :class:`~kvm_vol.core.arm64.Arm64Space`.

:func:`kvm_vol.core.engine.open_space` with ``arch="arm64"`` lands here.  An
arm64 space has two roots, because AArch64 splits the address space between
two translation tables: ``root`` is the TTBR0 (user) L0 table - a process's
``pm_l0_paddr`` - and ``ttbr1`` the kernel's L0 table.  A space whose
``root`` *is* the kernel's table is the kernel's own space: the kernel pmap
maps nothing in the user half, so user addresses there have no table rather
than being looked up (wrongly) in the kernel's L0.  ``page_size`` is the
granule (4 KiB or 16 KiB); with ``minidump`` the direct map and ``va >=
kernbase`` follow libkvm's minidump rules from the dump's header and pmap
section (``dump.translator()``).
"""

from typing import Iterator, Optional, Tuple

from kvm_vol.core import engine
from kvm_vol.core.arm64 import Arm64Space, granule_for

__all__ = ["open_space", "TwinSpaceArm64", "NativeSpaceArm64"]


def _minidump_of(phys, minidump: bool):
    if not minidump:
        return None
    dump = phys.dump
    if getattr(dump, "arch", None) != "arm64" or dump.kind != "minidump":
        raise ValueError(f"{dump!r} is not an arm64 minidump")
    return dump


class TwinSpaceArm64(engine._Shared):
    """The twin: :class:`Arm64Space` over the dump's own run table."""

    native = False

    def __init__(self, phys, root: int, ttbr1: int, page_size: int, minidump: bool):
        self.phys = phys
        self.root = root
        self.ttbr1 = ttbr1
        self.page_size = page_size
        dump = _minidump_of(phys, minidump)
        md = dump.translator() if dump is not None else None
        self._space = Arm64Space(phys.dump.read_phys, phys.find, phys.what, None if root == ttbr1 else root, ttbr1,
                                 granule_for(page_size), md)

    def translate(self, va: int) -> Tuple[int, int]:
        return self._space.translate(va)

    def read(self, va: int, length: int, pad: bool = False) -> bytes:
        return self._space.read(va, length, pad)

    def mapping(self, va: int, length: int, ignore_errors: bool = False) -> Iterator[engine.Mapping]:
        return self._space.mapping(va, length, ignore_errors)


class NativeSpaceArm64(engine._NativeSpace):
    """A ``kv_space`` of architecture ``KV_ARCH_ARM64``; reads, translations and mappings as for amd64."""

    def __init__(self, phys, root: int, ttbr1: int, page_size: int, minidump: bool):  # noqa: builds its own handle
        ffi, lib = engine._native.ffi, engine._native.lib
        granule = granule_for(page_size)
        self.phys = phys
        self.root = root
        self.ttbr1 = ttbr1
        self.page_size = page_size
        self.levels = 4
        self.canon48 = False
        own = root == ttbr1
        handle = lib.kv_space_new_arm64(phys._h, 0 if own else root & engine._U64_MAX, 0 if own else 1,
                                        ttbr1 & engine._U64_MAX, granule.page_shift)
        if handle == ffi.NULL:
            raise MemoryError("kvm-vol C core: cannot allocate an arm64 address space")
        self._h = ffi.gc(handle, lib.kv_space_free)
        dump = _minidump_of(phys, minidump)
        if dump is not None:
            hdr = dump.header
            if lib.kv_space_set_minidump_arm64(self._h, hdr.version, hdr.kernbase, hdr.dmapphys, hdr.dmapbase,
                                               hdr.dmapend, ffi.from_buffer(dump._pmap), dump.pmap_entries) != 0:
                raise MemoryError("kvm-vol C core: cannot copy the arm64 pmap section")
        self._bind()


def open_space(phys, root: int, *, ttbr1: Optional[int] = None, page_size: int = 4096, minidump: bool = False):
    """An arm64 space over ``phys``: TTBR0 table ``root``, kernel table ``ttbr1`` (default: ``root``)."""
    if ttbr1 is None:
        ttbr1 = root
    cls = NativeSpaceArm64 if phys.native else TwinSpaceArm64
    return cls(phys, root, ttbr1, page_size, minidump)
