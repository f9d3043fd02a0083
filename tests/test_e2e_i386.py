"""End to end on FreeBSD/i386: the non-PAE pmap, the stacker's choice of layer, its validation.

The harness's i386 machines (``E2E_ARCHES`` in conftest) run PAE, as
``pmap_cold()`` chooses on every CPU with PAE; here the same plugins run on
non-PAE machines (``vm.pmap.pae_mode=0``) of both releases in every i386
format and are compared with the manifest by the very expectations of the
shared e2e tests.  The non-PAE kernels carry their own banner (kernel config
``GENERIC-NOPAE``) so that their ISF never stands in for the PAE one.
"""

import re
import struct

import pytest

from conftest import RELEASES, is_minidump, run_vol, run_vol_json
from kvm_vol.core import i386 as I
from kvm_vol.forge import build
from kvm_vol.forge.demo import pack_for_release
from kvm_vol.forge.machine_i386 import MachineI386
from test_e2e_files import expected_rows as expected_files
from test_e2e_procs import expected_psargs
from test_e2e_pslist import expected_rows as expected_pslist
from test_e2e_system import expected_dmesg

_NOPAE = {}


def nopae_images(session_dir, release):
    """The non-PAE i386 machine of ``release`` in every format, its ISF installed; (paths, manifest)."""
    if release not in _NOPAE:
        from kvm_vol.paths import user_symbols_dir

        pack = pack_for_release(release, "i386")
        banner = build.banner_for(pack.split("-")[1], "i386", ident="GENERIC-NOPAE")
        assert banner != build.banner_for(pack.split("-")[1], "i386")
        forged = build.build(pack, pae=False, banner=banner)
        assert isinstance(forged.machine, MachineI386) and forged.machine.mode is I.NOPAE
        paths = forged.write(str(session_dir / f"images-i386-nopae-{release}"), stem="forge",
                             formats=forged.machine.FORMATS)
        isf_dir = user_symbols_dir() / "freebsd"
        isf_dir.mkdir(parents=True, exist_ok=True)
        forged.write_isf(str(isf_dir / f"forge-{pack}-nopae.json.xz"))
        _NOPAE[release] = (paths, forged.manifest)
    return _NOPAE[release]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "__children"} for r in rows]


CASES = [pytest.param(release, fmt, id=f"nopae-{release}-{fmt}") for release in RELEASES
         for fmt in MachineI386.FORMATS]


@pytest.mark.parametrize("release,fmt", CASES)
def test_nopae_pslist(session_dir, release, fmt):
    paths, manifest = nopae_images(session_dir, release)
    assert manifest["arch"] == "i386" and manifest["pae"] is False
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.pslist")) == expected_pslist(manifest)


@pytest.mark.parametrize("release,fmt", [("14", "vmcore"), ("15", "full"), ("15", "raw"), ("14", "kdh-full")])
def test_nopae_system_plugins(session_dir, release, fmt):
    paths, manifest = nopae_images(session_dir, release)
    (row,) = strip(run_vol_json("-f", paths[fmt], "freebsd.loadavg"))
    assert [row["Raw 1 min"], row["Raw 5 min"], row["Raw 15 min"]] == manifest["loadavg"]["ldavg"]
    assert [row[f"CP_{s}"] for s in ("USER", "NICE", "SYS", "INTR", "IDLE")] == manifest["cp_time"]
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.dmesg")) == expected_dmesg(manifest)
    assert strip(run_vol_json("-f", paths[fmt], "freebsd.files")) == expected_files(manifest)
    swap = strip(run_vol_json("-f", paths[fmt], "freebsd.swap"))
    assert [r["Device"] for r in swap] == [d["device"] for d in manifest["swap"]["devices"]] + ["Total"]
    # 32-bit kernel addresses are shown as they are (no 48-bit sign extension)
    assert [r["OFFSET (V)"] for r in swap[:-1]] == [d["offset"] for d in manifest["swap"]["devices"]]


@pytest.mark.parametrize("release,fmt", [("15", "vmcore"), ("15", "full"), ("14", "raw")])
def test_nopae_psargs_psenv(session_dir, release, fmt):
    """User memory through each process's own page directory (``vtophys(pm_pdir_nopae)``)."""
    paths, manifest = nopae_images(session_dir, release)
    rows = strip(run_vol_json("-f", paths[fmt], "freebsd.psargs"))
    assert rows == expected_psargs(manifest, fmt)
    assert any(r["SOURCE"] == "ps_strings" for r in rows) == (not is_minidump(fmt))
    env = [(r["PID"], r["KEY"], r["VALUE"]) for r in strip(run_vol_json("-f", paths[fmt], "freebsd.psenv"))]
    if is_minidump(fmt):  # user stacks are not in a minidump: one empty row per process
        assert env == [(p["pid"], None, None) for p in manifest["processes"]]
        return
    expected = []
    for p in manifest["processes"]:
        if p["env"] is None or p["p_state"] == "PRS_ZOMBIE":
            expected.append((p["pid"], None, None))
            continue
        expected += [(p["pid"],) + tuple(entry.partition("=")[::2]) for entry in p["env"]]
    assert env == expected and any(key for _pid, key, _value in env)


