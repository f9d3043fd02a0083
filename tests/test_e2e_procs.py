"""End to end: freebsd.pslist filters and threads, pstree, psargs and psenv through ``vol``.

Expectations come from the forge manifest; the minidump/full-dump difference
(user pages are only in full dumps and raw images) is part of them.
"""

import pytest

from conftest import arch_cases, arch_release_cases, is_minidump, run_vol, run_vol_json


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


def test_pslist_threads_and_filters(forged_images):
    paths, manifest = forged_images["14"]
    procs = manifest["processes"]
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist", "--threads"))
    assert [(r["PID"], r["TID"], r["COMM"], r["STATE"]) for r in rows] == \
        [(p["pid"], t["tid"], t["name"], t["stat"]) for p in procs for t in p["threads"]]
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist", "--tty", "pts/0", "--uid", "0"))
    assert [r["PID"] for r in rows] == [p["pid"] for p in procs if p["tty"] == "pts/0" and p["uid"] == 0]
    assert rows and all(r["EUID"] == 0 for r in rows)
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist", "--session", "904", "--pgrp", "1012",
                              "--ruid", "1001"))
    assert [r["PID"] for r in rows] == [p["pid"] for p in procs if p["sid"] == 904 and p["pgid"] == 1012
                                        and p["ruid"] == 1001] == [1012]


def _walk(rows, depth=0):
    for row in rows:
        yield depth, row
        yield from _walk(row["__children"], depth + 1)


@pytest.mark.parametrize("arch,release", arch_release_cases())
def test_pstree_nesting(arch_images, arch, release):
    paths, manifest = arch_images(arch, release)
    ppid = {p["pid"]: p["ppid"] for p in manifest["processes"]}
    flat = list(_walk(run_vol_json("-f", paths["vmcore"], "freebsd.pstree")))
    assert sorted(r["PID"] for _d, r in flat) == sorted(ppid)  # every process exactly once
    assert flat[0][0] == 0 and flat[0][1]["PID"] == 0  # pid 0 at the root
    depth = {r["PID"]: d for d, r in flat}

    def expected_depth(pid):
        return 0 if pid == 0 else 1 + expected_depth(ppid[pid])

    assert depth == {pid: expected_depth(pid) for pid in ppid}
    if release == "14":  # --pid: the process, its ancestors and its descendants
        rows = list(_walk(run_vol_json("-f", paths["vmcore"], "freebsd.pstree", "--pid", "1012")))
        assert [(d, r["PID"]) for d, r in rows] == \
            [(0, 0), (1, 1), (2, 712), (3, 901), (4, 903), (5, 904), (6, 1012), (7, 1013), (8, 1021)]


def expected_psargs(manifest, fmt):
    """freebsd.psargs rows of the manifest's processes in format ``fmt``: the kernel's cached
    p_args, else the user stack's argv where the format holds user pages, else nothing."""
    expected = []
    for p in manifest["processes"]:
        if p["args_source"] == "p_args":
            args, source = " ".join(p["p_args"]), "p_args"
        elif p["args_source"] == "ps_strings" and not is_minidump(fmt):
            args, source = " ".join(p["argv"]), "ps_strings"
        else:
            args = source = None
        expected.append({"PID": p["pid"], "PPID": p["ppid"], "COMM": p["comm"], "ARGS": args, "SOURCE": source})
    return expected


@pytest.mark.parametrize("arch,release,fmt", arch_cases(formats=("vmcore", "full", "raw"), releases=("15",)))
def test_psargs(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.psargs"))
    assert rows == expected_psargs(manifest, fmt)
    assert any(r["SOURCE"] == "ps_strings" for r in rows) == (not is_minidump(fmt))


def test_psenv_full_and_minidump(forged_images):
    paths, manifest = forged_images["14"]
    rows = strip(run_vol_json("-f", paths["raw"], "freebsd.psenv"))
    expected = []
    for p in manifest["processes"]:
        if p["env"] is None or p["p_state"] == "PRS_ZOMBIE":
            expected.append((p["pid"], None, None))
            continue
        for entry in p["env"]:
            key, _sep, value = entry.partition("=")
            expected.append((p["pid"], key, value))
    assert [(r["PID"], r["KEY"], r["VALUE"]) for r in rows] == expected
    assert ("1020", "LD_PRELOAD") in {(str(r["PID"]), r["KEY"]) for r in rows}  # the 32-bit implant
    # A minidump has no user pages: one row per process, nothing readable, no traceback.
    proc = run_vol("-q", "-v", "-f", paths["vmcore"], "freebsd.psenv", "--pid", "904")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "is not in the dump (minidumps hold no user pages)" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].split("\t")[:3] == ["904", "903", "sh"]
