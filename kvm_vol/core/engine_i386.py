"""i386 address spaces of the translation core: the C core's ``kv_i386.c`` and its twin.

:func:`kvm_vol.core.engine.open_space` with ``arch="i386"`` lands here.  The
classes reuse the amd64 spaces' read, translate and mapping loops (they
only call ``_locate``/``_skip``/``_chunk`` and the C core's ``kv_translate``
family, which dispatches on the space's architecture); what differs is how a
space is built (the non-PAE or PAE walk, the minidump's flat PTE array
instead of PDEs, no direct map) and the rule for addresses of 4 GiB and
more, which do not exist on i386.
"""

from kvm_vol.core import engine
from kvm_vol.core.i386 import (
    PAGE_SHIFT, PAGE_SIZE, PDPT_ALIGN, PDPTSHIFT, PG_PS, PG_V, REASON_VA32, VA_LIMIT, MinidumpI386Translator,
    PageTableTranslatorI386, PmapMode, pmap_mode,
)
from kvm_vol.errors import TranslationError

__all__ = ["open_space"]


def _dump_mode(dump) -> PmapMode:
    mode = getattr(dump, "mode", None)
    if not isinstance(mode, PmapMode):
        raise ValueError(f"{dump!r} is not an i386 minidump: it has no i386 pmap section")
    return mode


class TwinSpaceI386(engine._TwinSpace):
    """The twin: :class:`PageTableTranslatorI386` and :class:`MinidumpI386Translator`."""

    def __init__(self, phys, root: int, mode: PmapMode, minidump: bool):  # noqa: super().__init__ is amd64's
        self.phys = phys
        self.root = root
        self.mode = mode
        self.levels = mode.levels
        self.canon48 = False
        dump = phys.dump
        self._walker = PageTableTranslatorI386(dump.read_phys, root, mode)
        self._md = dump.translator() if minidump else None
        if self._md is not None:
            assert isinstance(self._md, MinidumpI386Translator)
            # no direct map: the minidump rules cover exactly va >= kernbase
            self._kernbase, self._dmapbase, self._dmapend = self._md.kernbase, 0, 0

    def _skip(self, va: int) -> int:
        """Size of the aligned block around ``va`` that fails like ``va`` (0: the rest); kv_i386.c's *skip."""
        if va >= VA_LIMIT:
            return 0
        if self._is_md(va):
            return 0 if (va - self._kernbase) >> PAGE_SHIFT >= self._md.pmap_entries else PAGE_SIZE
        mode, read = self.mode, self.phys.dump.read_phys
        unpack, size = mode.entry.unpack, mode.entry_size
        try:
            if mode.pae:
                entry = unpack(read((self.root & ~(PDPT_ALIGN - 1)) + (va >> PDPTSHIFT) * size, size))[0]
                if not entry & PG_V:
                    return 1 << PDPTSHIFT
                pd, pdi, covered = entry & mode.pg_frame, (va >> mode.pdrshift) & (mode.nptepg - 1), 1 << PDPTSHIFT
            else:
                pd, pdi, covered = self.root & mode.pg_frame, va >> mode.pdrshift, 0
        except TranslationError:
            return 0
        try:
            entry = unpack(read(pd + pdi * size, size))[0]
        except TranslationError:
            return covered
        if not entry & PG_V:
            return mode.nbpdr
        if not entry & PG_PS:
            try:
                read((entry & mode.pg_frame) + ((va >> PAGE_SHIFT) & (mode.nptepg - 1)) * size, size)
            except TranslationError:
                return mode.nbpdr
        return PAGE_SIZE

    def _step_to_end(self, va: int, remaining: int) -> int:
        return remaining  # nothing maps at or above 4 GiB, or past the pmap section


class NativeSpaceI386(engine._NativeSpace):
    """A ``kv_space`` made by ``kv_space_new_i386`` (and ``kv_space_set_minidump_i386``)."""

    def __init__(self, phys, root: int, mode: PmapMode, minidump: bool):  # noqa: super().__init__ is amd64's
        ffi, lib = engine._native.ffi, engine._native.lib
        self.phys = phys
        self.root = root
        self.mode = mode
        self.levels = mode.levels
        self.canon48 = False
        handle = lib.kv_space_new_i386(phys._h, root & engine._U64_MAX, 1 if mode.pae else 0)
        if handle == ffi.NULL:
            raise MemoryError("kvm-vol C core: cannot allocate an address space")
        self._h = ffi.gc(handle, lib.kv_space_free)
        if minidump:
            dump = phys.dump
            if lib.kv_space_set_minidump_i386(self._h, dump.header.kernbase, ffi.from_buffer(dump._pmap),
                                              dump.pmap_entries) != 0:
                raise MemoryError("kvm-vol C core: cannot copy the pmap section")
        self._bind()

    def translate(self, va: int):
        if not 0 <= va <= engine._U64_MAX:
            raise TranslationError(va, REASON_VA32)
        return super().translate(va)

    def _chunk_outside(self, va: int, n: int) -> bytes:
        if 0 <= va <= engine._U64_MAX:
            return self.read(va, n)
        raise TranslationError(va, REASON_VA32)


def open_space(phys, root: int, *, pae: bool, minidump: bool = False):
    """An i386 space over ``phys``: the walk from ``root`` (PD, or PDPT with ``pae``), and with
    ``minidump`` the dump's PTE array for kernel VA.  A minidump's own ``paemode`` must agree."""
    mode = pmap_mode(pae)
    if minidump and _dump_mode(phys.dump) is not mode:
        raise ValueError(f"the minidump's pmap is {_dump_mode(phys.dump).name}, the space asked for {mode.name}")
    cls = NativeSpaceI386 if phys.native else TwinSpaceI386
    return cls(phys, root, mode, minidump)
