"""The libkvm-style process API (kvm_vol.kvm.kvm.KVM) against the forge manifest.

getprocs() with every op on both releases' layouts and in every container;
getargv()/getenvv() with p_args, the user stack (64- and 32-bit processes,
14+ and pre-14 ps_strings placement) and the exact reasons when data is
absent; the pidhash cross-check; cycles in allproc and in the parent links.
"""

import pytest

from kvm_vol import freebsd as F
from kvm_vol.core import amd64 as A
from kvm_vol.kvm.kvm import KVM

from conftest import arch_cases, arch_release_cases, forge_images, is_minidump

_HANDLES = {}


def handle(forged_images, release, fmt, arch="amd64"):
    key = (arch, release, fmt)
    if key not in _HANDLES:
        paths, _manifest = forge_images(arch, release)
        _HANDLES[key] = KVM.open(paths[fmt])
    return _HANDLES[key]


def by_pid(manifest):
    return {p["pid"]: p for p in manifest["processes"]}


@pytest.mark.parametrize("arch,release,fmt", arch_cases())
def test_getprocs_matches_manifest(arch_images, arch, release, fmt):
    _paths, manifest = arch_images(arch, release)
    check_getprocs(handle(arch_images, release, fmt, arch), manifest)


def check_getprocs(kvm, manifest):
    """getprocs(KERN_PROC_PROC) equals the manifest, field by field and thread by thread."""
    recs = kvm.getprocs(F.KERN_PROC_PROC)
    assert [r.pid for r in recs] == [p["pid"] for p in manifest["processes"]]  # allproc order
    for rec in recs:
        p = by_pid(manifest)[rec.pid]
        got = {
            "offset": rec.offset, "ppid": rec.ppid, "comm": rec.comm, "stat": rec.stat_name, "flags": rec.flags,
            "uid": rec.uid, "ruid": rec.ruid, "svuid": rec.svuid, "gid": rec.gid, "rgid": rec.rgid,
            "svgid": rec.svgid, "groups": rec.groups, "pgid": rec.pgid, "sid": rec.sid, "login": rec.login,
            "tty": rec.tty, "tdev": rec.tdev, "tpgid": rec.tpgid, "start": rec.start, "nice": rec.nice,
            "vsize": rec.vsize, "rssize": rec.rssize, "emul": rec.emul,
        }
        assert got == {k: p[k] for k in got}, rec.pid
        assert rec.tid == p["threads"][0]["tid"]
        assert [(t.tid, t.name, F.KI_STAT_NAMES[t.stat], t.priority, t.wchan, t.wmesg, t.oncpu)
                for t in rec.threads] == \
            [(t["tid"], t["name"], t["stat"], t["priority"], t["wchan"], t["wmesg"], t["oncpu"])
             for t in p["threads"]]
        assert bool(rec.kiflag & F.KI_SLEADER) == p["session_leader"]


def test_manifest_has_job_control_variety(forged_images):
    """The comparisons are only worth something if sessions, ttys, 32-bit and long argv exist."""
    _paths, manifest = forged_images["14"]
    procs = manifest["processes"]
    assert len({p["sid"] for p in procs}) >= 8
    assert {p["tty"] for p in procs} >= {"pts/0", "ttyv0", None}
    assert any(p["emul"] == "FreeBSD ELF32" for p in procs)
    assert any(p["args_source"] == "ps_strings" for p in procs)  # too long for p_args
    assert any(p["p_state"] == "PRS_ZOMBIE" and p["p_args"] for p in procs)
    assert len({p["tpgid"] for p in procs if p["tty"] == "pts/0"}) == 1
    assert any(p["pgid"] != p["tpgid"] for p in procs if p["tty"] == "pts/0")  # background jobs


