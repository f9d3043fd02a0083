"""End to end: the real ``vol`` command on forge images, compared with the manifest.

Both releases' layouts (FreeBSD 14.x and 15.0 headers), every container the
forge writes (minidump v1/v2/v3, ELF full dump, raw image, and both dumps
behind a kerneldumpheader), and a kernel loaded away from its link-time
physical address (UEFI staging).
"""

import datetime
import json

import pytest

from conftest import arch_cases, run_vol, run_vol_json
from kvm_vol.arch import for_name


def creation_time(p):
    """ki_start (boottime + p_stats->p_start) as the JSON renderer prints a UTC datetime."""
    return datetime.datetime.fromtimestamp(p["start"], tz=datetime.timezone.utc).isoformat()


def expected_rows(manifest):
    # offsets as Volatility shows them: masked to the kernel layer's address bits (48 on amd64,
    # 32 on i386, all 64 on arm64, whose kernel addresses have bit 47 clear)
    mask = (1 << for_name(manifest["arch"]).address_bits) - 1
    return [
        {
            "OFFSET (V)": p["offset"] & mask,
            "PID": p["pid"],
            "TID": p["threads"][0]["tid"],
            "PPID": p["ppid"],
            "COMM": p["comm"],
            "STATE": p["stat"],
            "UID": p["ruid"],
            "GID": p["rgid"],
            "EUID": p["uid"],
            "EGID": p["gid"],
            "CREATION TIME": creation_time(p),
            "THREADS": len(p["threads"]),
        }
        for p in manifest["processes"]
    ]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


@pytest.mark.parametrize("arch,release,fmt", arch_cases())
def test_pslist_matches_manifest(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    assert manifest["arch"] == arch
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.pslist"))
    assert rows == expected_rows(manifest)


def test_pslist_pid_filter(forged_images):
    paths, manifest = forged_images["14"]
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist", "--pid", "1", "904"))
    assert [r["PID"] for r in rows] == [p["pid"] for p in manifest["processes"] if p["pid"] in (1, 904)]


def test_manifest_is_not_trivial(forged_images):
    """The comparison above is only worth something if the machine has variety."""
    _paths, manifest = forged_images["14"]
    procs = manifest["processes"]
    assert len(procs) >= 30
    assert procs[-1]["pid"] == 0 and procs[-1]["comm"] == "kernel"
    assert {p["stat"] for p in procs} >= {"SRUN", "SSLEEP", "SSTOP", "SZOMB", "SWAIT", "SLOCK"}
    assert any(len(p["comm"]) == 19 for p in procs)
    assert any(p["ruid"] != p["uid"] for p in procs)
    assert any(len(p["threads"]) > 2 for p in procs)


def test_uefi_loaded_kernel(session_dir):
    """A kernel staged at 48 MiB (not its link-time 2 MiB): found by banner displacement."""
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release

    pack = pack_for_release("14")
    forged = build.build(pack, kernphys=0x3000000, ram_size=96 << 20, seed=7)
    paths = forged.write(str(session_dir / "uefi"), stem="uefi", formats=("full", "raw", "vmcore"))
    for fmt in ("full", "raw", "vmcore"):
        rows = strip(run_vol_json("-f", paths[fmt], "freebsd.pslist"))
        assert rows == expected_rows(forged.manifest), fmt


def test_generic_plugin_stacks_freebsd_layers(forged_images):
    """A generic plugin (banners) gets the FreeBSD dump and kernel layers stacked for it."""
    paths, _manifest = forged_images["15"]
    proc = run_vol("-vvv", "-f", paths["vmcore"], "banners.Banners")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stacked = [l for l in proc.stderr.splitlines() if "Stacked layers:" in l]
    assert stacked and "'FreebsdKernelLayer', 'FreebsdDumpLayer', 'FileLayer'" in stacked[-1], stacked
