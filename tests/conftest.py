"""Shared fixtures: an isolated Volatility/kvm-vol environment and forge images.

Every test session gets its own Volatility cache and kvm-vol symbol directory
(``XDG_CACHE_HOME`` and ``KVM_VOL_SYMBOLS_DIR``), so it never reads or
pollutes the user's.  ``run_vol`` runs the real ``vol`` command line in a
subprocess, with the installed plugins or, in a source checkout that was not
installed, with ``-p kvm_vol/plugins``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Isolate before anything imports volatility3 (its CACHE_PATH is read at import).
_SESSION_HOME = None


def pytest_configure(config):
    global _SESSION_HOME
    import tempfile

    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="kvm-vol-tests-"))
    os.environ["XDG_CACHE_HOME"] = str(_SESSION_HOME / "cache")
    os.environ["KVM_VOL_SYMBOLS_DIR"] = str(_SESSION_HOME / "symbols")


def pytest_unconfigure(config):
    import shutil

    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def _plugins_installed() -> bool:
    spec = importlib.util.find_spec("volatility3.plugins.freebsd")
    return bool(spec and spec.submodule_search_locations and any(
        "site-packages" in p or "dist-packages" in p for p in spec.submodule_search_locations))


def vol_command(*args: str) -> list:
    """The ``vol`` console script of this interpreter's environment."""
    import shutil

    script = Path(sys.executable).parent / "vol"
    base = [str(script) if script.exists() else shutil.which("vol")]
    if not _plugins_installed():
        base += ["-p", str(REPO / "kvm_vol" / "plugins")]
    return base + list(args)


def run_vol(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``vol ARGS`` and return the completed process (text mode)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(vol_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def run_vol_json(*args: str):
    proc = run_vol("-q", "-r", "json", *args)
    assert proc.returncode == 0, f"vol {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def forged_images(session_dir):
    """Forge machines for each release in every format; {release: (paths, manifest)}."""
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    out = {}
    for release in ("14", "15"):
        pack = pack_for_release(release)
        forged = build.build(pack)
        directory = session_dir / f"images-{release}"
        paths = forged.write(str(directory), stem="forge", formats=build.FORMATS)
        isf_dir = user_symbols_dir() / "freebsd"
        isf_dir.mkdir(parents=True, exist_ok=True)
        forged.write_isf(str(isf_dir / f"forge-{pack}.json.xz"))
        out[release] = (paths, forged.manifest)
    return out