@pytest.mark.parametrize("pae,fmt,layer", [
    (False, "vmcore", "FreebsdMinidumpIntel"), (False, "raw", "FreebsdIntel"),
    (True, "kdh-vmcore", "FreebsdMinidumpIntelPAE"), (True, "full", "FreebsdIntelPAE"),
])
def test_stacker_picks_the_pmap_of_pae_mode(session_dir, arch_images, pae, fmt, layer):
    """pae_mode decides (not libkvm's "IdlePDPT exists"): both modes' kernels have IdlePDPT."""
    paths = arch_images("i386", "14")[0] if pae else nopae_images(session_dir, "14")[0]
    proc = run_vol("-vvv", "-f", paths[fmt], "freebsd.loadavg")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"page-table root at (0x[0-9a-f]+) \((\w+)\)", proc.stderr)
    assert found and found.group(2) == layer


# -- the full-dump validation, in process ----------------------------------------------------


class _PhysLayer:
    """The bits of a Volatility physical layer :func:`kernel_i386.validate` uses, over a PhysMem."""

    def __init__(self, mem):
        self.mem = mem

    def read(self, pa, n, pad=False):
        from volatility3.framework import exceptions

        if not self.mem.in_ram(pa):
            raise exceptions.InvalidAddressException("phys", pa, "not RAM")
        return self.mem.read(pa, n)


@pytest.mark.parametrize("pae", [False, True], ids=["nopae", "pae"])
def test_validation_of_the_page_table_root(pae):
    from kvm_vol.layers import kernel_i386

    forged = build.build(pack_for_release("14", "i386"), pae=pae)
    m = forged.machine
    syms = {name: m.symbols[name] for name in ("version",) + I.KERNEL_SYMBOLS if name in m.symbols}
    banner = m.read_kva(syms["version"], 64).split(b"\0")[0]
    layer = _PhysLayer(m.mem)
    pa = syms["version"]  # KERNBASE == KERNLOAD: the banner's PA is its VA
    want = (m.root, kernel_i386.FreebsdIntelPAE if pae else kernel_i386.FreebsdIntel)
    assert kernel_i386.validate(layer, pa, banner, syms) == want
    # a banner hit that is not where the kernel put it (not 2 MiB away) is refused
    assert kernel_i386.validate(layer, pa + 0x1000, banner, syms) is None
    # pae_mode names the other pmap, whose root is NULL in this kernel: refused
    mode_va = syms["pae_mode"]
    m.mem.write(mode_va, struct.pack("<I", 0 if pae else 1))
    assert kernel_i386.validate(layer, pa, banner, syms) is None
    m.mem.write(mode_va, struct.pack("<I", 1 if pae else 0))
    # a page directory whose recursive PDE does not point back at itself is not a page directory
    mode = m.mode
    slot = m.kernel_pt.pdi_address(mode.ptdptdi)
    good = m.mem.read(slot, mode.entry_size)
    m.mem.write(slot, bytes(mode.entry_size))
    assert kernel_i386.validate(layer, pa, banner, syms) is None
    m.mem.write(slot, good)
    assert kernel_i386.validate(layer, pa, banner, syms) == want


@pytest.mark.parametrize("offset,value,text", [
    (24, 3, "version at offset 0x18: wrong minidump version. expected 2 got 3"),
    (44, 2, "paemode at offset 0x2c: paemode 2 is neither 0 (non-PAE) nor 1 (PAE)"),
    # a PAE dump whose header claims non-PAE: its 8-byte PTEs read as 4-byte ones translate nothing
    (44, 0, "but the kernel's addresses do not translate in this image"),
])
def test_damaged_i386_minidump_header(session_dir, arch_images, offset, value, text):
    paths, _manifest = arch_images("i386", "14")
    bad = session_dir / f"i386-bad-{offset}-{value}.vmcore"
    raw = bytearray(open(paths["vmcore"], "rb").read())
    struct.pack_into("<I", raw, offset, value)
    bad.write_bytes(bytes(raw))
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kvm-vol: ") and text in last


