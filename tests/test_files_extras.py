"""Open-file detail beyond vnodes and pipes: shm, semaphores, pty masters, socket queues, ktrace, mmap.

The forge (kvm_vol/forge/fileextras.py) gives the demo machine a postgres
with a named and an anonymous POSIX shm segment, a daemon holding a named
semaphore and traced by ktrace(1) (``p_ktrioparms``), an sshd holding the
master of its session's pseudo-terminal, listening sockets with accept
queues and connected ones with queued bytes, and file mappings (shared,
private, copy-on-write through a shadow object, plus anonymous memory that
must not show).  Expected rows come from the manifest.
"""

import pytest

from conftest import arch_cases, run_vol, run_vol_json
from test_e2e_files import expected_rows, strip


def expected_with_mmap(manifest, pids=None):
    """freebsd.files --mmap: each process's rows, then its mmap rows."""
    comm = {p["pid"]: p["comm"] for p in manifest["processes"]}
    rows = []
    for p in manifest["processes"]:
        if pids and p["pid"] not in pids:
            continue
        for r in manifest["files"].get(str(p["pid"]), []) + manifest["mmap"].get(str(p["pid"]), []):
            rows.append({"PID": p["pid"], "COMM": comm[p["pid"]], "FD": r["FD"], "TYPE": r["TYPE"],
                         "FLAGS": r["FLAGS"], "OFFSET": r["OFFSET"], "VTYPE": r["VTYPE"], "Path": r["Path"],
                         "DETAILS": r["DETAILS"]})
    return rows


@pytest.mark.parametrize("arch,release,fmt", arch_cases())
def test_api_getfiles_with_mmap(arch_images, arch, release, fmt):
    """Every format of every architecture and release: descriptors, new types and mmap rows."""
    from kvm_vol.kvm import files
    from kvm_vol.kvm.kvm import KVM

    paths, manifest = arch_images(arch, release)
    kvm = KVM.open(paths[fmt])
    for proc in manifest["processes"]:
        got = [(f.fd, f.type, files.flag_string(f.flags), f.offset, f.vtype, f.path,
                f.details if f.type != "PIPE" else None) for f in kvm.getfiles(proc["offset"], mmapped=True)]
        want = [(r["FD"], r["TYPE"], r["FLAGS"], r["OFFSET"], r["VTYPE"], r["Path"],
                 r["DETAILS"] if r["TYPE"] != "PIPE" else None)
                for r in manifest["files"].get(str(proc["pid"]), []) + manifest["mmap"].get(str(proc["pid"]), [])]
        assert got == want, f"pid {proc['pid']}"


@pytest.mark.parametrize("release,fmt", [("15", "vmcore"), ("14", "full")])
def test_vol_files_mmap(forged_images, release, fmt):
    paths, manifest = forged_images[release]
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.files", "--mmap", "--pid", "810", "1020"))
    assert rows == expected_with_mmap(manifest, {810, 1020})
    mm = [r for r in rows if r["FD"] == "mmap"]
    # Anonymous memory is not a file; the text and the libraries are.
    assert all(r["Path"] and r["TYPE"] == "VNODE" for r in mm)
    assert not any("0x40000000" in r["DETAILS"] or "0x28a00000" in r["DETAILS"] for r in mm)
    # Private writable mappings are copy-on-write: no w flag; the shared one has it.
    libhide = [r for r in mm if r["Path"] == "/tmp/.x/libhide.so"]
    assert [r["FLAGS"][:2] for r in libhide] == ["r-", "r-"] and libhide[1]["OFFSET"] == 0x2000
    assert libhide[1]["DETAILS"].endswith("rw- cow")
    shared = next(r for r in mm if r["Path"] == "/var/db/.cache/keys.txt")
    assert shared["FLAGS"][:2] == "rw" and not shared["DETAILS"].endswith("cow")


