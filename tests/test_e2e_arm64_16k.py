"""End to end on FreeBSD/arm64 with 16 KiB pages (a ``GENERIC-16K`` kernel): ``vol`` against the manifest.

The arm64 4 KiB machine runs through every e2e test of the harness
(``conftest.E2E_ARCHES``); this file adds the 16 KiB granule, whose dumps
differ everywhere the page size matters: the minidump v3 flag and 16 KiB
header/sections/bitmap pages/L3 entries, the direct map based at
``dmap_phys_base`` 0 (an L1 block is 64 GiB), the kernel image mapped with
L3 pages, 2-entry L0 tables.  Each release's machine is written as a
minidump v3 (``vmcore``, what such a kernel's savecore writes) and a raw
image; its kernel banner names ``GENERIC-16K``, as a real 16 KiB kernel's does,
so its ISF never collides with the 4 KiB machine's.
"""

import pytest

from conftest import RELEASES, run_vol, run_vol_json
from test_e2e_files import expected_rows as expected_files
from test_e2e_procs import expected_psargs
from test_e2e_pslist import expected_rows as expected_pslist
from test_e2e_system import expected_dmesg

FORMATS = ("vmcore", "raw")
_FORGED = {}


def images_16k(session_dir, release: str):
    """The 16 KiB machine of ``release`` (built once per session), its ISF installed for ``vol``."""
    if release not in _FORGED:
        from kvm_vol.forge import build
        from kvm_vol.forge.demo import pack_for_release
        from kvm_vol.paths import user_symbols_dir

        pack = pack_for_release(release, "arm64")
        banner = build.banner_for(pack.split("-")[1], "arm64", ident="GENERIC-16K")
        forged = build.build(pack, page_size=16384, banner=banner)
        assert forged.machine.PAGE_SIZE == 16384 and "/sys/GENERIC-16K\n" in forged.kernel.banner
        paths = forged.write(str(session_dir / f"images-arm64-16k-{release}"), stem="forge", formats=FORMATS)
        isf_dir = user_symbols_dir() / "freebsd"
        isf_dir.mkdir(parents=True, exist_ok=True)
        forged.write_isf(str(isf_dir / f"forge-{pack}-16k.json.xz"))
        _FORGED[release] = (paths, forged.manifest)
    return _FORGED[release]


CASES = [pytest.param(r, f, id=f"{r}-{f}") for r in RELEASES for f in FORMATS]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


@pytest.mark.parametrize("release,fmt", CASES)
def test_pslist_16k(session_dir, release, fmt):
    paths, manifest = images_16k(session_dir, release)
    assert manifest["arch"] == "arm64" and manifest["page_size"] == 16384
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.pslist")) == expected_pslist(manifest)


@pytest.mark.parametrize("release,fmt", CASES)
def test_files_and_dmesg_16k(session_dir, release, fmt):
    paths, manifest = images_16k(session_dir, release)
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.files")) == expected_files(manifest)
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.dmesg")) == expected_dmesg(manifest)


@pytest.mark.parametrize("release,fmt", CASES)
def test_psargs_psenv_16k(session_dir, release, fmt):
    """User memory (ps_strings, the environment) is read through each process's TTBR0 tables in the
    raw image; a minidump holds no user pages, so there only the kernel's cached ``p_args`` show."""
    paths, manifest = images_16k(session_dir, release)
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.psargs"))
    assert rows == expected_psargs(manifest, fmt)
    env = strip(run_vol_json("-f", paths[fmt], "freebsd.psenv", "--pid", "1021"))
    if fmt == "raw":
        (proc,) = [p for p in manifest["processes"] if p["pid"] == 1021]
        assert [f"{r['KEY']}={r['VALUE']}" for r in env] == proc["env"]
    else:
        assert [(r["KEY"], r["VALUE"]) for r in env] == [(None, None)]


@pytest.mark.parametrize("release,fmt", CASES)
def test_swap_and_loadavg_16k(session_dir, release, fmt):
    paths, manifest = images_16k(session_dir, release)
    (row,) = strip(run_vol_json("-f", paths[fmt], "freebsd.loadavg"))
    assert [row["Raw 1 min"], row["Raw 5 min"], row["Raw 15 min"]] == manifest["loadavg"]["ldavg"]
    swap = strip(run_vol_json("-f", paths[fmt], "freebsd.swap"))
    kib = manifest["page_size"] // 1024  # swapinfo -k: swap blocks are pages, 16 KiB here
    dev = manifest["swap"]["devices"][0]
    assert (swap[0]["Device"], swap[0]["Total"], swap[0]["Used"]) == (dev["device"], dev["total"] * kib,
                                                                      dev["used"] * kib)
    assert swap[0]["OFFSET (V)"] == dev["offset"]  # a full arm64 kernel address, never masked


def test_info_describes_the_16k_minidump(session_dir):
    paths, _manifest = images_16k(session_dir, RELEASES[-1])
    proc = run_vol("-q", "-f", paths["vmcore"], "freebsd.pslist", "--pid", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from kvm_vol.formats import open_dump

    with open_dump(paths["vmcore"]) as dump:
        info = dump.info()
    assert (info["arch"], info["version"], info["page_size"], info["header"]["flags"]) == ("arm64", 3, 16384, 1)
    assert info["sections"]["header"]["size"] == 16384 and info["dmapphys"] == 0