def test_no_isf_names_the_i386_kernel(session_dir, arch_images, tmp_path):
    """Without an ISF: one line naming the kernel found and why the image's own symtab is not used."""
    import os
    import subprocess

    from conftest import REPO, vol_command

    paths, _manifest = arch_images("i386", "15")
    env = dict(os.environ, KVM_VOL_SYMBOLS_DIR=str(tmp_path / "none"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(vol_command("-q", "-f", paths["vmcore"], "freebsd.pslist"), capture_output=True,
                          text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "FreeBSD 15.0-RELEASE" in last and "this is an i386 kernel" in last and "kvm-vol isf" in last


def test_fuzzed_i386_containers_never_traceback(session_dir, arch_images, tmp_path):
    """Random damage where i386 differs from amd64 - the header's paemode and ptesize, the PTE array,
    the bitmap, the kernel's PDPT and page directory in a full dump - ends in results or one clean line."""
    import random

    from kvm_vol.forge import fuzzrun
    from kvm_vol.formats import open_dump

    paths, manifest = arch_images("i386", "14")
    fuzzrun.prepare()
    rng = random.Random(386)
    with open_dump(paths["vmcore"]) as md:
        lay = md.layout
        md_regions = [(24, 28), (36, 52), (lay.bitmap, lay.bitmap + md.header.bitmapsize),
                      (lay.pmap, lay.pmap + md.header.pmapsize)]
    with open_dump(paths["full"]) as full:
        root, ptd = manifest["root"], manifest["idleptd"]
        full_regions = [(full.pa_to_offset(root), full.pa_to_offset(root) + 32),
                        (full.pa_to_offset(ptd), full.pa_to_offset(ptd) + 4 * I.PAGE_SIZE)]
    outcomes = []
    for case in range(16):
        fmt, regions = ("vmcore", md_regions) if case % 2 == 0 else ("full", full_regions)
        raw = bytearray(open(paths[fmt], "rb").read())
        for _ in range(rng.choice((1, 4, 32))):
            lo, hi = rng.choice(regions)
            at = max(lo, rng.randrange(lo, hi - 3) & ~3)
            n = min(8, hi - at)
            word = rng.choice((bytes(8), rng.randbytes(8), struct.pack("<Q", rng.randrange(1 << 32))))
            raw[at:at + n] = word[:n]
        path = tmp_path / f"fuzz-{case}.{fmt}"
        path.write_bytes(bytes(raw))
        for plugin in ("freebsd.pslist", "freebsd.psargs"):
            res = fuzzrun.run_one(str(path), plugin, timeout=60)
            outcomes.append(res.outcome)
            assert res.outcome in ("ok", "error"), (case, plugin, res.outcome, res.message)
    assert "ok" in outcomes  # light damage still reads


def test_process_config_errors_are_reasons():
    """A process whose pmap cannot be located gives a reason (ValueError), never a wrong space."""
    from types import SimpleNamespace

    from volatility3.framework import exceptions

    from kvm_vol.layers import kernel_i386

    class Kernel:
        name = "kernel"

        def __init__(self, mode):
            self._mode = mode

        def translate(self, va):
            if va == 0xDEAD000:
                raise exceptions.InvalidAddressException("kernel", va, "pte not valid")
            return va - 0x100000, "memory"

    pae, nopae = Kernel(I.PAE), Kernel(I.NOPAE)
    assert kernel_i386.process_config(pae, SimpleNamespace(pdpt=0x1234560, pdir=0)) == {"page_map_offset": 0x1134560}
    assert kernel_i386.process_config(nopae, SimpleNamespace(pdpt=0, pdir=0x2000000)) == {"page_map_offset": 0x1F00000}
    with pytest.raises(ValueError, match="vm_pmap.pm_pdpt_pae is NULL"):
        kernel_i386.process_config(pae, SimpleNamespace(pdpt=0, pdir=0x2000000))
    with pytest.raises(ValueError, match="the symbol table has no vm_pmap.pm_pdir_nopae"):
        kernel_i386.process_config(nopae, SimpleNamespace(pdpt=None, pdir=None))
    with pytest.raises(ValueError, match="0xdead000 does not translate"):
        kernel_i386.process_config(nopae, SimpleNamespace(pdpt=0, pdir=0xDEAD000))
    with pytest.raises(ValueError, match="not a FreeBSD/i386 kernel layer"):
        kernel_i386.process_config(SimpleNamespace(name="amd64"), SimpleNamespace(pdpt=1, pdir=1))
    assert kernel_i386.process_layer_class(Kernel(I.PAE)) is kernel_i386.FreebsdIntelPAE
