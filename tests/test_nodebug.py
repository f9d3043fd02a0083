"""Analysing a vmcore without kernel.debug (issue 6).

* forge kernels whose file has only an ELF symbol table (no DWARF), for
  FreeBSD 14.3 and 15.0: ``kvm-vol isf --elf-symbols`` + the type pack chosen
  from the kernel's osreldate, then ``vol`` end to end;
* a deliberately mismatched type pack (14.3 layouts on a 15.0 kernel),
  refused by ``kvm-vol isf`` and, when an ISF carries it anyway, by ``vol``;
* images that hold the loader's copy of the symbol table and no kernel file
  (``vol`` makes the ISF itself), and images without it (one clear line);
* ``kvm_nlist`` semantics: vnet and dpcpu relocation, zpcpu counters.

Each forge kernel gets its own banner, so no ISF installed by other tests
can satisfy it by accident.
"""

import os
import random
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile

from conftest import run_vol, run_vol_json

from kvm_vol.core.amd64 import KERNLOAD, KERNSTART
from kvm_vol.forge import build, kernelfile, netpcpu
from kvm_vol.forge.layout import Layout
from kvm_vol.symbols import isf as isfmod
from kvm_vol.symbols import layoutcheck, memsyms, typepacks

RELEASES = ("14.3", "15.0")
_MASK48 = (1 << 48) - 1


def kvm_vol_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kvm_vol.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def banner(release, tag):
    return f"FreeBSD {release}-RELEASE releng/{release}-n4242-0123456789ab {tag}\n"


def pslist_matches(path, manifest):
    """freebsd.pslist on ``path`` lists exactly the manifest's processes, in allproc order."""
    rows = run_vol_json("-f", path, "freebsd.pslist")
    got = [(r["OFFSET (V)"], r["PID"], r["PPID"], r["COMM"], r["STATE"]) for r in rows]
    expected = [(p["offset"] & _MASK48, p["pid"], p["ppid"], p["comm"], p["stat"]) for p in manifest["processes"]]
    assert len(expected) > 30
    return got == expected