@pytest.mark.parametrize("arch,release", arch_release_cases())
def test_getprocs_ops(arch_images, arch, release):
    _paths, manifest = arch_images(arch, release)
    kvm = handle(arch_images, release, "vmcore", arch)
    procs = manifest["processes"]

    def pids(op, arg=0):
        return [r.pid for r in kvm.getprocs(op, arg)]

    def expect(pred):
        return [p["pid"] for p in procs if pred(p)]

    assert pids(F.KERN_PROC_PID, 904) == [904]
    assert pids(F.KERN_PROC_PID, 4242) == []
    assert pids(F.KERN_PROC_PGRP, 1012) == expect(lambda p: p["pgid"] == 1012) == [1013, 1012]
    assert pids(F.KERN_PROC_SESSION, 904) == expect(lambda p: p["sid"] == 904)
    assert pids(F.KERN_PROC_TTY, 0x86) == expect(lambda p: p["tty"] == "pts/0")
    assert pids(F.KERN_PROC_TTY, "/dev/ttyv0") == pids(F.KERN_PROC_TTY, "ttyv0") == [790]
    assert pids(F.KERN_PROC_UID, 0) == expect(lambda p: p["uid"] == 0)
    assert pids(F.KERN_PROC_RUID, 1001) == expect(lambda p: p["ruid"] == 1001)
    assert pids(F.KERN_PROC_RGID, 1001) == expect(lambda p: p["rgid"] == 1001)
    assert pids(F.KERN_PROC_GID, 770) == expect(lambda p: p["gid"] == 770) == [810]
    # One record per thread with INC_THREAD, and always for KERN_PROC_ALL (sysctl_kern_proc()).
    threads = [(p["pid"], t["tid"], t["stat"]) for p in procs for t in p["threads"]]
    for op in (F.KERN_PROC_ALL, F.KERN_PROC_PROC | F.KERN_PROC_INC_THREAD):
        assert [(r.pid, r.tid, r.stat_name) for r in kvm.getprocs(op)] == threads
    assert len(kvm.getprocs(F.KERN_PROC_PROC)) == len(procs)
    with pytest.raises(ValueError):
        kvm.getprocs(7)  # KERN_PROC_ARGS is not a getprocs op


def _expected_args(p, fmt):
    if p["args_source"] == "p_args":
        return p["p_args"], "p_args"
    if p["args_source"] == "ps_strings" and not is_minidump(fmt):
        return p["argv"], "ps_strings"
    return None, None


@pytest.mark.parametrize("arch,release,fmt", arch_cases(formats=("vmcore", "full", "raw", "kdh-vmcore")))
def test_getargv_getenvv(arch_images, arch, release, fmt):
    _paths, manifest = arch_images(arch, release)
    check_args(handle(arch_images, release, fmt, arch), manifest, fmt)


def check_args(kvm, manifest, fmt):
    """getargv/getenvv of every process: the manifest's strings and source, or the exact reason."""
    for rec in kvm.getprocs(F.KERN_PROC_PROC):
        p = by_pid(manifest)[rec.pid]
        argv, source = _expected_args(p, fmt)
        result = kvm.args(rec)
        assert (result.values, result.source) == (argv, source), rec.pid
        assert kvm.getargv(rec) == argv
        if argv is None:
            assert kvm.geterr() == result.reason and result.reason
        env = kvm.env(rec)
        if p["env"] is not None and p["p_state"] != "PRS_ZOMBIE" and not is_minidump(fmt):
            assert (env.values, env.source) == (p["env"], "ps_strings"), rec.pid
        else:
            assert env.values is None and env.reason
            if rec.flags & F.P_SYSTEM:
                assert "kernel process (P_SYSTEM)" in env.reason
            elif p["p_state"] == "PRS_ZOMBIE":
                assert "zombie" in env.reason
            else:
                # the exact page: the one holding ps_strings
                page = p["ps_strings"] & ~(manifest["page_size"] - 1)
                assert env.reason.startswith(f"ps_strings: user page {page:#x} of pid {rec.pid} is not in the dump")


def test_args_32bit_process_and_nchr(forged_images):
    _paths, manifest = forged_images["15"]
    kvm = handle(forged_images, "15", "full")
    (p,) = [p for p in manifest["processes"] if p["emul"] == "FreeBSD ELF32"]
    assert p["ps_strings"] < 1 << 32
    assert kvm.getenvv(p["pid"]) == p["env"]  # freebsd32_ps_strings, 4-byte vectors
    postgres = [p for p in manifest["processes"] if p["args_source"] == "ps_strings"][0]
    full = kvm.getargv(postgres["pid"])
    assert full == postgres["argv"]
    # nchr limits the bytes returned, like kvm_getargv(kd, kp, nchr)
    cut = kvm.getargv(postgres["pid"], nchr=30)
    assert "\0".join(cut).encode() == b"\0".join(s.encode() for s in full)[:29]


def _forge_small(release, processes=None):
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release

    return build.build(pack_for_release(release), processes=processes)


def _open_forged(forged, directory, fmt="full"):
    from kvm_vol.paths import user_symbols_dir

    paths = forged.write(str(directory), stem="t", formats=(fmt,))
    isf_dir = user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(isf_dir / f"{directory.name}.json.xz"))
    return KVM.open(paths[fmt])


def _vmspace_field(forged, pid, path):
    m, L = forged.machine, forged.machine.layout
    proc = forged.kernel.procs[pid]
    vm = int.from_bytes(m.read_kva(proc + L.offsetof("proc", "p_vmspace"), 8), "little")
    return vm + L.offsetof("vmspace", path)


