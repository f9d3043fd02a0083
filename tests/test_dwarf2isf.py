"""DWARF -> ISF conversion, ISF files, ELF symbols and ``kvm-vol isf``.

The fixtures in tests/data are built from dwarf_fixture.c by
tests/data/build_fixtures.sh (zig cc for FreeBSD targets) and committed, so
no compiler runs here.  Besides comparing the converter's output field by
field with what the C source declares, the tests read the objects the
compiler initialised (in .data) through Volatility with the generated ISF:
that checks offsets, bit positions and anonymous-member flattening the way
a plugin will use them.
"""

import argparse
import base64
import gzip
import hashlib
import json
import lzma
import re
import shutil
import struct
from pathlib import Path

import jsonschema
import pytest
from elftools.elf.elffile import ELFFile
from volatility3 import schemas
from volatility3.framework import contexts
from volatility3.framework.layers.physical import BufferDataLayer
from volatility3.framework.symbols.intermed import IntermediateSymbolTable

from kvm_vol.errors import SymbolError
from kvm_vol.symbols import elfsyms, isfcmd
from kvm_vol.symbols.dwarf2isf import dwarf_to_isf
from kvm_vol.symbols.isf import (
    ISF_FORMAT,
    KIND_KERNEL,
    KIND_TYPES,
    banner_of,
    isf_kind,
    load_isf,
    make_kernel_isf,
    write_isf,
)

DATA = Path(__file__).resolve().parent / "data"
AMD64 = DATA / "dwarf_fixture-amd64.o"
I386 = DATA / "dwarf_fixture-i386-dwarf5.o"
ARM64 = DATA / "dwarf_fixture-arm64-dwarf2.o"
KERNEL = DATA / "kernel-fixture-amd64"
KERNEL_NODEBUG = DATA / "kernel-fixture-amd64.nodebug"

BANNER = b"FreeBSD 99.0-FIXTURE #0 kvm-vol: reproducible\n    fixture@kvm-vol:/sys/FIXTURE\n"
UNNAMED = re.compile(r"^unnamed_[0-9a-f]{16}$")


def base(name):
    return {"kind": "base", "name": name}


def ptr(subtype):
    return {"kind": "pointer", "subtype": subtype}


def array(count, subtype):
    return {"kind": "array", "count": count, "subtype": subtype}


