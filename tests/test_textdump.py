"""Textdumps (textdump(4)): recognised, refused by vol with directions, listed and safely extracted.

The forge writes them as db_textdump.c does on the device (archive written
backwards between leader and trailer) and as savecore saves them (a plain
ustar stream); GNU tar reading the latter is an independent check of the
header format.  The hostile archives check that extraction never writes
outside its directory, never follows a link and never trusts a size.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from conftest import run_vol
from test_e2e_errors import _assert_one_line_error
from kvm_vol import cli
from kvm_vol.errors import DumpFormatError
from kvm_vol.forge import devdumps
from kvm_vol.formats import open_dump, textdump
from kvm_vol.formats.kdh import KDH_SIZE, TEXTDUMPMAGIC, KernelDumpHeader
from kvm_vol.formats.textdump import TEXTDUMP_BLOCKSIZE, pack_ustar_header, ustar_checksum


@pytest.fixture(scope="module")
def files():
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release

    forged = build.build(pack_for_release("14"))
    return forged, devdumps.textdump_files(forged, with_config=True)


@pytest.fixture(scope="module")
def dumps(files, tmp_path_factory):
    forged, content = files
    d = tmp_path_factory.mktemp("textdumps")
    paths = {}
    for name, form, before in (("partition", "device", devdumps.SIZEOF_METADATA), ("area", "device", 0),
                               ("textdump.tar.0", "savecore", 0)):
        paths[name] = str(d / name)
        devdumps.write_textdump(paths[name], content, form=form, before=before, versionstring=forged.kernel.banner,
                                panicstring="forge: synthetic dump")
    paths["textdump.tar.1.gz"] = str(d / "textdump.tar.1.gz")
    devdumps.gzip_file(paths["textdump.tar.0"], paths["textdump.tar.1.gz"])
    return paths


def kvm_vol(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("name", ["partition", "area", "textdump.tar.0", "textdump.tar.1.gz"])
def test_members_read_back(dumps, files, name):
    _, content = files
    with textdump.open_textdump(dumps[name]) as td:
        assert td.form == ("savecore" if name.startswith("textdump") else "device")
        assert [(m.name, b"".join(td.iter_data(m))) for m in td.members] == content
        assert not td.problems
        if td.form == "device":
            assert td.kdh.magic == TEXTDUMPMAGIC and td.kdh.dumplength == td.length
            assert td.kdh_offset == (devdumps.SIZEOF_METADATA if name == "partition" else 0)


def test_device_blocks_are_reversed(dumps, files):
    """The archive's first block (ddb.txt's header) is the block right below the trailer."""
    with open(dumps["area"], "rb") as fh:
        data = fh.read()
    trailer = len(data) - KDH_SIZE
    assert data[trailer:] == data[:KDH_SIZE] and data[:20].rstrip(b"\0") == TEXTDUMPMAGIC
    first = data[trailer - TEXTDUMP_BLOCKSIZE:trailer]
    assert first[:7] == b"ddb.txt" and first[257:262] == b"ustar"
    last_header = data[KDH_SIZE + TEXTDUMP_BLOCKSIZE:KDH_SIZE + 2 * TEXTDUMP_BLOCKSIZE]
    assert last_header[:11] == b"version.txt"  # version.txt's data block is lowest, its header above it


def test_gnu_tar_reads_the_savecore_form(dumps, files, tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar(1)")
    _, content = files
    subprocess.run(["tar", "xf", dumps["textdump.tar.0"], "-C", str(tmp_path)], check=True)
    for name, data in content:
        assert (tmp_path / name).read_bytes() == data
    with tarfile.open(dumps["textdump.tar.0"]) as tf:  # Python's reader agrees on names and sizes
        assert [(i.name, i.size) for i in tf.getmembers()] == [(n, len(d)) for n, d in content]


@pytest.mark.parametrize("name", ["partition", "textdump.tar.0", "textdump.tar.1.gz"])
def test_vol_refuses_with_directions(dumps, name):
    """(A .gz textdump is read through its decompressed copy; the message still names the .gz.)"""
    before = _sha(dumps[name])
    proc = run_vol("-q", "-f", dumps[name], "freebsd.pslist")
    _assert_one_line_error(proc, dumps[name], "textdump", "5 files", "ddb.txt, config.txt, msgbuf.txt",
                           f"kvm-vol textdump list {dumps[name]}", "kvm-vol textdump extract")
    assert _sha(dumps[name]) == before


def test_open_dump_refuses(dumps):
    with pytest.raises(DumpFormatError) as exc:
        open_dump(dumps["partition"])
    assert exc.value.offset == devdumps.SIZEOF_METADATA and exc.value.field == "kerneldumpheader"


def test_list(dumps, files, capsys):
    code, out, err = kvm_vol(capsys, "textdump", "list", dumps["partition"])
    assert code == 0 and not err
    assert "kerneldumpheader 'FreeBSD Text Dump' at offset 0x10000" in out and "'forge: synthetic dump'" in out
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert [(int(r[0]), r[-1]) for r in rows] == [(len(d), n) for n, d in files[1]]
    assert out.splitlines()[-1] == "5 files"
    code, out, _ = kvm_vol(capsys, "textdump", "list", "--json", dumps["textdump.tar.0"])
    info = json.loads(out)
    assert code == 0 and info["form"] == "savecore" and [m["name"] for m in info["members"]] == [
        "ddb.txt", "config.txt", "msgbuf.txt", "panic.txt", "version.txt"]


def test_info(dumps, capsys):
    code, out, err = kvm_vol(capsys, "info", dumps["partition"])
    assert code == 0 and not err
    assert "FreeBSD textdump (ddb output, not memory)" in out and "5 files" in out
    assert "msgbuf.txt" in out and "    hostname        forge.example.org" in out
    code, out, _ = kvm_vol(capsys, "info", "--json", dumps["textdump.tar.0"])
    assert json.loads(out)["format"] == "textdump"


def test_extract(dumps, files, tmp_path, capsys):
    before = _sha(dumps["partition"])
    out_dir = tmp_path / "out"
    code, out, err = kvm_vol(capsys, "textdump", "extract", dumps["partition"], "-o", str(out_dir))
    assert code == 0 and not err
    for name, data in files[1]:
        path = out_dir / name
        assert path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o600
    assert sorted(os.listdir(out_dir)) == sorted(n for n, _ in files[1])
    assert _sha(dumps["partition"]) == before
    # never into a directory that already holds something
    code, _, err = kvm_vol(capsys, "textdump", "extract", dumps["partition"], "-o", str(out_dir))
    assert code == 2 and err.count("\n") == 1 and "not empty" in err


# ---------------------------------------------------------------- hostile archives

def _header(name, size, typeflag=b"0", linkname=b""):
    raw = bytearray(pack_ustar_header("x", size, 0))
    raw[0:100] = name.ljust(100, b"\0")[:100]
    raw[156:157] = typeflag
    raw[157:257] = linkname.ljust(100, b"\0")
    raw[148:156] = (b"%6o" % ustar_checksum(raw)[0]).ljust(8, b"\0")
    return bytes(raw)


def _member(name, data=b"", **kw):
    blocks = [_header(name, len(data), **kw)]
    for i in range(0, len(data), TEXTDUMP_BLOCKSIZE):
        blocks.append(data[i:i + TEXTDUMP_BLOCKSIZE].ljust(TEXTDUMP_BLOCKSIZE, b"\0"))
    return blocks


def test_hostile_archive_extracts_nothing_outside(tmp_path, capsys):
    blocks = (_member(b"../../escape.txt", b"evil") + _member(b"/tmp/abs.txt", b"evil")
              + _member(b"ok/../../../up.txt", b"evil") + _member(b"esc\x1b[2Jape.txt", b"evil")
              + _member(b"link", typeflag=b"2", linkname=b"/etc/passwd")
              + _member(b"hard", typeflag=b"1", linkname=b"/etc/shadow")
              + _member(b"good.txt", b"fine") + _member(b"good.txt", b"again")
              + _member(b"sub/dir/./nested.txt", b"nested")
              + [_header(b"huge.txt", 0o77777777777)] + [b"A" * TEXTDUMP_BLOCKSIZE])
    for form in ("device", "savecore"):
        work = tmp_path / form
        work.mkdir()
        path = str(work / "hostile")
        devdumps.write_textdump(path, [], form=form, blocks=blocks, before=0)
        out_dir = work / "deep" / "out"
        code, out, err = kvm_vol(capsys, "textdump", "extract", path, "-o", str(out_dir))
        assert code == 1 and "Traceback" not in err
        found = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() or p.is_symlink())
        assert found == ["deep/out/good.txt", "deep/out/huge.txt", "deep/out/sub/dir/nested.txt", "hostile"]
        assert (out_dir / "good.txt").read_bytes() == b"fine"  # the duplicate did not overwrite it
        assert (out_dir / "huge.txt").read_bytes() == b"A" * TEXTDUMP_BLOCKSIZE  # bounded by the data present
        lines = err.splitlines()
        assert all(line.startswith(f"kvm-vol: {path}: ") for line in lines), err
        skipped = [line for line in lines if "skipped" in line]
        assert len(skipped) == 7 and "tar member 0 at offset" in skipped[0]
        assert any("declares 8589934591 bytes" in line for line in lines)
        # a listing shows the escape sequence quoted, never raw
        code, out, _ = kvm_vol(capsys, "textdump", "list", path)
        assert code == 1 and "\x1b" not in out and "'esc\\x1b[2Jape.txt'" in out


def test_damaged_header_and_runaway_member_count(tmp_path, capsys):
    bad = bytearray(_header(b"ddb.txt", 5))
    bad[148:156] = b"0000000\0"
    path = str(tmp_path / "badsum")
    devdumps.write_textdump(path, [], form="savecore", blocks=[bytes(bad), bytes(TEXTDUMP_BLOCKSIZE)])
    code, out, err = kvm_vol(capsys, "textdump", "list", path)
    assert code == 1 and "0 files" in out and err.count("\n") == 1 and "bad header checksum" in err
    proc = run_vol("-q", "-f", path, "freebsd.pslist")
    _assert_one_line_error(proc, path, "textdump", "bad header checksum")

    many = str(tmp_path / "many")
    devdumps.write_textdump(many, [], form="device", before=0,
                            blocks=[_header(b"e%d" % i, 0) for i in range(textdump.MAX_MEMBERS + 10)])
    with textdump.open_textdump(many) as td:
        assert len(td.members) == textdump.MAX_MEMBERS and "more than" in td.problems[0]


def test_savecore_form_without_ustar_magic(dumps, tmp_path, capsys):
    """The first header's magic gone (docs/fuzzing.md listed this as a limit): still a textdump,
    reported as damaged, not scanned as memory (where version.txt's banner would be "found")."""
    data = bytearray(open(dumps["textdump.tar.0"], "rb").read())
    data[257:263] = bytes(6)
    path = str(tmp_path / "textdump.tar.2")
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    proc = run_vol("-q", "-f", path, "freebsd.pslist")
    _assert_one_line_error(proc, path, "FreeBSD textdump", "0 files", "bad header checksum")
    code, out, err = kvm_vol(capsys, "textdump", "list", path)
    assert code == 1 and "bad header checksum" in err
    # A name alone is not enough unless it is one the kernel writes.
    other = tmp_path / "notes.txt"
    other.write_bytes(b"notes.txt".ljust(TEXTDUMP_BLOCKSIZE, b"\0"))
    code, _, err = kvm_vol(capsys, "textdump", "list", str(other))
    assert code == 2 and "not a textdump" in err


@pytest.mark.parametrize("dumplength, needle", [(1000, "not a multiple of 512"), (1 << 40, "past the end")])
def test_textdump_header_pointing_nowhere(tmp_path, capsys, dumplength, needle):
    path = tmp_path / "kdh-text"
    kdh = KernelDumpHeader(magic=TEXTDUMPMAGIC, dumplength=dumplength, dumpextent=dumplength)
    path.write_bytes(kdh.pack() + bytes(4096))
    proc = run_vol("-q", "-f", str(path), "freebsd.pslist")
    _assert_one_line_error(proc, str(path), "kerneldumpheader.dumplength", needle)
    code, _, err = kvm_vol(capsys, "textdump", "list", str(path))
    assert code == 2 and err.count("\n") == 1 and needle in err


def test_not_a_textdump_and_missing_file(tmp_path, capsys):
    other = tmp_path / "raw"
    other.write_bytes(b"\x01" * 4096)
    code, _, err = kvm_vol(capsys, "textdump", "list", str(other))
    assert code == 2 and "not a textdump" in err and err.count("\n") == 1
    code, _, err = kvm_vol(capsys, "textdump", "list", str(tmp_path / "nope"))
    assert code == 2 and "No such file" in err and err.count("\n") == 1


def test_random_damage_never_escapes(dumps, tmp_path):
    """200 randomly damaged textdumps (both forms): only DumpFormatError, members bounded by the file,
    and extraction writes nothing outside its directory."""
    import random

    from kvm_vol.formats import textdumpcmd

    rnd = random.Random(20261126)
    for name in ("area", "textdump.tar.0"):
        with open(dumps[name], "rb") as fh:
            pristine = fh.read()
        for i in range(100):
            data = bytearray(pristine)
            for _ in range(rnd.randrange(1, 40)):
                pos = rnd.randrange(len(data))
                if rnd.random() < 0.5:  # aim at header fields: names, sizes, checksums, kdh
                    pos = (pos & ~511) + rnd.choice((0, 1, 99, 124, 130, 135, 148, 155, 156, 257, 345, 40, 44))
                    pos = min(pos, len(data) - 1)
                data[pos] = rnd.choice((0, 0x2F, 0x2E, 0x37, 0xFF, rnd.randrange(256)))
            if rnd.random() < 0.2:
                del data[rnd.randrange(len(data)):]
            work = tmp_path / f"{name}-{i}"
            work.mkdir()
            path = work / "td"
            path.write_bytes(bytes(data))
            try:
                td = textdump.probe_file(str(path))
            except DumpFormatError as exc:
                assert exc.path == str(path)
                continue
            if td is None:
                continue
            with td:
                assert len(td.members) <= textdump.MAX_MEMBERS
                assert all(m.data_offset + m.size <= td.length for m in td.members)
            args = type("Args", (), {"textdump_command": "extract", "file": str(path),
                                     "output": str(work / "out")})()
            assert textdumpcmd.run(args) in (0, 1)
            for p in work.rglob("*"):
                assert p == path or str(p).startswith(str(work / "out")), p


def test_ustar_prefix_only_in_posix_headers(tmp_path):
    """POSIX ustar joins ``prefix/name``; old GNU tar ("ustar  ") uses those bytes for times."""
    posix = bytearray(_header(b"f.txt", 0))
    posix[345:345 + 3] = b"dir"
    gnu = bytearray(posix)
    gnu[257:265] = b"ustar  \0"
    for raw in (posix, gnu):
        raw[148:156] = (b"%6o" % ustar_checksum(raw)[0]).ljust(8, b"\0")
    path = str(tmp_path / "prefix.tar")
    devdumps.write_textdump(path, [], form="savecore", blocks=[bytes(posix), bytes(gnu)])
    with textdump.open_textdump(path) as td:
        assert [m.name for m in td.members] == ["dir/f.txt", "f.txt"]


def test_leader_disagreeing_with_trailer(dumps, files, tmp_path, capsys):
    """Found by the seed-2 fuzz run: a partition copy whose leader was damaged passed for a raw
    memory image (the trailer-based search wants leader == trailer).  The trailer alone now makes
    it a textdump, as savecore -f would read it."""
    data = bytearray(open(dumps["partition"], "rb").read())
    leader = devdumps.SIZEOF_METADATA
    data[leader + 40:leader + 48] = (1 << 40).to_bytes(8, "big")
    path = tmp_path / "damaged-leader"
    path.write_bytes(bytes(data))
    proc = run_vol("-q", "-f", str(path), "freebsd.pslist")
    _assert_one_line_error(proc, str(path), "FreeBSD textdump", "5 files", "disagrees with the trailer")
    code, out, err = kvm_vol(capsys, "textdump", "list", str(path))
    assert code == 1 and out.splitlines()[-1] == "5 files" and "disagrees with the trailer" in err
    with textdump.open_textdump(str(path)) as td:
        assert [(m.name, b"".join(td.iter_data(m))) for m in td.members] == files[1]