@pytest.mark.parametrize("release,fmt", [("14", "vmcore"), ("15", "raw")])
def test_vol_files_new_types(forged_images, release, fmt):
    """Without --mmap the plugin's output is the manifest's files, new types included."""
    paths, manifest = forged_images[release]
    pids = {712, 742, 810, 903, 1020}
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.files", "--pid", *map(str, sorted(pids))))
    assert rows == expected_rows(manifest, pids)
    by_fd = {(r["PID"], r["FD"]): r for r in rows}
    assert by_fd[(810, "3")]["TYPE"] == "SHM" and by_fd[(810, "3")]["Path"] == "/PostgreSQL.1804289383"
    assert by_fd[(810, "4")]["Path"] is None and by_fd[(810, "4")]["DETAILS"].startswith("shm anonymous")
    assert by_fd[(1020, "11")]["TYPE"] == "SEM" and by_fd[(1020, "11")]["Path"] == "/x11-lock"
    assert by_fd[(903, "5")]["TYPE"] == "PTS" and by_fd[(903, "5")]["DETAILS"] == "dev pts/0"
    assert by_fd[(742, "6")]["DETAILS"].endswith("qlen 3 incqlen 1 qlimit 511")
    assert by_fd[(903, "3")]["DETAILS"].endswith("recvq 0 sendq 52")
    # ktrace's vnode comes first, read through p_ktrioparms (14.x and 15.0 have no p_tracevp).
    first = next(r for r in rows if r["PID"] == 1020)
    assert (first["FD"], first["Path"], first["FLAGS"]) == ("trace", "/root/ktrace.out", "rw------")
    assert not any(r["FD"] == "mmap" for r in rows)


def test_vol_files_text_renderer(forged_images):
    paths, _manifest = forged_images["15"]
    proc = run_vol("-q", "-f", paths["vmcore"], "freebsd.files", "--mmap", "--pid", "810")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "/PostgreSQL.1804289383" in proc.stdout and "mmap" in proc.stdout


def test_manifest_has_every_new_kind(forged_images):
    _paths, manifest = forged_images["14"]
    rows = [r for rs in manifest["files"].values() for r in rs]
    assert {r["TYPE"] for r in rows} >= {"SHM", "SEM", "PTS"}
    assert any(r["FD"] == "trace" for r in rows)
    assert any("qlimit" in r["DETAILS"] for r in rows) and any("sendq" in r["DETAILS"] for r in rows)
    assert set(manifest["mmap"]) == {"810", "1020"}


def test_damaged_extras_degrade(forged_images, tmp_path, caplog):
    """A vm_map whose last entry loops back, a semaphore and a pty pointing at unmapped memory."""
    import logging

    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.kvm.kvm import KVM

    _paths, manifest = forged_images["15"]
    forged = build.build(pack_for_release("15"))
    m, L = forged.machine, forged.machine.layout
    procs = {p["pid"]: p["offset"] for p in manifest["processes"]}
    ptr = m.read_ptr

    def fd_file(pid, fd):
        table = ptr(ptr(procs[pid] + L.offsetof("proc", "p_fd")) + L.offsetof("filedesc", "fd_files"))
        slot = table + L.offsetof("fdescenttbl", "fdt_ofiles") + fd * L.sizeof("filedescent")
        return ptr(slot + L.offsetof("filedescent", "fde_file"))

    wild = 0xFFFFFE00DEAD0000
    m.set_fields(fd_file(1020, 11), "file", {"f_data": wild})  # the semaphore
    m.set_fields(fd_file(903, 5), "file", {"f_data": wild})  # the pty master
    vm_map = ptr(procs[1020] + L.offsetof("proc", "p_vmspace")) + L.offsetof("vmspace", "vm_map")
    first = ptr(vm_map + L.offsetof("vm_map", "header.right"))
    last = ptr(vm_map + L.offsetof("vm_map", "header.left"))
    m.set_fields(last, "vm_map_entry", {"right": first})  # the successor of the last is the first again

    path = forged.write(str(tmp_path), stem="bad", formats=("vmcore",))["vmcore"]
    kvm = KVM.open(path)
    with caplog.at_level(logging.WARNING):
        daemon = {f.fd: f for f in kvm.getfiles(procs[1020], mmapped=True)}
        mapped = [f for f in kvm.getfiles(procs[1020], mmapped=True) if f.fd == "mmap"]
        sshd = {f.fd: f for f in kvm.getfiles(procs[903])}
    assert daemon["11"].type == "SEM" and daemon["11"].details.startswith("ksem unreadable")
    assert sshd["5"].type == "PTS" and sshd["5"].details.startswith("tty unreadable")
    # Every mapping once, then the loop is noticed and reported.
    assert [f.path for f in mapped] == [r["Path"] for r in manifest["mmap"]["1020"]]
    assert "vm_map walk stopped" in caplog.text