def bitfield(position, length, of):
    return {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": of}


@pytest.fixture(scope="module")
def amd64():
    return dwarf_to_isf(AMD64)


@pytest.fixture(scope="module")
def i386():
    return dwarf_to_isf(I386)


@pytest.fixture(scope="module")
def arm64():
    return dwarf_to_isf(ARM64)


def volatility_table(isf, tmp_path, name="fixture"):
    """Load ``isf`` through Volatility (with schema validation); return (context, table name)."""
    path = write_isf(isf, tmp_path / f"{name}.json.xz")
    ctx = contexts.Context()
    table = IntermediateSymbolTable(ctx, "config." + name, name, path.as_uri())
    ctx.symbol_space.append(table)
    return ctx, table.name


def data_layer(ctx, obj_path, name="data"):
    """A Volatility layer holding the object's .data section (symbol values are section-relative)."""
    with open(obj_path, "rb") as fh:
        data = ELFFile(fh).get_section_by_name(".data").data()
    ctx.add_layer(BufferDataLayer(ctx, "config." + name, name, data))
    return name


# -- the converter's output, field by field ---------------------------------


def test_metadata_and_base_types(amd64):
    meta = amd64["metadata"]
    assert meta["format"] == ISF_FORMAT == "6.2.0"
    assert set(meta) == {"format", "producer"}
    prov = meta["producer"]["kvm_vol"]
    assert meta["producer"]["name"] == "kvm-vol"
    assert prov["kind"] == KIND_TYPES and isf_kind(amd64) == KIND_TYPES
    assert prov["source"] == {"name": AMD64.name, "sha256": hashlib.sha256(AMD64.read_bytes()).hexdigest()}
    assert prov["machine"] == "EM_X86_64"
    assert prov["dwarf_versions"] == [4]
    assert prov["address_size"] == 8
    assert prov["dropped_fields"] == [] and prov["conflicting_types"] == []

    bt = amd64["base_types"]
    little = {"endian": "little"}
    assert bt["pointer"] == {"size": 8, "signed": False, "kind": "int", **little}
    assert bt["void"] == {"size": 0, "signed": False, "kind": "void", **little}
    assert bt["int"] == {"size": 4, "signed": True, "kind": "int", **little}
    assert bt["unsigned int"] == {"size": 4, "signed": False, "kind": "int", **little}
    assert bt["long"] == {"size": 8, "signed": True, "kind": "int", **little}
    assert bt["unsigned long"] == {"size": 8, "signed": False, "kind": "int", **little}
    assert bt["short"] == {"size": 2, "signed": True, "kind": "int", **little}
    assert bt["char"] == {"size": 1, "signed": True, "kind": "char", **little}
    assert bt["unsigned char"] == {"size": 1, "signed": False, "kind": "char", **little}
    assert bt["_Bool"] == {"size": 1, "signed": False, "kind": "bool", **little}
    assert bt["float"] == {"size": 4, "signed": True, "kind": "float", **little}
    assert bt["double"] == {"size": 8, "signed": True, "kind": "float", **little}


def test_struct_node(amd64):
    node = amd64["user_types"]["node"]
    assert node["kind"] == "struct" and node["size"] == 128
    fields = node["fields"]
    link_name = fields["link"]["type"]["name"]
    union_name = fields["unnamed_field_18"]["type"]["name"]
    xy_name = fields["unnamed_field_20"]["type"]["name"]
    assert all(UNNAMED.match(n) for n in (link_name, union_name, xy_name))
    assert fields == {
        "next": {"offset": 0, "type": ptr({"kind": "struct", "name": "node"})},
        "link": {"offset": 8, "type": {"kind": "struct", "name": link_name}},
        "unnamed_field_18": {"offset": 24, "anonymous": True, "type": {"kind": "union", "name": union_name}},
        "unnamed_field_20": {"offset": 32, "anonymous": True, "type": {"kind": "struct", "name": xy_name}},
        "grid": {"offset": 40, "type": array(2, array(3, base("int")))},
        # const volatile tdchain_t -> my_u32 -> u32 -> unsigned int
        "chained": {"offset": 64, "type": base("unsigned int")},
        "cb": {"offset": 72, "type": ptr({"kind": "function"})},
        "vfn": {"offset": 80, "type": ptr({"kind": "function"})},
        "name": {"offset": 88, "type": array(16, base("char"))},
        "bits": {"offset": 104, "type": {"kind": "struct", "name": "bits"}},
        "col": {"offset": 120, "type": {"kind": "enum", "name": "color"}},
        "flex": {"offset": 128, "type": array(0, base("unsigned long"))},
    }
    users = amd64["user_types"]
    assert users[link_name] == {
        "kind": "struct",
        "size": 16,
        "fields": {
            "le_next": {"offset": 0, "type": ptr({"kind": "struct", "name": "node"})},
            "le_prev": {"offset": 8, "type": ptr(ptr({"kind": "struct", "name": "node"}))},
        },
    }
    inner = users[union_name]["fields"]["unnamed_field_0"]
    assert users[union_name] == {
        "kind": "union",
        "size": 8,
        "fields": {
            "as_long": {"offset": 0, "type": base("long")},
            "unnamed_field_0": {"offset": 0, "anonymous": True, "type": {"kind": "struct", "name": inner["type"]["name"]}},
        },
    }
    assert users[inner["type"]["name"]] == {
        "kind": "struct",
        "size": 4,
        "fields": {"lo": {"offset": 0, "type": base("short")}, "hi": {"offset": 2, "type": base("short")}},
    }
    assert users[xy_name] == {
        "kind": "struct",
        "size": 8,
        "fields": {"x": {"offset": 0, "type": base("int")}, "y": {"offset": 4, "type": base("int")}},
    }


def test_bitfields_follow_volatility_convention(amd64):
    """offset = aligned storage unit of the field's type, bit_position from its LSB."""
    assert amd64["user_types"]["bits"] == {
        "kind": "struct",
        "size": 16,
        "fields": {
            "a": {"offset": 0, "type": bitfield(0, 3, base("unsigned int"))},
            "b": {"offset": 0, "type": bitfield(3, 5, base("unsigned int"))},
            "c": {"offset": 0, "type": bitfield(8, 7, base("int"))},
            "col": {"offset": 0, "type": bitfield(15, 4, {"kind": "enum", "name": "color"})},
            "wide": {"offset": 0, "type": bitfield(19, 40, base("unsigned long"))},
            "tail": {"offset": 8, "type": base("unsigned char")},
            "flag": {"offset": 9, "type": bitfield(0, 1, base("_Bool"))},
        },
    }


def test_enums_unions_and_typedefed_anonymous_struct(amd64):
    assert amd64["enums"] == {
        "color": {"size": 4, "base": "int", "constants": {"RED": 0, "GREEN": 5, "BLUE": -1}},
        "big": {"size": 4, "base": "unsigned int", "constants": {"BIG_A": 1, "BIG_B": 0x80000000}},
    }
    assert amd64["user_types"]["u"] == {
        "kind": "union",
        "size": 16,
        "fields": {
            "i": {"offset": 0, "type": base("int")},
            "f": {"offset": 0, "type": base("float")},
            "d": {"offset": 0, "type": base("double")},
            "c": {"offset": 0, "type": array(12, base("char"))},
        },
    }
    anon = amd64["symbols"]["fixture_anon"]["type"]
    assert anon["kind"] == "struct" and UNNAMED.match(anon["name"])
    assert amd64["user_types"][anon["name"]]["fields"] == {
        "anon_a": {"offset": 0, "type": base("int")},
        "anon_b": {"offset": 4, "type": base("char")},
    }


def test_symbols_are_file_scope_variables_at_their_addresses(amd64):
    syms = amd64["symbols"]
    assert set(syms) == {
        "version",
        "fixture_bits",
        "fixture_node",
        "fixture_anon",
        "fixture_union",
        "fixture_big",
        "fixture_matrix",
        "fixture_static",
        "fixture_ptr",
        "fixture_cb",
    }
    assert syms["version"]["type"] == array(256, base("char"))
    assert syms["fixture_matrix"]["type"] == array(4, array(5, array(6, base("int"))))
    assert syms["fixture_ptr"]["type"] == ptr(base("int"))
    assert syms["fixture_cb"]["type"] == ptr({"kind": "function"})
    assert syms["fixture_big"]["type"] == {"kind": "enum", "name": "big"}
    # In a relocatable object DWARF and .symtab both give section-relative values.
    table = elfsyms.read_symbols(AMD64)
    for name, entry in syms.items():
        assert entry["address"] == table[name], name


def test_ilp32_and_dwarf5(i386):
    prov = i386["metadata"]["producer"]["kvm_vol"]
    assert prov["dwarf_versions"] == [5] and prov["address_size"] == 4 and prov["machine"] == "EM_386"
    assert i386["base_types"]["pointer"]["size"] == 4
    assert i386["base_types"]["long"]["size"] == 4
    node = i386["user_types"]["node"]
    assert node["size"] == 92
    offsets = {name: f["offset"] for name, f in node["fields"].items()}
    assert offsets == {
        "next": 0,
        "link": 4,
        "unnamed_field_c": 12,
        "unnamed_field_10": 16,
        "grid": 24,
        "chained": 48,
        "cb": 52,
        "vfn": 56,
        "name": 60,
        "bits": 76,
        "col": 88,
        "flex": 92,
    }
    # uint64_t is 4-byte aligned on i386: struct bits shrinks, the 40-bit field keeps its bits.
    assert i386["user_types"]["bits"]["size"] == 12
    assert i386["user_types"]["bits"]["fields"]["wide"] == {"offset": 0, "type": bitfield(19, 40, base("unsigned long long"))}
    table = elfsyms.read_symbols(I386)
    for name, entry in i386["symbols"].items():
        assert entry["address"] == table[name], name


def test_dwarf2_encoding_gives_the_same_layout(amd64, arm64):
    """Member locations as expressions and MSB-relative DW_AT_bit_offset (DWARF 2) give the DWARF 4 result."""
    assert arm64["metadata"]["producer"]["kvm_vol"]["dwarf_versions"] == [2]
    assert arm64["user_types"] == amd64["user_types"]
    assert arm64["enums"] == amd64["enums"]
    assert arm64["base_types"]["char"]["signed"] is False  # char is unsigned on arm64
    assert amd64["base_types"]["char"]["signed"] is True


@pytest.mark.parametrize("path", [AMD64, I386, ARM64, KERNEL], ids=lambda p: p.name)
def test_output_matches_volatility_schema(path):
    isf = dwarf_to_isf(path)
    assert schemas.validate(isf, use_cache=False)
    # The validator is really active (Volatility lets its ValidationError escape), and it is
    # why provenance lives inside "producer": the 6.2.0 schema allows no other keys in "metadata".
    misplaced = dict(isf, metadata=dict(isf["metadata"], kvm_vol={"kind": "types"}))
    with pytest.raises(jsonschema.exceptions.ValidationError):
        schemas.validate(misplaced, use_cache=False)


def test_conversion_is_deterministic(tmp_path):
    first = write_isf(dwarf_to_isf(AMD64), tmp_path / "a.json.xz").read_bytes()
    second = write_isf(dwarf_to_isf(AMD64), tmp_path / "b.json.xz").read_bytes()
    assert first == second


def test_converter_errors_name_the_file(tmp_path):
    with pytest.raises(SymbolError, match=r"kernel-fixture-amd64\.nodebug: no DWARF"):
        dwarf_to_isf(KERNEL_NODEBUG)
    with pytest.raises(SymbolError, match=r"dwarf_fixture\.c: not an ELF file"):
        dwarf_to_isf(DATA / "dwarf_fixture.c")
    with pytest.raises(SymbolError, match="missing.o: cannot read"):
        dwarf_to_isf(tmp_path / "missing.o")


# -- reading the compiled values back through Volatility --------------------


@pytest.mark.parametrize("path", [AMD64, I386, ARM64], ids=lambda p: p.name)
def test_volatility_reads_initialised_objects(path, tmp_path):
    isf = dwarf_to_isf(path)
    ctx, table = volatility_table(isf, tmp_path)
    layer = data_layer(ctx, path)
    syms = isf["symbols"]
    pointer_size = isf["base_types"]["pointer"]["size"]
    assert ctx.symbol_space.get_type(table + "!pointer").size == pointer_size

    bits = ctx.object(table + "!bits", layer, syms["fixture_bits"]["address"])
    assert (bits.a, bits.b, bits.col, bits.wide, bits.tail, bits.flag) == (5, 17, 5, 0x123456789A, 0xEE, 1)
    # Volatility's BitField is unsigned: the 7 bits of -33.
    assert bits.c == (-33) & 0x7F

    node_type = ctx.symbol_space.get_type(table + "!node")
    assert node_type.size == isf["user_types"]["node"]["size"]
    # Anonymous members are flattened into struct node by Volatility.
    assert node_type.relative_child_offset("lo") == 3 * pointer_size
    assert node_type.relative_child_offset("y") == node_type.relative_child_offset("x") + 4

    node = ctx.object(table + "!node", layer, syms["fixture_node"]["address"])
    assert (node.lo, node.hi, node.x, node.y) == (0x1234, -2, 7, -8)
    assert [list(row) for row in node.grid] == [[1, 2, 3], [4, 5, 6]]
    assert node.chained == 0xC0FFEE
    assert node.name.cast("string", max_length=16, errors="strict") == "node-name"
    assert node.col.description == "BLUE"
    assert (node.bits.a, node.bits.b, node.bits.c, node.bits.col, node.bits.wide) == (2, 31, 63, 15, 0xFEDCBA9876)
    assert node.next == 0 and node.link.le_next == 0

    anon = ctx.object(table + "!" + syms["fixture_anon"]["type"]["name"], layer, syms["fixture_anon"]["address"])
    assert (anon.anon_a, anon.anon_b) == (-5, ord("z"))
    assert ctx.object(table + "!u", layer, syms["fixture_union"]["address"]).d == 2.5
    assert ctx.object(table + "!big", layer, syms["fixture_big"]["address"]).description == "BIG_B"


# -- ISF files ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".json.xz", ".json.gz"])
def test_write_and_load_roundtrip(amd64, tmp_path, suffix):
    path = write_isf(amd64, tmp_path / ("types" + suffix))
    assert load_isf(path) == json.loads(json.dumps(amd64))
    raw = path.read_bytes()
    if suffix == ".json.xz":
        assert raw.startswith(b"\xfd7zXZ\x00")
        text = lzma.decompress(raw)
    elif suffix == ".json.gz":
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
        text = gzip.decompress(raw)
    else:
        text = raw
    assert text == (json.dumps(amd64, sort_keys=True, separators=(",", ":")) + "\n").encode()
    # Same object, same bytes.
    assert write_isf(amd64, tmp_path / ("again" + suffix)).read_bytes() == raw


def test_load_isf_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(SymbolError, match="bad.json.xz: not a readable ISF"):
        load_isf(bad)
    notisf = tmp_path / "x.json"
    notisf.write_text('{"a": 1}')
    with pytest.raises(SymbolError, match="x.json: not an ISF"):
        load_isf(notisf)
    with pytest.raises(SymbolError, match="nothere.json: cannot read"):
        load_isf(tmp_path / "nothere.json")


def test_make_kernel_isf(amd64):
    symbols = {"version": 0x1000, "fixture_node": 0x2000, "some_function": 0x3000}
    node_type = {"kind": "struct", "name": "node"}
    override = {"some_function": {"address": 0, "type": {"kind": "function"}}, "version": {"address": 0}}
    isf = make_kernel_isf(amd64, symbols, BANNER + b"\0\0\0", symbol_types=override)
    assert isf_kind(isf) == KIND_KERNEL
    assert isf["metadata"]["producer"]["kvm_vol"]["types"] == amd64["metadata"]["producer"]["kvm_vol"]
    assert isf["user_types"] == amd64["user_types"] and isf["enums"] == amd64["enums"]
    assert isf["symbols"]["version"] == {
        "address": 0x1000,
        "type": array(256, base("char")),
        "constant_data": base64.b64encode(BANNER).decode(),
    }
    assert banner_of(isf) == BANNER  # trailing NULs gone, final newline kept
    assert isf["symbols"]["fixture_node"] == {"address": 0x2000, "type": node_type}
    assert isf["symbols"]["some_function"] == {"address": 0x3000, "type": {"kind": "function"}}
    # DWARF variables missing from the symbol table keep their DWARF address ...
    assert isf["symbols"]["fixture_ptr"]["address"] == amd64["symbols"]["fixture_ptr"]["address"] != 0
    # ... unless it is 0 (declarations, type packs): that address would be a lie.
    types_only = dict(amd64, symbols=dict(amd64["symbols"], fixture_ptr=dict(amd64["symbols"]["fixture_ptr"], address=0)))
    assert "fixture_ptr" not in make_kernel_isf(types_only, symbols, BANNER)["symbols"]
    # The input is not modified.
    assert "constant_data" not in amd64["symbols"]["version"]
    assert schemas.validate(isf, use_cache=False)


def test_make_kernel_isf_needs_a_banner(amd64):
    with pytest.raises(SymbolError, match="no 'version' symbol"):
        make_kernel_isf(amd64, {"fixture_node": 1}, BANNER)
    with pytest.raises(SymbolError, match="empty"):
        make_kernel_isf(amd64, {"version": 1}, b"\0" * 16)
    assert banner_of(amd64) is None


# -- ELF symbol tables ----------------------------------------------------------


def patched_strtab(tmp_path, source, old, new):
    """Copy ``source`` with the string ``old`` replaced by ``new`` inside .strtab only."""
    assert len(old) == len(new)
    with open(source, "rb") as fh:
        strtab = ELFFile(fh).get_section_by_name(".strtab")
        start, end = strtab["sh_offset"], strtab["sh_offset"] + strtab["sh_size"]
    raw = bytearray(source.read_bytes())
    where = raw.find(old, start, end)
    assert where >= 0
    raw[where : where + len(old)] = new
    out = tmp_path / source.name
    out.write_bytes(bytes(raw))
    return out


def test_read_symbols_of_a_linked_kernel():
    syms = elfsyms.read_symbols(KERNEL)
    assert syms["kernbase"] == 0xFFFFFFFF80000000  # absolute symbol
    assert syms["fixture_func"] == 0xFFFFFFFF80200040
    assert syms["version"] == 0xFFFFFFFF80200060
    assert syms["fixture_func.counter"] == 0xFFFFFFFF80200220  # function static: ELF name
    assert "dwarf_fixture.c" not in syms and "" not in syms  # file and null symbols
    assert elfsyms.read_symbols(KERNEL_NODEBUG) == syms


def test_first_definition_wins(tmp_path):
    """Like libkvm's resolver: with two definitions of a name, the first in .symtab counts."""
    patched = patched_strtab(tmp_path, KERNEL, b"fixture_static\0", b"fixture_big\0\0\0\0")
    syms = elfsyms.read_symbols(patched)
    original = elfsyms.read_symbols(KERNEL)
    assert syms["fixture_big"] == original["fixture_static"] != original["fixture_big"]


def test_read_version_linked_and_relocatable():
    assert elfsyms.read_version(KERNEL) == BANNER
    assert elfsyms.read_version(KERNEL_NODEBUG) == BANNER
    assert elfsyms.read_version(AMD64) == BANNER
    assert elfsyms.read_version(I386) == BANNER
    raw = elfsyms.read_symbol_bytes(KERNEL, "version")
    assert len(raw) == 256 and raw.startswith(BANNER) and raw[len(BANNER) :] == bytes(256 - len(BANNER))
    # A relocatable object: the value is the offset in the symbol's section.
    assert elfsyms.read_symbol_bytes(AMD64, "fixture_union") == struct.pack("<d", 2.5) + bytes(8)


def test_symbol_errors_name_the_file(tmp_path):
    with pytest.raises(SymbolError, match=r"kernel-fixture-amd64: symbol 'fixture_matrix' is in \.bss"):
        elfsyms.read_symbol_bytes(KERNEL, "fixture_matrix")
    with pytest.raises(SymbolError, match="kernel-fixture-amd64: no 'nonexistent' symbol"):
        elfsyms.read_symbol_bytes(KERNEL, "nonexistent")
    with pytest.raises(SymbolError, match="dwarf_fixture.c: not an ELF file"):
        elfsyms.read_symbols(DATA / "dwarf_fixture.c")


# -- kvm-vol isf ------------------------------------------------------------------


def run_isf(argv):
    parser = argparse.ArgumentParser(prog="kvm-vol isf")
    isfcmd.add_arguments(parser)
    return isfcmd.run(parser.parse_args(argv))


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    directory = tmp_path / "user-symbols"
    monkeypatch.setenv("KVM_VOL_SYMBOLS_DIR", str(directory))
    return directory


def test_isf_command_end_to_end(user_dir, capsys, tmp_path):
    assert run_isf(["--elf", str(KERNEL)]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = user_dir / "freebsd" / f"FreeBSD_99.0-FIXTURE_0_kvm-vol_reproducible-{hashlib.sha256(BANNER).hexdigest()[:8]}.json.xz"
    assert out == [str(expected)] + BANNER.decode().rstrip("\n").split("\n")
    assert isfcmd.default_output(BANNER) == expected

    isf = load_isf(expected)
    assert isf_kind(isf) == KIND_KERNEL
    assert banner_of(isf) == BANNER
    elf_syms = elfsyms.read_symbols(KERNEL)
    for name, address in elf_syms.items():
        assert isf["symbols"][name]["address"] == address, name
    assert isf["symbols"]["fixture_node"]["type"] == {"kind": "struct", "name": "node"}
    assert "type" not in isf["symbols"]["kernbase"]
    assert isf["user_types"]["node"]["size"] == 128
    prov = isf["metadata"]["producer"]["kvm_vol"]
    assert prov["symbols_source"]["name"] == KERNEL.name
    assert prov["types"]["source"]["name"] == KERNEL.name

    # Volatility loads it; read struct node from the kernel's .data at its virtual address.
    ctx, table = volatility_table(isf, tmp_path, "kernel")
    with open(KERNEL, "rb") as fh:
        data = ELFFile(fh).get_section_by_name(".data")
        base_va, contents = data["sh_addr"], data.data()
    ctx.add_layer(BufferDataLayer(ctx, "config.kdata", "kdata", contents))
    node_sym = ctx.symbol_space.get_symbol(table + "!fixture_node")
    node = ctx.object(node_sym.type, "kdata", node_sym.address - base_va)
    assert (node.x, node.y, node.chained) == (7, -8, 0xC0FFEE)


def test_isf_command_with_separate_symbol_file(user_dir, capsys, tmp_path):
    output = tmp_path / "kernel.json"
    assert run_isf(["--elf", str(KERNEL), "--elf-symbols", str(KERNEL_NODEBUG), "-o", str(output)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(output)
    isf = load_isf(output)
    assert banner_of(isf) == BANNER
    assert isf["metadata"]["producer"]["kvm_vol"]["symbols_source"]["name"] == KERNEL_NODEBUG.name
    assert not user_dir.exists()


def test_isf_command_errors(user_dir, tmp_path):
    with pytest.raises(SymbolError, match=r"kernel-fixture-amd64\.nodebug: no DWARF"):
        run_isf(["--elf", str(KERNEL_NODEBUG)])
    no_version = patched_strtab(tmp_path, KERNEL, b"\0version\0", b"\0versioX\0")
    with pytest.raises(SymbolError, match=r"kernel-fixture-amd64: no 'version' symbol"):
        run_isf(["--elf", str(no_version)])
    assert not user_dir.exists()


def test_isf_command_creates_the_user_directory(user_dir, tmp_path):
    """The default output goes below $KVM_VOL_SYMBOLS_DIR, creating the freebsd/ directory."""
    copy = tmp_path / "k"
    shutil.copy(KERNEL, copy)
    assert run_isf(["--elf", str(copy)]) == 0
    assert [p.parent for p in user_dir.rglob("*.json.xz")] == [user_dir / "freebsd"]
