"""cffi builder of ``kvm_vol.core._native`` (API mode), used by setup.py's ``cffi_modules``.

The cdef is kvcore.h itself, so the Python binding and the C code share one
declaration of every function and error code.  Run directly
(``python kvm_vol/core/_build_native.py [DIR]``) to build into ``kvm_vol/core`` (or DIR), e.g.
for a development checkout or the AddressSanitizer run in ``benchmarks/``;
``KVM_VOL_CFLAGS`` adds compiler flags (``-fsanitize=address``).
"""

import os
import re
import shlex
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(path: str) -> str:
    """``path`` relative to the current directory when possible (setuptools prefers it)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _cdef() -> str:
    with open(os.path.join(_HERE, "kvcore.h"), encoding="utf-8") as fh:
        text = fh.read()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _sources() -> list:
    """kvcore.c and every per-architecture translation file (``kv_<arch>.c``) next to it."""
    import glob

    return [os.path.join(_HERE, "kvcore.c")] + sorted(glob.glob(os.path.join(_HERE, "kv_*.c")))


def make_ffibuilder(absolute_paths: bool = False) -> FFI:
    """The builder; setuptools wants source paths relative to setup.py, a scratch build absolute ones."""
    fix = os.path.abspath if absolute_paths else _rel
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        "kvm_vol.core._native",
        '#include <stdint.h>\n#include "kvcore.h"\n',
        sources=[fix(path) for path in _sources()],
        include_dirs=[fix(_HERE)],
        extra_compile_args=["-O2", "-std=c99", "-D_GNU_SOURCE"] + shlex.split(os.environ.get("KVM_VOL_CFLAGS", "")),
        extra_link_args=shlex.split(os.environ.get("KVM_VOL_LDFLAGS", "")),
    )
    return builder


#: What setup.py's ``cffi_modules`` names.
ffibuilder = make_ffibuilder()


def build_in_place(dest: str = _HERE, verbose: bool = False) -> str:
    """Compile in a scratch directory and copy only the extension into ``dest``; returns its path."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kvm-vol-native-") as tmp:
        built = make_ffibuilder(absolute_paths=True).compile(tmpdir=tmp, verbose=verbose)
        target = os.path.join(dest, os.path.basename(built))
        for old in glob.glob(os.path.join(dest, "_native.*.so")) + glob.glob(os.path.join(dest, "_native.*.pyd")):
            os.unlink(old)
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place(sys.argv[1] if len(sys.argv) > 1 else _HERE, verbose=True))