def test_pre14_ps_strings_placement(session_dir):
    """Without vm_stacktop (kernels before stack randomisation) ps_strings is at sv_psstrings."""
    from kvm_vol.forge import userland

    forged = _forge_small("14")
    m = forged.machine
    pid = 904
    entry = [p for p in forged.manifest["processes"] if p["pid"] == pid][0]
    top = _vmspace_field(forged, pid, "vm_stacktop")
    cr3 = m.read_kva(_vmspace_field(forged, pid, "vm_pmap.pm_cr3"), 8)
    pml4 = int.from_bytes(cr3, "little")
    size = m.layout.sizeof("ps_strings")
    data = _user_read(m, pml4, entry["ps_strings"], size)
    page = m.alloc_page()  # a copy of ps_strings at sv_psstrings = USRSTACK - sizeof(struct ps_strings)
    m.map_page(userland.USRSTACK - A.PAGE_SIZE, page, root=pml4, user=True)
    m.mem.write(page + A.PAGE_SIZE - size, data)
    m.write_kva(top, bytes(8))  # vm_stacktop = 0
    kvm = _open_forged(forged, session_dir / "pre14")
    result = kvm.env(pid)
    assert (result.values, result.source) == (entry["env"], "ps_strings")


def _user_read(m, pml4, va, length):
    pa, _size = A.walk(m.mem.read_u64, pml4, va)
    return m.mem.read(pa, length)


def test_pidhash_cross_check_finds_unlinked_process(session_dir):
    """A process taken off allproc (DKOM) is still in the pid hash: reported, not lost."""
    forged = _forge_small("15")
    m, L, k = forged.machine, forged.machine.layout, forged.kernel
    order = k._allproc_order  # newest first
    hidden = k.procs[1020]
    i = order.index(hidden)
    link = L.offsetof("proc", "p_list")
    nxt = m.read_kva(hidden + link, 8)
    m.write_kva(order[i - 1] + link, nxt)  # prev->p_list.le_next = hidden->p_list.le_next
    kvm = _open_forged(forged, session_dir / "dkom")
    assert 1020 not in [r.pid for r in kvm.getprocs(F.KERN_PROC_PROC)]
    check = kvm.pidhash_check()
    assert check["only_in_pidhash"] == [(1020, hidden)]
    assert check["only_in_allproc"] == []
    assert check["pidhash"] == check["allproc"] + 1 == len(order)


def test_cycles_in_allproc_and_parents(session_dir):
    """allproc looping back and two processes each other's parent: bounded, each shown once."""
    from volatility3.plugins.freebsd.pstree import PsTree

    forged = _forge_small("14")
    m, L, k = forged.machine, forged.machine.layout, forged.kernel
    link = L.offsetof("proc", "p_list")
    m.write_kva(k.procs[0] + link, k._allproc_order[3].to_bytes(8, "little"))  # last -> 4th
    a, b = k.procs[1012], k.procs[1013]
    for child, parent, ppid in ((a, b, 1013), (b, a, 1012)):
        m.set_fields(child, "proc", {"p_pptr": parent, "p_oppid": ppid})
    kvm = _open_forged(forged, session_dir / "cycles", fmt="vmcore")
    recs = kvm.getprocs(F.KERN_PROC_PROC)
    assert [r.pid for r in recs] == [p["pid"] for p in forged.manifest["processes"]]
    ordered = PsTree.order(recs)
    assert sorted(r.pid for _d, r in ordered) == sorted(r.pid for r in recs)
    assert ordered[0][1].pid == 0 and ordered[0][0] == 0
    depth = {r.pid: d for d, r in ordered}
    assert {depth[1012], depth[1013]} == {0, 1}  # the cycle is cut once, below a root


def test_unreadable_credentials_are_none(session_dir):
    """A p_ucred into nowhere leaves the credential fields None (N/A), the rest intact."""
    forged = _forge_small("14")
    m = forged.machine
    m.set_fields(forged.kernel.procs[640], "proc", {"p_ucred": A.DMAP_MIN_ADDRESS + forged.machine.ram_size + 0x1000})
    kvm = _open_forged(forged, session_dir / "badcred", fmt="vmcore")
    (rec,) = kvm.getprocs(F.KERN_PROC_PID, 640)
    assert (rec.uid, rec.ruid, rec.gid, rec.groups) == (None, None, None, [])
    assert rec.comm == "ntpd" and rec.pgid == 640


def test_proc_record_of_volatility_objects(forged_images):
    """Plugins holding ``struct proc`` objects (procs.iter_procs) get the same records."""
    from kvm_vol.kvm import procs

    kvm = handle(forged_images, "15", "full")
    objects = list(procs.iter_procs(kvm.context, "kernel"))
    records = kvm.getprocs(F.KERN_PROC_PROC)
    assert [procs.proc_record(o) for o in objects] == records
