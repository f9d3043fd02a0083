"""Where kvm-vol keeps files: shipped type packs and the per-user ISF directory.

One place for these facts so the CLI (which writes ISFs), the Volatility glue
(which registers the directory) and the tests (which redirect it) agree.
"""

import os
from pathlib import Path

#: Environment variable that overrides the per-user symbol directory.
SYMBOLS_DIR_ENV = "KVM_VOL_SYMBOLS_DIR"

_PKG = Path(__file__).resolve().parent


def user_symbols_dir() -> Path:
    """Directory where ``kvm-vol isf`` and ``kvm-vol demo`` install kernel ISFs.

    ``$KVM_VOL_SYMBOLS_DIR``, else ``$XDG_DATA_HOME/kvm-vol/symbols``, else
    ``~/.local/share/kvm-vol/symbols``.  Volatility finds ISFs below it
    because :mod:`kvm_vol.volatility` appends it to ``volatility3.symbols.__path__``.
    """
    env = os.environ.get(SYMBOLS_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kvm-vol" / "symbols"


def type_packs_dir() -> Path:
    """Directory holding the shipped type packs (``freebsd-<release>-<arch>.json.xz``).

    Installed: ``kvm_vol/_symbols/types`` (setup.py maps the repo's ``symbols/``
    there).  Source checkout: the repo's ``symbols/types``.
    """
    installed = _PKG / "_symbols" / "types"
    if installed.is_dir():
        return installed
    return _PKG.parent / "symbols" / "types"
