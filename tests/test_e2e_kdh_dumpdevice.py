"""What dumpon(8) leaves on a dump device, read through ``vol`` end to end.

* ``dumpon -z``/``-Z``: a kerneldumpheader saying gzip or zstd, the compressed
  stream (``dumplength`` bytes), unused space up to ``dumpextent``, the
  trailer - read directly, through a cached decompressed copy;
* ``dumpon -k``: an encrypted dump (key section after the leader) - refused
  with one line that says how to decrypt, and described by ``kvm-vol info``.
"""

import gzip
import hashlib
import json

import pytest

from conftest import run_vol, run_vol_json
from test_e2e_errors import _assert_one_line_error
from test_e2e_pslist import expected_rows, strip
from kvm_vol import cli
from kvm_vol.forge import devdumps
from kvm_vol.forge.writers import wrap_kdh
from kvm_vol.formats import compressed, open_dump
from kvm_vol.formats.kdh import KDH_SIZE


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("method", [devdumps.COMP_GZIP, devdumps.COMP_ZSTD])
@pytest.mark.parametrize("fmt,before", [("vmcore", 0), ("full", devdumps.SIZEOF_METADATA)])
def test_compressed_dump_on_device(forged_images, tmp_path, method, fmt, before):
    paths, manifest = forged_images["14"]
    dev = tmp_path / f"dumpdev-{fmt}-{method}"
    kdh = devdumps.write_compressed_kdh(paths[fmt], str(dev), method=method, versionstring=manifest["banner"])
    if before:  # a copy of the whole partition: the leader is found from the trailer
        area = dev.read_bytes()
        dev.write_bytes(b"\xa5" * before + area)
    with open(paths[fmt], "rb") as fh:
        inner = fh.read()
    assert kdh.dumplength < kdh.dumpextent  # the stream is shorter than the space reserved for it
    region = compressed.compressed_region(str(dev))
    assert (region.kind, region.offset, region.length) == (
        {1: "gzip", 2: "zstd"}[method], before + 512, kdh.dumplength)
    before_sha = _sha(dev)
    assert strip(run_vol_json("-f", str(dev), "freebsd.pslist")) == expected_rows(manifest)
    assert _sha(dev) == before_sha
    with open_dump(str(dev)) as dump:
        assert dump.kdh.compression == method and dump.decompressed_from["offset"] == before + 512
        with open(dump.decompressed_from["copy"], "rb") as fh:
            assert fh.read() == inner