def one_error_line(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("kvm-vol:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def nodebug(session_dir):
    """Per release: a forge machine, its symbol-only kernel file and images (no ISF installed)."""
    out = {}
    for release in RELEASES:
        forged = build.build(f"freebsd-{release}-amd64", banner=banner(release, "NODEBUG"))
        directory = session_dir / f"nodebug-{release}"
        kernel = kernelfile.write_kernel_file(forged, str(directory / "kernel"))
        paths = forged.write(str(directory), stem="nodebug", formats=("vmcore", "raw", "full"))
        out[release] = (kernel, paths, forged)
    return out


# ---------------------------------------------------------------------------
# the kernel file


@pytest.mark.parametrize("release", RELEASES)
def test_kernel_file_is_a_stripped_kernel(nodebug, release):
    kernel, _paths, forged = nodebug[release]
    with open(kernel, "rb") as fh:
        elf = ELFFile(fh)
        assert elf["e_ident"]["EI_OSABI"] == "ELFOSABI_FREEBSD"
        assert (elf["e_type"], elf["e_machine"]) == ("ET_EXEC", "EM_X86_64")
        names = [s.name for s in elf.iter_sections()]
        assert {".symtab", ".strtab", ".shstrtab"} <= set(names)
        assert not [n for n in names if n.startswith(".debug")], names
        assert not elf.has_dwarf_info()
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert [(s["p_vaddr"], s["p_paddr"]) for s in loads] == [(KERNSTART, KERNLOAD)]
    from kvm_vol.symbols import elfsyms

    assert elfsyms.read_version(kernel) == forged.kernel.banner.encode()
    raw = elfsyms.read_symbol_bytes(kernel, "osreldate")
    assert int.from_bytes(raw[:4], "little") == forged.kernel.osreldate
    assert elfsyms.read_symbols(kernel)["allproc"] == forged.machine.symbols["allproc"]


# ---------------------------------------------------------------------------
# kernel + type pack, end to end


@pytest.mark.parametrize("release", RELEASES)
def test_isf_from_kernel_file_and_type_pack(nodebug, release):
    kernel, paths, forged = nodebug[release]
    proc = kvm_vol_cli("isf", "--elf-symbols", kernel)
    assert proc.returncode == 0, proc.stderr
    isf_path, printed_banner, types_line = proc.stdout.splitlines()
    assert printed_banner == forged.kernel.banner.rstrip("\n")
    assert types_line.startswith(f"types: freebsd-{release}-amd64 ")
    made = isfmod.load_isf(isf_path)
    prov = made["metadata"]["producer"]["kvm_vol"]
    assert prov["type_pack"] == f"freebsd-{release}-amd64"
    assert prov["layout_checked"] == len(layoutcheck.SYMBOLS)  # every self-describing symbol agreed
    assert prov["symbols_source"]["kind"] == "kernel-file"
    assert isfmod.banner_of(made) == forged.kernel.banner.encode()
    assert made["symbols"]["allproc"]["address"] == forged.machine.symbols["allproc"]
    for fmt in ("vmcore", "raw", "full"):
        assert pslist_matches(paths[fmt], forged.manifest), fmt


def test_types_named_explicitly(nodebug, tmp_path):
    kernel, _paths, _forged = nodebug["14.3"]
    out = tmp_path / "explicit.json.xz"
    proc = kvm_vol_cli("isf", "--elf-symbols", kernel, "--types", "freebsd-14.3-amd64", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert isfmod.load_isf(out)["metadata"]["producer"]["kvm_vol"]["type_pack"] == "freebsd-14.3-amd64"
    proc = kvm_vol_cli("isf", "--elf-symbols", kernel, "--types", "freebsd-14.3-arm64", "-o", str(out))
    assert proc.returncode == 2 and "is for arm64, but the kernel is amd64" in proc.stderr


def _td_name_offsets():
    old = Layout(typepacks.load("freebsd-14.3-amd64")).offsetof("thread", "td_name")
    new = Layout(typepacks.load("freebsd-15.0-amd64")).offsetof("thread", "td_name")
    assert old != new  # the premise of the mismatch tests
    return old, new


def test_mismatched_pack_refused_by_isf_command(nodebug, tmp_path):
    kernel, _paths, _forged = nodebug["15.0"]
    out = tmp_path / "bad.json.xz"
    proc = kvm_vol_cli("isf", "--elf-symbols", kernel, "--types", "freebsd-14.3-amd64", "-o", str(out))
    old, new = _td_name_offsets()
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "freebsd-14.3-amd64" in line
    assert f"thread.td_name is {old:#x} in the types but the kernel's thread_off_td_name says {new:#x}" in line
    assert not out.exists()


def test_mismatched_isf_refused_by_vol(session_dir):
    """An ISF whose types disagree with the dump (here: 14.3 types, 15.0 kernel) stops vol with one line."""
    from kvm_vol.paths import user_symbols_dir

    forged = build.build("freebsd-15.0-amd64", banner=banner("15.0", "MISMATCH"))
    m = forged.machine
    symbol_types = {name: {"type": desc} for name, desc in m.symbol_types.items()}
    wrong = isfmod.make_kernel_isf(typepacks.load("freebsd-14.3-amd64"), m.symbols,
                                   forged.kernel.banner.encode(), symbol_types)
    isfmod.write_isf(wrong, user_symbols_dir() / "freebsd" / "mismatch-14-on-15.json.xz")
    paths = forged.write(str(session_dir / "mismatch"), stem="mismatch", formats=("vmcore", "raw"))
    old, new = _td_name_offsets()
    for fmt in ("vmcore", "raw"):
        proc = run_vol("-q", "-f", paths[fmt], "freebsd.pslist")
        one_error_line(proc, "MISMATCH", "thread.td_name", f"{old:#x}", f"{new:#x}", "thread_off_td_name")


# ---------------------------------------------------------------------------
# image only: the loader's symbol table in memory


@pytest.mark.parametrize("release", RELEASES)
def test_image_only_vol_makes_the_isf(session_dir, release):
    from kvm_vol.paths import user_symbols_dir

    forged = build.build(f"freebsd-{release}-amd64", banner=banner(release, "IMAGEONLY"))
    ssym, esym = kernelfile.place_loader_symtab(forged)
    assert ssym % 8 == 0 and esym > ssym
    paths = forged.write(str(session_dir / f"imageonly-{release}"), stem="img", formats=("vmcore", "full", "raw"))
    before = set(os.listdir(user_symbols_dir() / "freebsd")) if (user_symbols_dir() / "freebsd").is_dir() else set()
    assert pslist_matches(paths["vmcore"], forged.manifest)
    made = set(os.listdir(user_symbols_dir() / "freebsd")) - before
    assert len(made) == 1
    isf = isfmod.load_isf(user_symbols_dir() / "freebsd" / made.pop())
    prov = isf["metadata"]["producer"]["kvm_vol"]
    assert prov["symbols_source"]["kind"] == "kernel-memory" and prov["symbols_source"]["ssym"] == ssym
    assert prov["type_pack"] == f"freebsd-{release}-amd64"
    for fmt in ("full", "raw"):  # the ISF is installed now; other containers use it directly
        assert pslist_matches(paths[fmt], forged.manifest), fmt


@pytest.mark.parametrize("fmt", ["vmcore", "full", "raw"])
def test_isf_command_reads_image(session_dir, tmp_path, fmt):
    forged = build.build("freebsd-15.0-amd64", banner=banner("15.0", "ISFIMAGE"))
    ssym, _esym = kernelfile.place_loader_symtab(forged)
    paths = forged.write(str(tmp_path), stem="img", formats=(fmt,))
    out = tmp_path / "from-image.json.xz"
    proc = kvm_vol_cli("isf", "--image", paths[fmt], "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    isf = isfmod.load_isf(out)
    assert isfmod.banner_of(isf) == forged.kernel.banner.encode()
    assert {k: isf["symbols"][k]["address"] for k in ("allproc", "proc0", "version")} == \
        {k: forged.machine.symbols[k] for k in ("allproc", "proc0", "version")}
    assert isf["metadata"]["producer"]["kvm_vol"]["symbols_source"]["ssym"] == ssym


def test_mismatched_pack_refused_for_image(tmp_path):
    forged = build.build("freebsd-15.0-amd64", banner=banner("15.0", "IMAGEMISMATCH"))
    kernelfile.place_loader_symtab(forged)
    paths = forged.write(str(tmp_path), stem="img", formats=("raw",))
    out = tmp_path / "bad.json.xz"
    proc = kvm_vol_cli("isf", "--image", paths["raw"], "--types", "freebsd-14.3-amd64", "-o", str(out))
    old, new = _td_name_offsets()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"thread.td_name is {old:#x} in the types but the kernel's thread_off_td_name says {new:#x}" in proc.stderr
    assert not out.exists()


def test_image_without_symbol_table(session_dir):
    forged = build.build("freebsd-14.3-amd64", banner=banner("14.3", "NOSYMTAB"))
    paths = forged.write(str(session_dir / "nosymtab"), stem="img", formats=("vmcore",))
    proc = run_vol("-q", "-f", paths["vmcore"], "freebsd.pslist")
    one_error_line(proc, "NOSYMTAB", "nor its symbol table", "kvm-vol isf --elf-symbols /boot/kernel/kernel")
    proc = kvm_vol_cli("isf", "--image", paths["vmcore"], "-o", str(session_dir / "nosymtab" / "x.json"))
    assert proc.returncode == 2 and proc.stderr.startswith("kvm-vol: error: ") and "Traceback" not in proc.stderr


def test_isf_command_needs_a_source():
    proc = kvm_vol_cli("isf")
    assert proc.returncode == 2 and "--elf-symbols KERNEL or --image DUMP" in proc.stderr


# ---------------------------------------------------------------------------
# the in-memory table parser on bad input


def _reader(blob_va, blob):
    def read_kva(va, length):
        if blob_va <= va and va + length <= blob_va + len(blob):
            return blob[va - blob_va:va - blob_va + length]
        return None

    return read_kva


def test_loader_symtab_parser_round_trip_and_garbage():
    forged = build.build("freebsd-14.3-amd64", banner=banner("14.3", "PARSER"))
    ssym, esym = kernelfile.place_loader_symtab(forged)
    image = forged.machine.read_kva(KERNSTART, esym - KERNSTART)
    table = memsyms.find_loader_symtab(_reader(KERNSTART, image), KERNSTART)
    assert (table.ssym, table.esym) == (ssym, esym)
    assert table.symbols == forged.machine.symbols
    rng = random.Random(6)
    for trial in range(200):
        bad = bytearray(image)
        start = ssym - KERNSTART
        for _ in range(rng.randint(1, 8)):
            bad[start + rng.randrange(esym - ssym)] = rng.randrange(256)
        if trial % 4 == 0:  # sizes that point past the end
            bad[start:start + 8] = rng.randrange(1 << 64).to_bytes(8, "little")
        try:
            found = memsyms.find_loader_symtab(_reader(KERNSTART, bytes(bad)), KERNSTART)
        except memsyms.NoSymtab:
            continue
        assert isinstance(found.symbols, dict)
    with pytest.raises(memsyms.NoSymtab):
        memsyms.find_loader_symtab(_reader(KERNSTART, image[:ssym - KERNSTART]), KERNSTART)


def test_layoutcheck_against_packs():
    for release in RELEASES:
        pack = typepacks.load(f"freebsd-{release}-amd64")
        expected = layoutcheck.expectations(pack)
        layout = Layout(pack)
        assert expected["proc_off_p_comm"] == layout.offsetof("proc", "p_comm")
        assert expected["pcb_size"] == layout.sizeof("pcb")
        assert layoutcheck.compare(expected, expected.get) == []
    e14 = layoutcheck.expectations(typepacks.load("freebsd-14.3-amd64"))
    e15 = layoutcheck.expectations(typepacks.load("freebsd-15.0-amd64"))
    problems = layoutcheck.compare(e14, e15.get)
    assert {p.symbol for p in problems} == {s for s in e14 if e14[s] != e15[s]}
    assert all(p.expected == e14[p.symbol] and p.found == e15[p.symbol] for p in problems)
    # symbols the kernel lacks are not checked
    assert layoutcheck.compare(e14, lambda name: None) == []


# ---------------------------------------------------------------------------
# kvm_nlist: vnet and dpcpu relocation, zpcpu counters


@pytest.fixture(scope="module")
def nlist_machine(session_dir):
    from kvm_vol.paths import user_symbols_dir

    forged = build.build("freebsd-15.0-amd64", banner=banner("15.0", "NLIST"))
    truth = netpcpu.add_vnet_and_dpcpu(forged)
    forged.write_isf(str(user_symbols_dir() / "freebsd" / "nlist-15.json.xz"))
    paths = forged.write(str(session_dir / "nlist"), stem="nlist", formats=("vmcore", "raw"))
    return paths, forged, truth


def _rows(paths, fmt, *args):
    return {r["NAME"]: r for r in run_vol_json("-f", paths[fmt], "freebsd.nlist", *args)}


@pytest.mark.parametrize("fmt", ["vmcore", "raw"])
def test_nlist_relocates_vnet_and_dpcpu(nlist_machine, fmt):
    paths, forged, truth = nlist_machine
    syms = forged.machine.symbols
    u64 = (1 << 64) - 1
    rows = _rows(paths, fmt, "--symbol", "_allproc", "ipforwarding", "_pcputicks", "ipstat", "nosuch",
                 "vnet_entry_ipforwarding", "--counter")
    assert rows["_allproc"]["SYMBOL"] == "allproc" and rows["_allproc"]["RELOCATION"] == "-"
    assert rows["_allproc"]["VALUE"] & _MASK48 == syms["allproc"] & _MASK48
    vnet = truth["vnet"]
    assert rows["ipforwarding"]["SYMBOL"] == "vnet_entry_ipforwarding" and rows["ipforwarding"]["RELOCATION"] == "vnet"
    assert rows["ipforwarding"]["VALUE"] & _MASK48 == (vnet["data_base"] + syms["vnet_entry_ipforwarding"]) & u64 & _MASK48
    # a vnet_entry_ name found directly is not relocated (kvm_fdnlist returns it as it is)
    assert rows["vnet_entry_ipforwarding"]["VALUE"] & _MASK48 == syms["vnet_entry_ipforwarding"] & _MASK48
    dp = truth["dpcpu"]
    assert rows["_pcputicks"]["SYMBOL"] == "pcpu_entry_pcputicks" and rows["_pcputicks"]["RELOCATION"] == "dpcpu"
    assert rows["_pcputicks"]["VALUE"] & _MASK48 == (dp["dpcpu_off"][0] + syms["pcpu_entry_pcputicks"]) & u64 & _MASK48
    assert rows["ipstat"]["COUNTER"] == vnet["ipstat"][0]  # counter_u64_fetch of ipstat[0] (ips_total)
    assert rows["nosuch"]["SYMBOL"] is None and rows["nosuch"]["VALUE"] is None


def test_nlist_dpcpu_cpu_selection(nlist_machine):
    paths, forged, truth = nlist_machine
    start = forged.machine.symbols["pcpu_entry_pcputicks"]
    rows = _rows(paths, "vmcore", "--symbol", "pcputicks", "--cpu", "1")
    assert rows["pcputicks"]["VALUE"] & _MASK48 == (truth["dpcpu"]["dpcpu_off"][1] + start) & _MASK48
    # CPU 5 does not exist (dpcpu_off[5] == 0): kvm_dpcpu_setcpu refuses it, nothing is made up
    rows = _rows(paths, "vmcore", "--symbol", "pcputicks", "--cpu", "5")
    assert rows["pcputicks"]["VALUE"] is None and rows["pcputicks"]["RELOCATION"] == "dpcpu"


def test_nlist_reads_relocated_values(nlist_machine):
    """The relocated addresses hold what the forge wrote there (vnet0's and each CPU's copies)."""
    paths, forged, truth = nlist_machine
    m = forged.machine
    rows = _rows(paths, "raw", "--symbol", "ipforwarding", "pcputicks")
    value = int.from_bytes(m.read_kva(rows["ipforwarding"]["VALUE"] | ~_MASK48 & ((1 << 64) - 1), 4), "little")
    assert value == truth["vnet"]["ipforwarding"]
    ticks = int.from_bytes(m.read_kva(rows["pcputicks"]["VALUE"] | ~_MASK48 & ((1 << 64) - 1), 4), "little")
    assert ticks == truth["dpcpu"]["pcputicks"][0]


def test_kvm_api_nlist_zpcpu_counter(nlist_machine):
    """KVM.nlist / read_zpcpu / counter_u64_fetch in Python, on the same dump."""
    from kvm_vol.kvm.kvm import KVM

    paths, forged, truth = nlist_machine
    kvm = KVM.open(paths["vmcore"])
    ipstat, ticks, missing = kvm.nlist(["_ipstat", "pcputicks", "no_such_symbol"])
    assert (ipstat.symbol, ipstat.relocation) == ("vnet_entry_ipstat", "vnet")
    assert (ticks.symbol, ticks.relocation) == ("pcpu_entry_pcputicks", "dpcpu")
    assert missing.value is None and missing.symbol is None
    for k, total in enumerate(truth["vnet"]["ipstat"]):
        base = int.from_bytes(forged.machine.read_kva(ipstat.value + 8 * k, 8), "little")
        assert kvm.counter_u64_fetch(base) == total
        per_cpu = [int.from_bytes(kvm.read_zpcpu(base, 8, cpu), "little") for cpu in range(2)]
        assert per_cpu == [netpcpu.IPSTAT_COUNTERS[cpu][k] for cpu in range(2)]
    nl = kvm._nlister()
    assert nl.dpcpu_setcpu(1) and not nl.dpcpu_setcpu(2)  # dpcpu_off[2] == 0: no such CPU
    assert nl.nlist(["pcputicks"])[0].value == (truth["dpcpu"]["dpcpu_off"][1] + forged.machine.symbols["pcpu_entry_pcputicks"]) % (1 << 64)


def test_nlist_default_symbols(nlist_machine):
    """Without --symbol: libkvm's own symbols, a.out names included (``___start_set_vnet``)."""
    paths, forged, _truth = nlist_machine
    rows = _rows(paths, "vmcore")
    syms = forged.machine.symbols
    assert rows["___start_set_vnet"]["SYMBOL"] == "__start_set_vnet"
    assert rows["___start_set_vnet"]["VALUE"] & _MASK48 == syms["__start_set_vnet"] & _MASK48
    assert rows["___pcpu"]["SYMBOL"] == "__pcpu"
    for name in layoutcheck.SYMBOLS:
        assert rows[name]["VALUE"] & _MASK48 == syms[name] & _MASK48
