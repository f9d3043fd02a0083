"""The committed type packs (symbols/types/*.json.xz) and kvm_vol.symbols.typepacks.

The expected sizes and offsets are those observed for FreeBSD 14.x and 15.0
release headers (docs: volatility3-integration.md section 4) and the amd64
minidump header layout of vmcore-formats.md section 3.  A last group of tests
loads a pack, combined with made-up symbol addresses, through Volatility and
reads a process list from a buffer laid out with the pack's own offsets.
"""

import hashlib
import re
import struct
from pathlib import Path

import pytest
from volatility3 import schemas
from volatility3.framework import contexts
from volatility3.framework.layers.physical import BufferDataLayer
from volatility3.framework.symbols.intermed import IntermediateSymbolTable

from kvm_vol.errors import SymbolError
from kvm_vol.symbols import typepacks
from kvm_vol.symbols.isf import KIND_TYPE_PACK, banner_of, isf_kind, make_kernel_isf, write_isf

REPO = Path(__file__).resolve().parent.parent
PACKS = [f"freebsd-{rel}-{arch}" for rel in ("14.3", "15.0") for arch in ("amd64", "arm64", "i386")]
POINTER = {"amd64": 8, "arm64": 8, "i386": 4}


def size(pack, type_name):
    return typepacks.load(pack)["user_types"][type_name]["size"]


def offsets(pack, type_name, *fields):
    members = typepacks.load(pack)["user_types"][type_name]["fields"]
    return tuple(members[f]["offset"] for f in fields)


def test_available_lists_the_six_packs():
    assert typepacks.available() == sorted(PACKS)


@pytest.mark.parametrize(
    "pack, type_name, expected",
    [
        ("freebsd-14.3-amd64", "proc", 1376),
        ("freebsd-15.0-amd64", "proc", 1368),
        ("freebsd-14.3-amd64", "kinfo_proc", 1088),
        ("freebsd-15.0-amd64", "kinfo_proc", 1088),
        ("freebsd-14.3-amd64", "thread", 1776),
        ("freebsd-15.0-amd64", "thread", 1824),
        ("freebsd-14.3-amd64", "ucred", 256),
        ("freebsd-15.0-amd64", "ucred", 264),
        ("freebsd-14.3-amd64", "vnode", 448),
        ("freebsd-15.0-amd64", "vnode", 440),
        ("freebsd-14.3-amd64", "vmspace", 616),
        ("freebsd-15.0-amd64", "vmspace", 584),
        ("freebsd-14.3-amd64", "file", 80),
        ("freebsd-15.0-amd64", "file", 80),
        ("freebsd-14.3-amd64", "filedesc", 88),
        ("freebsd-15.0-amd64", "filedesc", 88),
        ("freebsd-14.3-amd64", "swdevt", 96),
        ("freebsd-15.0-amd64", "swdevt", 96),
        ("freebsd-14.3-amd64", "pargs", 12),
        ("freebsd-15.0-amd64", "pargs", 12),
        ("freebsd-14.3-i386", "proc", 868),
        ("freebsd-15.0-i386", "proc", 860),
        ("freebsd-14.3-i386", "thread", 888),
        ("freebsd-15.0-i386", "thread", 928),
        ("freebsd-14.3-i386", "ucred", 208),
        ("freebsd-15.0-i386", "ucred", 208),
        ("freebsd-14.3-i386", "kinfo_proc", 768),
        ("freebsd-15.0-i386", "kinfo_proc", 768),
        ("freebsd-14.3-arm64", "proc", 1352),
        ("freebsd-15.0-arm64", "proc", 1360),
        ("freebsd-14.3-arm64", "kinfo_proc", 1088),
        ("freebsd-15.0-arm64", "kinfo_proc", 1088),
    ],
)
def test_structure_sizes(pack, type_name, expected):
    assert size(pack, type_name) == expected


@pytest.mark.parametrize("pack", PACKS)
def test_kerneldumpheader_is_512_bytes(pack):
    assert size(pack, "kerneldumpheader") == 512


