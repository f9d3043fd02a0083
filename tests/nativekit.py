"""Make the C core importable for the tests, so both implementations always run,
and compare the two: :func:`outcome` and :class:`SpacePair`, shared by the
amd64, i386 and arm64 core tests.

An installed kvm-vol carries ``kvm_vol.core._native``; a source checkout has
it only after ``python kvm_vol/core/_build_native.py``.  When it is missing,
:func:`ensure_native` builds it into a scratch directory (gcc is on every
machine here) and loads it under its real name - it never skips.
"""

import importlib.util
import sys

from kvm_vol.core import engine
from kvm_vol.errors import TranslationError


def ensure_native(scratch_dir: str):
    mod = engine.native_module()
    if mod is None:
        from kvm_vol.core import _build_native

        path = _build_native.build_in_place(scratch_dir)
        spec = importlib.util.spec_from_file_location("kvm_vol.core._native", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["kvm_vol.core._native"] = mod
        engine._native, engine._native_error = mod, None
    assert engine.use_native(pure=False), engine.implementation()
    return mod


def outcome(fn, *args):
    """``("ok", value)`` or ``("error", address, reason)``: what two implementations must share."""
    done = []  # runs a mapping yielded before failing: part of the outcome too
    try:
        value = fn(*args)
        if not isinstance(value, (bytes, tuple)):
            for item in value:
                done.append(item)
            value = done
    except TranslationError as exc:
        return ("error", exc.address, exc.reason, tuple(done))
    return ("ok", value)


class SpacePair:
    """The same dump served by the C core and by the twin; ``space_kw`` go to :func:`engine.open_space`."""

    def __init__(self, dump, path=None, data=None, root=0, **space_kw):
        self.dump = dump
        self.phys_c = engine.open_phys(dump, path, data=data, pure=False)
        self.phys_t = engine.open_phys(dump, path, data=data, pure=True)
        assert self.phys_c.native and not self.phys_t.native
        self.c = engine.open_space(self.phys_c, root, **space_kw)
        self.t = engine.open_space(self.phys_t, root, **space_kw)

    def same(self, method, *args):
        """Run ``method`` on both spaces; assert equal outcomes; return the outcome."""
        got_c = outcome(getattr(self.c, method), *args)
        got_t = outcome(getattr(self.t, method), *args)
        assert got_c == got_t, f"{method}{tuple(hex(a) if isinstance(a, int) else a for a in args)}"
        return got_c

    def same_phys(self, pa, n, pad=False):
        got_c = outcome(self.phys_c.read, pa, n, pad)
        got_t = outcome(self.phys_t.read, pa, n, pad)
        assert got_c == got_t, f"phys read {pa:#x}+{n}"
        return got_c

    def check(self, va, n, mapping=True):
        """Every operation at ``va``; returns the outcome of the plain read."""
        got = self.same("read", va, n)
        padded = self.same("read", va, n, True)
        assert padded[0] == "ok" and len(padded[1]) == n
        if got[0] == "ok":
            assert padded[1] == got[1]
        self.same("translate", va)
        if mapping:
            self.same("mapping", va, n, True)
            self.same("mapping", va, n, False)
        return got
