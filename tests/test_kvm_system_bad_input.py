"""Smeared or hostile kernel memory: the system and file readers degrade, never crash or hang.

The demo machine (14.x layouts, identical to the session's forged image, so
the installed ISF fits) is corrupted before it is written as a raw image:
a swap list that loops, a descriptor table claiming 2^31 slots, another one
pointing at unmapped memory, a name-cache loop, a message buffer header with
a bad magic, and a load average with fscale 0.
"""

import json


def test_corrupted_structures_are_reported_not_fatal(forged_images, tmp_path, caplog):
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.kvm.kvm import KVM

    _paths, manifest = forged_images["14"]
    forged = build.build(pack_for_release("14"))
    assert json.dumps(forged.manifest, sort_keys=True) == json.dumps(manifest, sort_keys=True)
    m, L = forged.machine, forged.machine.layout
    u64 = lambda va, value: m.write_kva(va, value.to_bytes(8, "little"))  # noqa: E731
    rd = lambda va: int.from_bytes(m.read_kva(va, 8), "little")  # noqa: E731
    procs = {p["pid"]: p["offset"] for p in manifest["processes"]}

    # swtailq: the second device's sw_list.tqe_next points back at the first.
    first, second = (d["offset"] for d in manifest["swap"]["devices"])
    u64(second + L.offsetof("swdevt", "sw_list"), first)
    # pid 1020: fdt_nfiles = 2^31 - 1; pid 1014: fd_files into unmapped KVA.
    table = rd(rd(procs[1020] + L.offsetof("proc", "p_fd")) + L.offsetof("filedesc", "fd_files"))
    m.write_kva(table, (0x7FFFFFFF).to_bytes(4, "little"))
    u64(rd(procs[1014] + L.offsetof("proc", "p_fd")) + L.offsetof("filedesc", "fd_files"), 0xFFFFFE00DEAD0000)
    # A name-cache loop: the entry naming /home/alice says its parent is /home/alice itself.
    cwd = rd(rd(rd(procs[904] + L.offsetof("proc", "p_pd")) + L.offsetof("pwddesc", "pd_pwd"))
             + L.offsetof("pwd", "pwd_cdir"))
    ncp = rd(cwd + L.offsetof("vnode", "v_cache_dst"))
    u64(ncp + L.offsetof("namecache", "nc_dvp"), cwd)
    # msgbuf magic and averunnable.fscale.
    hdr = rd(m.symbols["msgbufp"])
    m.write_kva(hdr + L.offsetof("msgbuf", "msg_magic"), b"\0\0\0\0")
    m.write_kva(m.symbols["averunnable"] + L.offsetof("loadavg", "fscale"), bytes(8))

    path = forged.write(str(tmp_path), stem="bad", formats=("raw",))["raw"]
    kvm = KVM.open(path)
    assert kvm.getloadavg() is None and "averunnable" in kvm.geterr()
    assert kvm.getcptime() == manifest["cp_time"]  # untouched parts still work
    rows = kvm.getswapinfo()
    assert [r.devname for r in rows] == ["/dev/ada0p3", "/dev/md99", ""]  # the loop is cut
    assert kvm.getmsgbuf() is None  # a raw image has no msgbuf section to fall back on
    fds_1020 = [f.fd for f in kvm.getfiles(procs[1020])]
    assert fds_1020 == ["trace", "text", "cwd", "root"]  # pseudo entries only; the table was refused
    fds_1014 = [f.fd for f in kvm.getfiles(procs[1014])]
    assert fds_1014[:2] == ["text", "ctty"] and not any(fd.isdigit() for fd in fds_1014)
    sh = {f.fd: f for f in kvm.getfiles(procs[904])}
    assert sh["cwd"].path is None and sh["cwd"].details == "path not in name cache"
    assert sh["root"].path == "/"
    messages = caplog.text
    assert "swtailq: cycle" in messages and "fdt_nfiles is 2147483647" in messages
