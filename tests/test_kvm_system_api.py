"""The libkvm-style API (KVM.getloadavg/getcptime/getswapinfo/getfiles/getmsgbuf), in process.

Every container format of both releases' layouts, compared with the forge
manifest.  In process (one automagic stacking per image, no ``vol`` start-up)
this is the cheap place for the format x release matrix; the plugins'
rendering is checked end to end in test_e2e_system.py / test_e2e_files.py.
"""

import pytest

from conftest import arch_cases


@pytest.mark.parametrize("arch,release,fmt", arch_cases())
def test_system_api_matches_manifest(arch_images, arch, release, fmt):
    from kvm_vol.kvm.kvm import KVM

    paths, manifest = arch_images(arch, release)
    check_system_api(KVM.open(paths[fmt]), manifest, arch, fmt)


def check_system_api(kvm, manifest, arch, fmt):
    """getloadavg, getcptime, getswapinfo (with the blist), getmsgbuf and getfiles equal the manifest."""
    from kvm_vol.kvm import files

    assert kvm.getloadavg() == tuple(manifest["loadavg"]["load"])
    assert kvm.getloadavg(1) == tuple(manifest["loadavg"]["load"][:1])
    assert kvm.getloadavg(-1) is None and "invalid nelem" in kvm.geterr()
    assert kvm.getcptime() == manifest["cp_time"]

    rows = kvm.getswapinfo()
    devices, total = rows[:-1], rows[-1]
    from kvm_vol.arch import for_name

    # Volatility object offsets carry the kernel layer's address bits (48 on amd64, 32 on i386, 64 on arm64).
    mask = (1 << for_name(arch).address_bits) - 1
    assert [(r.devname, r.total, r.used, r.nblks, r.offset) for r in devices] == [
        (d["device"], d["total"], d["used"], d["nblks"], d["offset"] & mask)
        for d in manifest["swap"]["devices"]]
    # The blist's nodes come from malloc(9) like the kernel's (kernel_map, below KERNBASE on
    # amd64), which a v1 amd64 minidump does not map: there only sw_used is known.
    blist_in_dump = not (arch == "amd64" and fmt == "minidump-v1")
    assert [r.blist_used for r in devices] == [d["blist_used"] if blist_in_dump else None
                                               for d in manifest["swap"]["devices"]]
    assert total.is_total and total.devname == "" and total.flags == 0
    assert (total.total, total.used) == (manifest["swap"]["total"]["total"], manifest["swap"]["total"]["used"])

    mb = kvm.getmsgbuf()
    assert mb.lines() == manifest["msgbuf"]["lines"] and mb.wseq == manifest["msgbuf"]["wseq"]
    assert mb.source == "msgbufp"

    for proc in manifest["processes"]:
        got = [(f.fd, f.type, files.flag_string(f.flags), f.offset, f.vtype, f.path,
                f.details if f.type != "PIPE" else None) for f in kvm.getfiles(proc["offset"])]
        want = [(r["FD"], r["TYPE"], r["FLAGS"], r["OFFSET"], r["VTYPE"], r["Path"],
                 r["DETAILS"] if r["TYPE"] != "PIPE" else None)
                for r in manifest["files"].get(str(proc["pid"]), [])]
        assert got == want, f"pid {proc['pid']}"
