"""End to end: freebsd.loadavg, freebsd.dmesg and freebsd.swap against the forge manifest.

The ``vol`` command line on a minidump with the 14.x layouts and a full dump
with the 15.0 layouts (every format x release is covered in process by
test_kvm_system_api.py, which reads through the same code).  The forge's
message buffer has wrapped (more than msg_size bytes were written), so the
dmesg comparison checks the unrolling from msg_wseq; ``--section`` reads the
ring from the minidump's own msgbuf section instead of kernel memory.
"""

import pytest

from conftest import arch_cases, run_vol_json
from kvm_vol.arch import for_name

def _cases():
    """Per architecture: 14.x as a minidump, 15.0 as a full dump (a raw image where there is none)."""
    from kvm_vol.forge.arches import formats_for

    picked = []
    for case in arch_cases():
        arch, release, fmt = case.values
        whole = "full" if "full" in formats_for(arch) else "raw"
        if (release, fmt) in (("14", "vmcore"), ("15", whole)):
            picked.append(case)
    return picked


CASES = _cases()


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


@pytest.mark.parametrize("arch,release,fmt", CASES)
def test_loadavg_matches_manifest(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    (row,) = strip(run_vol_json("-f", paths[fmt], "freebsd.loadavg"))
    la = manifest["loadavg"]
    assert [row["Raw 1 min"], row["Raw 5 min"], row["Raw 15 min"]] == la["ldavg"]
    assert row["FSCALE"] == la["fscale"] == 2048
    assert [row["Load 1 min"], row["Load 5 min"], row["Load 15 min"]] == [round(v, 2) for v in la["load"]]
    cp = [row[f"CP_{s}"] for s in ("USER", "NICE", "SYS", "INTR", "IDLE")]
    assert cp == manifest["cp_time"]


def expected_dmesg(manifest):
    rows = []
    for i, line in enumerate(manifest["msgbuf"]["lines"], 1):
        pri = None
        if line.startswith("<") and ">" in line[:5] and line[1:line.index(">")].isdigit():
            pri, line = int(line[1:line.index(">")]), line[line.index(">") + 1:]
        rows.append({"Line": i, "Priority": pri, "Text": line})
    return rows


@pytest.mark.parametrize("arch,release,fmt", CASES)
def test_dmesg_matches_manifest(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    mb = manifest["msgbuf"]
    assert mb["wrapped"] and mb["wseq"] > mb["size"]  # the interesting case: a wrapped ring
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.dmesg"))
    assert rows == expected_dmesg(manifest)
    assert rows[-1]["Text"] == "panic: forge: synthetic dump"
    assert any(r["Priority"] == 6 for r in rows)


@pytest.mark.parametrize("arch,release,fmt", [c for c in arch_cases(formats=("kdh-vmcore", "minidump-v1"))
                                               if (c.values[1], c.values[2]) in (("15", "kdh-vmcore"),
                                                                                 ("14", "minidump-v1"))])
def test_dmesg_section_matches_memory(arch_images, arch, release, fmt):
    """The minidump's own copy of the ring, unrolled with the header's msg_wseq."""
    paths, manifest = arch_images(arch, release)
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.dmesg", "--section")) == expected_dmesg(manifest)


@pytest.mark.parametrize("arch,release,fmt", CASES)
def test_swap_matches_manifest(arch_images, arch, release, fmt):
    paths, manifest = arch_images(arch, release)
    sw = manifest["swap"]
    # Volatility shows object offsets masked to the kernel layer's address bits (48 on amd64;
    # arm64 kernel addresses have bit 47 clear, so its layer keeps all 64)
    offset_mask = (1 << for_name(arch).address_bits) - 1
    kib = manifest["page_size"] // 1024  # swapinfo(8) -k: blocks are pages
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.swap"))
    expected = [
        {"Device": d["device"], "Total": d["total"] * kib, "Used": d["used"] * kib,
         "Avail": (d["total"] - d["used"]) * kib, "Capacity": f"{d['used'] / d['total'] * 100:.0f}%",
         "Flags": {0: "", 4: "CLOSING"}[d["flags"]], "OFFSET (V)": d["offset"] & offset_mask}
        for d in sw["devices"]
    ]
    tot = sw["total"]
    expected.append({"Device": "Total", "Total": tot["total"] * kib, "Used": tot["used"] * kib,
                     "Avail": (tot["total"] - tot["used"]) * kib,
                     "Capacity": f"{tot['used'] / tot['total'] * 100:.0f}%", "Flags": "", "OFFSET (V)": None})
    assert rows == expected
    assert len(sw["devices"]) >= 2 and tot["used"] > 0 and any(d["flags"] for d in sw["devices"])
    assert tot["total"] == sum(d["nblks"] - sw["dmmax"] for d in sw["devices"])
