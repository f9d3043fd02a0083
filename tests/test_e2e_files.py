"""End to end: freebsd.files against the forge manifest.

The forge's descriptor tables hold every kind of entry the plugin tells
apart: vnodes on three mounted file systems (paths cross /dev and /tmp
mount points), a vnode whose name left the name cache, a FIFO, TCP and UDP
sockets over IPv4 and IPv6, bound and connected AF_UNIX sockets, a pipe
between two processes, a kqueue, a table with holes grown past NDFILE, and
the text / ctty / cwd / root / jail pseudo entries.
"""

import pytest

from conftest import arch_cases, run_vol_json

#: The command line on both layouts; every format is covered in process (test_kvm_system_api.py).
CASES = [c for c in arch_cases() if (c.values[1], c.values[2]) in (("15", "vmcore"), ("14", "raw"))]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


def expected_rows(manifest, pids=None):
    comm = {p["pid"]: p["comm"] for p in manifest["processes"]}
    rows = []
    for p in manifest["processes"]:  # allproc order
        if pids and p["pid"] not in pids:
            continue
        for r in manifest["files"].get(str(p["pid"]), []):
            rows.append({"PID": p["pid"], "COMM": comm[p["pid"]], "FD": r["FD"], "TYPE": r["TYPE"],
                         "FLAGS": r["FLAGS"], "OFFSET": r["OFFSET"], "VTYPE": r["VTYPE"], "Path": r["Path"],
                         "DETAILS": r["DETAILS"]})
    return rows


@pytest.mark.parametrize("arch,release,fmt", CASES)
def test_files_match_manifest(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.files"))
    assert rows == expected_rows(manifest)


def test_files_pid_filter_and_special_cases(forged_images):
    paths, manifest = forged_images["14"]
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.files", "--pid", "1020", "1014"))
    assert rows == expected_rows(manifest, {1014, 1020})
    by_fd = {(r["PID"], r["FD"]): r for r in rows}
    # A name purged from the cache: no path, and the reason says so.
    evicted = by_fd[(1020, "3")]
    assert evicted["Path"] is None and evicted["DETAILS"] == "path not in name cache"
    # Holes: descriptors 2, 4, 6-8, 10 ... are closed; 27 is beyond NDFILE (the table grew).
    fds = [int(r["FD"]) for r in rows if r["PID"] == 1020 and r["FD"].isdigit()]
    assert fds == [0, 1, 3, 5, 9, 11, 27]
    # The pipe names the process and descriptor at its other end, both ways.
    assert "(pid 1014 fd 1)" in by_fd[(1020, "0")]["DETAILS"]
    assert "(pid 1020 fd 0)" in by_fd[(1014, "1")]["DETAILS"]
    # The text vnode is on tmpfs: the path crosses the /tmp mount point.
    assert by_fd[(1020, "text")]["Path"] == "/tmp/.x11-unix/exfiltrate-daemon12"


def test_files_manifest_is_not_trivial(forged_images):
    _paths, manifest = forged_images["15"]
    rows = [r for rs in manifest["files"].values() for r in rs]
    assert {r["TYPE"] for r in rows} >= {"VNODE", "SOCKET", "PIPE", "FIFO", "KQUEUE"}
    assert {r["VTYPE"] for r in rows} >= {"VREG", "VDIR", "VCHR", "VFIFO"}
    assert {r["FD"] for r in rows} >= {"text", "cwd", "root", "jail"}
    assert any("[::]:22" in r["DETAILS"] for r in rows) and any("->" in r["DETAILS"] for r in rows)
    assert set(manifest["mounts"]) == {"/", "/dev", "/tmp"}