def test_kernel_gzip_is_plain_gzip():
    """The kernel's minimal-header stream is an ordinary gzip member (savecore keeps it as vmcore.N.gz)."""
    data = bytes(range(256)) * 100
    stream = devdumps.kernel_gzip(data)
    assert stream[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" and gzip.decompress(stream) == data


def test_info_on_compressed_device_dump(forged_images, tmp_path, capsys):
    paths, manifest = forged_images["14"]
    dev = tmp_path / "dumpdev-info"
    devdumps.write_compressed_kdh(paths["vmcore"], str(dev), method=devdumps.COMP_ZSTD,
                                  versionstring=manifest["banner"])
    assert cli.main(["info", str(dev)]) == 0
    out = capsys.readouterr().out
    assert "zstd stream" in out and "at offset 0x200" in out and "compression     zstd" in out
    assert "minidump, version 3" in out
    assert cli.main(["info", "--json", str(dev)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kerneldumpheader"]["compression_name"] == "zstd" and info["decompressed_from"]["method"] == "zstd"


def test_damaged_compressed_device_dumps(forged_images, tmp_path):
    paths, manifest = forged_images["14"]
    dev = tmp_path / "dumpdev-cut"
    kdh = devdumps.write_compressed_kdh(paths["vmcore"], str(dev), method=devdumps.COMP_GZIP,
                                        versionstring=manifest["banner"])
    data = bytearray(dev.read_bytes())
    # the stream corrupted half-way
    bad = tmp_path / "dumpdev-corrupt"
    mid = KDH_SIZE + kdh.dumplength // 2
    bad.write_bytes(bytes(data[:mid]) + bytes(64) + bytes(data[mid + 64:]))
    _assert_one_line_error(run_vol("-q", "-f", str(bad), "freebsd.pslist"), str(bad), "gzip stream is corrupt")
    # a header that says gzip in front of an uncompressed minidump
    liar = tmp_path / "dumpdev-liar"
    wrap_kdh(paths["vmcore"], str(liar), versionstring=manifest["banner"], compression=1)
    _assert_one_line_error(run_vol("-q", "-f", str(liar), "freebsd.pslist"), str(liar),
                           "compressed (gzip)", "does not start with a gzip header")
    # a dumplength that runs past the end of the file
    short = tmp_path / "dumpdev-short"
    short.write_bytes(bytes(data[:KDH_SIZE + 4096]))  # leader, the stream's start, no trailer
    _assert_one_line_error(run_vol("-q", "-f", str(short), "freebsd.pslist"), str(short),
                           "kerneldumpheader.dumplength", "past the end of the file")


def test_encrypted_dump(forged_images, tmp_path, capsys):
    paths, manifest = forged_images["14"]
    dev = tmp_path / "vmcore_encrypted.0"
    key = devdumps.pack_dumpkey(devdumps.ENC_AES_256_CBC, iv=bytes(range(16)), encrypted_key=b"\xa5" * 256)
    wrap_kdh(paths["vmcore"], str(dev), versionstring=manifest["banner"], dumpkey=key)
    before = _sha(dev)
    proc = run_vol("-q", "-f", str(dev), "freebsd.pslist")
    _assert_one_line_error(proc, str(dev), "encrypted (dumpkeysize 512)", "AES-256-CBC", "decryptcore")
    assert _sha(dev) == before
    assert cli.main(["info", str(dev)]) == 0
    out = capsys.readouterr().out
    assert "encrypted kernel dump" in out and "AES-256-CBC" in out and "256-byte encrypted key" in out
    assert "dumpkeysize     512" in out and "decryptcore" in out


def test_random_damage_to_compressed_device_dumps(tmp_path):
    """Damaged headers and streams give DumpFormatError naming the file, or a copy - nothing else."""
    import random

    from kvm_vol.errors import DumpFormatError

    rnd = random.Random(7)
    inner = tmp_path / "inner"
    inner.write_bytes(b"minidump FreeBSD/amd64" + bytes(range(256)) * 64 + bytes(8192))
    for method in (devdumps.COMP_GZIP, devdumps.COMP_ZSTD):
        good = tmp_path / f"good-{method}"
        devdumps.write_compressed_kdh(str(inner), str(good), method=method, versionstring="FreeBSD 14.3-RELEASE")
        pristine = good.read_bytes()
        for i in range(60):
            data = bytearray(pristine)
            for _ in range(rnd.randrange(1, 6)):
                pos = rnd.choice((rnd.randrange(KDH_SIZE), rnd.randrange(len(data))))
                data[pos] = rnd.randrange(256)
            if rnd.random() < 0.3:
                del data[rnd.randrange(KDH_SIZE, len(data)):]
            path = tmp_path / f"bad-{method}-{i}"
            path.write_bytes(bytes(data))
            try:
                region = compressed.compressed_region(str(path))
                if region is not None:
                    copy = compressed.decompressed_copy(str(path), region=region)
                    assert copy.stat().st_size > 0
            except DumpFormatError as exc:
                assert exc.path == str(path)


def test_unwritable_cache_is_one_line(forged_images, tmp_path, monkeypatch):
    """No room for the decompressed copy (here: kvm-vol's cache path is a file) stops vol with one line."""
    paths, manifest = forged_images["14"]
    dev = tmp_path / "dumpdev-nocache"
    devdumps.write_compressed_kdh(paths["vmcore"], str(dev), method=devdumps.COMP_GZIP,
                                  versionstring=manifest["banner"])
    cache = tmp_path / "cache"
    (cache / "volatility3").mkdir(parents=True)
    (cache / "kvm-vol").write_bytes(b"")  # where kvm-vol's decompressed/ directory should be
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    proc = run_vol("-q", "-f", str(dev), "freebsd.pslist")
    _assert_one_line_error(proc, str(dev), "cannot write its decompressed copy")