@pytest.mark.parametrize("pack", ["freebsd-14.3-amd64", "freebsd-15.0-amd64"])
def test_amd64_minidump_header(pack):
    fields = typepacks.load(pack)["user_types"]["minidumphdr"]["fields"]
    assert size(pack, "minidumphdr") == 72
    assert {name: f["offset"] for name, f in fields.items()} == {
        "magic": 0,
        "version": 24,
        "msgbufsize": 28,
        "bitmapsize": 32,
        "pmapsize": 36,
        "kernbase": 40,
        "dmapbase": 48,
        "dmapend": 56,
        "dumpavailsize": 64,
    }
    assert fields["magic"]["type"] == {"kind": "array", "count": 24, "subtype": {"kind": "base", "name": "char"}}


def test_proc_offsets_15_0_amd64():
    assert offsets("freebsd-15.0-amd64", "proc", "p_list", "p_threads", "p_ucred", "p_pid", "p_vmspace", "p_comm") == (
        0,
        16,
        64,
        196,
        520,
        992,
    )
    comm = typepacks.load("freebsd-15.0-amd64")["user_types"]["proc"]["fields"]["p_comm"]["type"]
    assert comm == {"kind": "array", "count": 20, "subtype": {"kind": "base", "name": "char"}}


def test_ucred_groups_changed_in_15():
    """14.x: cr_gid is a macro for cr_groups[0]; 15.0: a field of its own."""
    old = typepacks.load("freebsd-14.3-amd64")["user_types"]["ucred"]["fields"]
    new = typepacks.load("freebsd-15.0-amd64")["user_types"]["ucred"]["fields"]
    assert "cr_gid" not in old
    assert new["cr_gid"]["offset"] == 112
    for fields in (old, new):
        assert fields["cr_groups"]["type"] == {"kind": "pointer", "subtype": {"kind": "base", "name": "unsigned int"}}
        assert fields["cr_smallgroups"]["type"]["count"] == 16


@pytest.mark.parametrize("pack", PACKS)
def test_pack_metadata_marks_a_type_pack(pack):
    isf = typepacks.load(pack)
    major, minor, arch = typepacks.parse_name(pack)
    prov = isf["metadata"]["producer"]["kvm_vol"]
    assert isf_kind(isf) == KIND_TYPE_PACK
    assert prov["release"] == f"{major}.{minor}"
    assert prov["freebsd_version"] == typepacks.freebsd_version(major, minor) == major * 100000 + minor * 1000
    assert prov["arch"] == arch
    assert re.match(r"^0\.\d+\.\d+$", prov["ziglang"])
    assert prov["dwarf"]["address_size"] == POINTER[arch] == isf["base_types"]["pointer"]["size"]
    assert prov["dwarf"]["dropped_fields"] == []
    # Nothing that could pass for a kernel ISF: no banner, no addresses.
    assert banner_of(isf) is None
    assert all(set(sym) == {"address", "type"} and sym["address"] == 0 for sym in isf["symbols"].values())
    assert "kvm_vol_types" not in isf["user_types"] and "kvm_vol_types" not in isf["symbols"]
    assert schemas.validate(isf, use_cache=False)


@pytest.mark.parametrize("pack", PACKS)
def test_packs_are_built_from_the_current_types_c(pack):
    """A pack records the SHA-256 of symbols/types.c: editing it without regenerating fails here."""
    source = typepacks.load(pack)["metadata"]["producer"]["kvm_vol"]["source"]
    assert source == {"name": "types.c", "sha256": hashlib.sha256((REPO / "symbols" / "types.c").read_bytes()).hexdigest()}


