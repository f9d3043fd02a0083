"""Memory that must not grow with the number of processes.

Every process address space is a copy of the kernel layer with another
page-table root, and on a minidump each one translates kernel addresses by
the dump's pmap section (8 MiB for an amd64 v2/v3 dump).  The core keeps that
table once per dump file; a copy per process layer made ``freebsd.psenv``
cost 8 MiB per process (220 MiB on the demo's 34, gigabytes on a server).
"""

import os
import subprocess

from conftest import REPO, forge_images, vol_command


def _peak_rss_mib(*args: str) -> float:
    """Peak RSS of one ``vol`` run (its own rusage, from wait4)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(vol_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr[-2000:]
    return usage.ru_maxrss / 1024


def test_process_layers_share_the_minidump_pmap():
    paths, manifest = forge_images("amd64", "14")
    user = [p for p in manifest["processes"] if p["pid"] > 0 and p["p_state"] != "PRS_ZOMBIE"]
    assert len(user) >= 20  # enough process layers for a per-layer copy to show
    base = _peak_rss_mib("-q", "-f", paths["vmcore"], "freebsd.pslist")
    psenv = _peak_rss_mib("-q", "-f", paths["vmcore"], "freebsd.psenv")
    # one pmap copy per process layer would add 8 MiB each: > 150 MiB here
    assert psenv - base < 48, (base, psenv)
