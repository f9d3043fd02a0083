"""Shared fixtures: an isolated Volatility/kvm-vol environment and forge images.

Every test session gets its own Volatility cache and kvm-vol symbol directory
(``XDG_CACHE_HOME`` and ``KVM_VOL_SYMBOLS_DIR``), so it never reads or
pollutes the user's.  ``run_vol`` runs the real ``vol`` command line in a
subprocess, with the installed plugins or, in a source checkout that was not
installed, with ``-p kvm_vol/plugins``.

Forge images are made once per session and per (architecture, release), in
every format that architecture's machine writes (:func:`forge_images`).  The
end-to-end tests are parametrised with :func:`arch_cases`, which covers every
architecture in :data:`E2E_ARCHES`: adding an architecture there runs them
all on it.
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


#: Architectures the end-to-end tests run on.  An architecture joins when its forge
#: machine (kvm_vol.forge.arches.MACHINES) writes images that kvm-vol reads: add it here.
E2E_ARCHES = ("amd64", "arm64", "i386")
#: FreeBSD releases (type packs) every end-to-end test covers.
RELEASES = ("14", "15")

_FORGED = {}  # (arch, release) -> (paths, manifest)


def forge_images(arch: str, release: str):
    """The forge machine of ``arch`` on ``release``'s layouts in every format it writes.

    Built once per session; its ISF is installed in the session's symbol
    directory, so ``vol`` finds it.  Returns ``(paths by format, manifest)``.
    """
    key = (arch, release)
    if key not in _FORGED:
        from kvm_vol.forge import build
        from kvm_vol.forge.demo import pack_for_release
        from kvm_vol.paths import user_symbols_dir

        pack = pack_for_release(release, arch)
        forged = build.build(pack)
        assert forged.arch == arch, f"{pack} built a {forged.arch} machine"
        directory = _SESSION_HOME / (f"images-{release}" if arch == "amd64" else f"images-{arch}-{release}")
        paths = forged.write(str(directory), stem="forge", formats=forged.machine.FORMATS)
        isf_dir = user_symbols_dir() / "freebsd"
        isf_dir.mkdir(parents=True, exist_ok=True)
        forged.write_isf(str(isf_dir / f"forge-{pack}.json.xz"))
        _FORGED[key] = (paths, forged.manifest)
    return _FORGED[key]


def arch_cases(formats=None, releases=RELEASES, arches=None):
    """``pytest.param(arch, release, fmt)`` for every architecture, release and format.

    ``formats`` keeps only those formats (each architecture contributes the
    ones its machine writes); ids read ``i386-14-minidump-v2``.
    """
    from kvm_vol.forge.arches import formats_for

    cases = []
    for arch in (E2E_ARCHES if arches is None else arches):
        written = formats_for(arch)
        for release in releases:
            for fmt in written:
                if formats is None or fmt in formats:
                    cases.append(pytest.param(arch, release, fmt, id=f"{arch}-{release}-{fmt}"))
    return cases


def is_minidump(fmt: str) -> bool:
    """Whether forge format ``fmt`` is a minidump (kernel memory only: no user pages).

    Every architecture names its formats alike: ``vmcore`` is its newest
    minidump version, ``minidump-vN`` an older one, ``kdh-X`` format X behind
    a kerneldumpheader.
    """
    inner = fmt[4:] if fmt.startswith("kdh-") else fmt
    return inner == "vmcore" or inner.startswith("minidump-")


def arch_release_cases(releases=RELEASES, arches=None):
    """``pytest.param(arch, release)`` for every architecture in :data:`E2E_ARCHES` and release."""
    return [pytest.param(arch, release, id=f"{arch}-{release}")
            for arch in (E2E_ARCHES if arches is None else arches) for release in releases]


@pytest.fixture(scope="session")
def arch_images(session_dir):
    """:func:`forge_images` as a fixture: ``arch_images(arch, release) -> (paths, manifest)``."""
    return forge_images


@pytest.fixture(scope="session")
def forged_images(session_dir):
    """The amd64 machines of each release in every format; {release: (paths, manifest)}."""
    return {release: forge_images("amd64", release) for release in RELEASES}
