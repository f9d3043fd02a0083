"""Make the C core importable for the tests, so both implementations always run.

An installed kvm-vol carries ``kvm_vol.core._native``; a source checkout has
it only after ``python kvm_vol/core/_build_native.py``.  When it is missing,
:func:`ensure_native` builds it into a scratch directory (gcc is on every
machine here) and loads it under its real name - it never skips.
"""

import importlib.util
import sys

from kvm_vol.core import engine


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