@pytest.mark.parametrize("pack", PACKS)
def test_kernel_globals_carry_kernel_types(pack):
    isf = typepacks.load(pack)
    syms = isf["symbols"]
    arch = pack.rsplit("-", 1)[1]
    users = isf["user_types"]
    assert syms["allproc"]["type"] == {"kind": "struct", "name": "proclist"}
    assert users["proclist"]["fields"]["lh_first"]["type"] == {"kind": "pointer", "subtype": {"kind": "struct", "name": "proc"}}
    assert syms["pidhashtbl"]["type"] == {"kind": "pointer", "subtype": {"kind": "struct", "name": "pidhashhead"}}
    assert syms["thread0_st"]["type"] == {"kind": "struct", "name": "thread0_storage"}
    assert users["thread0_storage"]["fields"]["t0st_thread"]["type"] == {"kind": "struct", "name": "thread"}
    assert syms["proc0"]["type"] == {"kind": "struct", "name": "proc"}
    assert syms["version"]["type"] == {"kind": "array", "count": 256, "subtype": {"kind": "base", "name": "char"}}
    assert syms["msgbufp"]["type"] == {"kind": "pointer", "subtype": {"kind": "struct", "name": "msgbuf"}}
    assert syms["averunnable"]["type"] == {"kind": "struct", "name": "loadavg"}
    assert syms["dumppcb"]["type"] == {"kind": "struct", "name": "pcb"}
    for name in ("proc_off_p_pid", "proc_off_p_comm", "proc_off_p_list", "proc_off_p_hash", "proc_off_p_threads"):
        assert syms[name]["type"] == {"kind": "base", "name": "int"}
    # swap_pager.c: static TAILQ_HEAD(, swdevt) swtailq - an anonymous head type.
    head = users[syms["swtailq"]["type"]["name"]]
    assert head["fields"]["tqh_first"]["type"] == {"kind": "pointer", "subtype": {"kind": "struct", "name": "swdevt"}}
    # MAXCPU of an SMP kernel: 1024 on amd64/arm64, 32 on i386.
    assert syms["cpuid_to_pcpu"]["type"]["count"] == {"amd64": 1024, "arm64": 1024, "i386": 32}[arch]
    assert ("KPML4phys" in syms) == (arch == "amd64")
    assert ("IdlePDPT" in syms) == ("pae_mode" in syms) == (arch == "i386")
    assert ("ticksl" in syms) == pack.startswith("freebsd-15.")
    assert "boottime" not in syms


def test_i386_cpuset_has_the_kernel_size():
    """cpuset_t has MAXCPU bits in the kernel (32 on i386), not userland's 1024."""
    assert size("freebsd-15.0-i386", "_cpuset") == 4
    assert size("freebsd-15.0-amd64", "_cpuset") == 128


def test_load_is_cached_and_checked(tmp_path, monkeypatch):
    assert typepacks.load("freebsd-14.3-amd64") is typepacks.load("freebsd-14.3-amd64")
    with pytest.raises(SymbolError, match="not a type pack name"):
        typepacks.load("freebsd-14-amd64")
    with pytest.raises(SymbolError, match="no type pack 'freebsd-9.9-amd64'"):
        typepacks.load("freebsd-9.9-amd64")
    # A kernel ISF dropped into the pack directory is refused.
    kernel = make_kernel_isf(typepacks.load("freebsd-14.3-amd64"), {"version": 1}, b"FreeBSD 14.3-RELEASE\n")
    write_isf(kernel, tmp_path / "freebsd-14.2-amd64.json.xz")
    monkeypatch.setattr(typepacks, "type_packs_dir", lambda: tmp_path)
    with pytest.raises(SymbolError, match="not a kvm-vol type pack"):
        typepacks.load("freebsd-14.2-amd64")


@pytest.mark.parametrize(
    "osreldate, arch, expected",
    [
        (1403000, "amd64", "freebsd-14.3-amd64"),
        (1400097, "amd64", "freebsd-14.3-amd64"),  # 14.0-RELEASE: closest 14.x pack
        (1403504, "x86_64", "freebsd-14.3-amd64"),
        (1500068, "amd64", "freebsd-15.0-amd64"),
        (1501000, "aarch64", "freebsd-15.0-arm64"),
        (1500068, "i386", "freebsd-15.0-i386"),
        (1402000, "x86", "freebsd-14.3-i386"),
    ],
)
def test_choose(osreldate, arch, expected):
    assert typepacks.choose(osreldate, arch) == expected


