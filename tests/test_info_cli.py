"""``kvm-vol info IMAGE [--json]`` (kvm_vol.formats.info)."""

import argparse
import json

import pytest

import dumpkit as dk
from kvm_vol.core.amd64 import DMAP_MAX_ADDRESS, DMAP_MIN_ADDRESS, VM_MIN_KERNEL_ADDRESS
from kvm_vol.errors import DumpFormatError
from kvm_vol.forge.writers import wrap_kdh, write_elf, write_minidump, write_raw
from kvm_vol.formats import info


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    m = dk.build_machine()
    d = tmp_path_factory.mktemp("info")
    paths = {k: str(d / k) for k in ("v3", "v1", "kdh", "elf", "raw")}
    write_minidump(m.mem, paths["v3"], version=3, kpml4phys=m.kpml4phys, kva_end=1 << 64,
                   exclude_pfns=m.excluded_pfns, msgbuf=b"x" * 0x18000)
    write_minidump(m.mem, paths["v1"], version=1, kpml4phys=m.kpml4phys, kva_end=1 << 64)
    wrap_kdh(paths["v3"], paths["kdh"], versionstring=dk.VERSION_STR.decode() + "\n", hostname="crashbox",
             panicstring="page fault while in kernel mode", dumptime=1700000000)
    write_elf(m.mem, paths["elf"])
    write_raw(m.mem, paths["raw"])
    return paths


def run_info(capsys, *argv) -> str:
    parser = argparse.ArgumentParser(prog="kvm-vol info")
    info.add_arguments(parser)
    assert info.run(parser.parse_args(list(argv))) == 0
    return capsys.readouterr().out


def test_minidump_text(images, capsys):
    out = run_info(capsys, images["v3"])
    lines = out.splitlines()
    assert lines[0] == images["v3"]
    assert "  format            amd64 minidump, version 3" in lines
    assert "  kerneldumpheader  none" in lines
    assert (f"  kernbase          {VM_MIN_KERNEL_ADDRESS:#x} "
            "(1048576 pmap entries, PDEs covering 0x200000 bytes each)") in lines
    assert f"  direct map        [{DMAP_MIN_ADDRESS:#x}, {DMAP_MAX_ADDRESS:#x})" in lines
    assert "    dump_avail      0x19000       0x1000        0x1000" in lines
    assert "    pmap            0x1b000       0x800000      0x800000" in lines
    assert "  dump_avail        [0x1000, 0x9f000) [0x100000, 0x2000000)" in lines
    assert "  dumped pages      8093 (31.6 MiB), all in the file" in lines
    assert "  problems          none" in lines


def test_minidump_v1_text(images, capsys):
    out = run_info(capsys, images["v1"])
    assert "amd64 minidump, version 1" in out and "PTEs covering 0x1000 bytes each" in out
    assert "dump_avail        none (bit = page frame number)" in out
    assert "    dump_avail" not in out  # no such section before v3


def test_kerneldumpheader_text(images, capsys):
    out = run_info(capsys, images["kdh"])
    assert "  kerneldumpheader  'FreeBSD Kernel Dump', dump at offset 0x200" in out
    assert "    hostname        crashbox" in out
    assert "    panicstring     page fault while in kernel mode" in out
    assert "    dumptime        1700000000 (2023-11-14T22:13:20+00:00)" in out
    assert "    parity          ok" in out
    assert "    pmap            0x1b200" in out  # offsets are in the file given


def test_elf_and_raw_text(images, capsys):
    out = run_info(capsys, images["elf"])
    assert "amd64 ELF full dump (EI_OSABI 255 STANDALONE)" in out
    assert "PA [0x100000, 0x2000000) at offset 0x9f000" in out
    out = run_info(capsys, images["raw"])
    assert "raw physical memory image" in out and "physical runs     1 covering 0x2000000 (32.0 MiB)" in out


def test_json(images, capsys):
    facts = json.loads(run_info(capsys, images["kdh"], "--json"))
    assert facts["format"] == "minidump" and facts["version"] == 3 and facts["dump_offset"] == 512
    assert facts["header"]["kernbase"] == VM_MIN_KERNEL_ADDRESS and facts["header"]["dumpavailsize"] == 0x1000
    assert facts["sections"]["bitmap"] == {"offset": 0x1A200, "size": 0x1000, "length": 0x1000}
    assert facts["dump_avail"] == [[0x1000, 0x9F000], [0x100000, 0x2000000]]
    assert facts["dumped_pages"] == facts["pages_in_file"] == 8093
    assert facts["kerneldumpheader"]["hostname"] == "crashbox" and facts["kerneldumpheader"]["blocksize"] == 512
    assert facts["problems"] == []


def test_problems_are_listed(images, capsys, tmp_path):
    path = tmp_path / "short"
    with open(images["v3"], "rb") as f:
        path.write_bytes(f.read(0x81B000 + 0x10 * 4096))
    out = run_info(capsys, str(path))
    assert f"{8093 - 16} missing from the file" in out
    assert "page data at offset 0x82b000: page data truncated" in out


def test_bad_input_raises_for_the_cli(tmp_path):
    """The CLI prints DumpFormatError on one line and exits 2; info itself just raises it."""
    path = tmp_path / "v4"
    path.write_bytes(b"minidump FreeBSD/amd64\0\0" + (4).to_bytes(4, "little") + bytes(4096))
    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    with pytest.raises(DumpFormatError) as exc:
        info.run(parser.parse_args([str(path)]))
    assert str(exc.value).startswith(f"{path}: version at offset 0x18: wrong minidump version. expected 3 got 4")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from kvm_vol.cli import main

    path = tmp_path / "trunc"
    path.write_bytes(b"minidump FreeBSD/amd64\0\0\3\0")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"kvm-vol: error: {path}: header at offset 0x0: truncated header: 26 bytes\n"