def test_choose_never_crosses_majors_or_guesses_arches():
    with pytest.raises(SymbolError, match=r"no type pack for FreeBSD 13\.x on amd64"):
        typepacks.choose(1302000, "amd64")
    with pytest.raises(SymbolError, match=r"no type pack for FreeBSD 16\.x on arm64"):
        typepacks.choose(1600001, "arm64")
    with pytest.raises(SymbolError, match="unknown architecture 'riscv64'"):
        typepacks.choose(1500068, "riscv64")


def test_choose_prefers_the_closest_minor_then_the_newer(tmp_path, monkeypatch):
    for name in ("freebsd-14.1-amd64", "freebsd-14.3-amd64", "freebsd-14.0-i386"):
        (tmp_path / f"{name}.json.xz").write_bytes(b"")
    monkeypatch.setattr(typepacks, "type_packs_dir", lambda: tmp_path)
    assert typepacks.choose(1400097, "amd64") == "freebsd-14.1-amd64"
    assert typepacks.choose(1402000, "amd64") == "freebsd-14.3-amd64"  # tie 14.1/14.3 -> newer
    assert typepacks.choose(1404000, "amd64") == "freebsd-14.3-amd64"


# -- a pack with fake symbols, through Volatility --------------------------------


def build_memory(isf, pointer_size, procs, allproc_at):
    """Bytes with ``allproc`` at ``allproc_at`` heading a p_list chain of ``procs`` (address, pid, comm)."""
    proc = isf["user_types"]["proc"]["fields"]
    fmt = "<Q" if pointer_size == 8 else "<I"
    memory = bytearray(0x10000)
    struct.pack_into(fmt, memory, allproc_at, procs[0][0])
    for i, (address, pid, comm) in enumerate(procs):
        following = procs[i + 1][0] if i + 1 < len(procs) else 0
        struct.pack_into(fmt, memory, address + proc["p_list"]["offset"], following)  # p_list.le_next
        struct.pack_into("<i", memory, address + proc["p_pid"]["offset"], pid)
        memory[address + proc["p_comm"]["offset"] : address + proc["p_comm"]["offset"] + len(comm)] = comm
    return bytes(memory)


@pytest.mark.parametrize("pack", PACKS)
def test_volatility_reads_a_process_list_with_a_pack(pack, tmp_path):
    arch = typepacks.parse_name(pack)[2]
    banner = f"FreeBSD {typepacks.load(pack)['metadata']['producer']['kvm_vol']['release']}-RELEASE GENERIC\n".encode()
    symbols = {"allproc": 0x100, "version": 0x200}
    isf = make_kernel_isf(typepacks.load(pack), symbols, banner)
    path = write_isf(isf, tmp_path / "kernel.json.xz")

    ctx = contexts.Context()
    table = IntermediateSymbolTable(ctx, "config.kernel", "kernel", path.as_uri())
    ctx.symbol_space.append(table)
    procs = [(0x1000, 1, b"init"), (0x3000, 42, b"sshd"), (0x6000, 0, b"kernel")]
    memory = build_memory(isf, POINTER[arch], procs, symbols["allproc"])
    ctx.add_layer(BufferDataLayer(ctx, "config.memory", "memory", memory))

    kernel = ctx.symbol_space[table.name]
    proc_type = kernel.get_type("proc")
    assert proc_type.size == isf["user_types"]["proc"]["size"]
    assert proc_type.relative_child_offset("p_pid") == isf["user_types"]["proc"]["fields"]["p_pid"]["offset"]
    assert kernel.get_type("pointer").size == POINTER[arch]

    allproc_sym = kernel.get_symbol("allproc")
    assert allproc_sym.address == 0x100
    allproc = ctx.object(allproc_sym.type, "memory", allproc_sym.address)
    seen = []
    entry = allproc.lh_first
    while entry != 0:
        p = entry.dereference()
        seen.append((p.vol.offset, int(p.p_pid), p.p_comm.cast("string", max_length=20, errors="strict")))
        entry = p.p_list.le_next
    assert seen == [(address, pid, comm.decode()) for address, pid, comm in procs]
