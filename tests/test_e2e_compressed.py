"""Compressed vmcores (savecore -z: .gz, dumpon -Z: .zst) open directly through vol."""

import gzip
import hashlib
import os

import pytest
import zstandard

from conftest import run_vol, run_vol_json
from test_e2e_errors import _assert_one_line_error
from test_e2e_pslist import expected_rows, strip


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("kind", ["gz", "zst"])
@pytest.mark.parametrize("fmt", ["vmcore", "full"])
def test_compressed_dump(forged_images, tmp_path, kind, fmt):
    from kvm_vol.formats.compressed import cache_dir

    paths, manifest = forged_images["15"]
    raw = open(paths[fmt], "rb").read()
    comp = tmp_path / f"vmcore.0.{fmt}-{kind}.{kind}"  # a stem of its own in the shared cache
    comp.write_bytes(gzip.compress(raw, 1) if kind == "gz" else zstandard.ZstdCompressor(level=1).compress(raw))
    before = _sha(comp)
    rows = strip(run_vol_json("-f", str(comp), "freebsd.pslist"))
    assert rows == expected_rows(manifest)
    assert _sha(comp) == before  # the evidence is untouched
    copies = [p for p in cache_dir().iterdir() if p.name.startswith(comp.name[: -len(kind) - 1])]
    assert len(copies) == 1 and copies[0].stat().st_size == len(raw)
    mtime = copies[0].stat().st_mtime_ns
    assert strip(run_vol_json("-f", str(comp), "freebsd.pslist")) == rows
    assert copies[0].stat().st_mtime_ns == mtime  # reused, not decompressed again


def test_truncated_gzip_is_one_clear_line(forged_images, tmp_path):
    paths, _ = forged_images["14"]
    data = gzip.compress(open(paths["vmcore"], "rb").read(), 1)
    bad = tmp_path / "vmcore.1.gz"
    bad.write_bytes(data[: len(data) // 2])
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, str(bad), "gzip")


def test_kvm_vol_info_reads_compressed(forged_images, tmp_path):
    from kvm_vol.formats import open_dump

    paths, manifest = forged_images["14"]
    comp = tmp_path / "vmcore.2.gz"
    comp.write_bytes(gzip.compress(open(paths["vmcore"], "rb").read(), 1))
    with open_dump(str(comp)) as dump:
        info = dump.info()
    assert info["format"] == "minidump"
    assert [list(r) for r in dump.dump_avail] == manifest["dump_avail"]


def test_decompression_leaves_free_space(forged_images, tmp_path, monkeypatch):
    """A stream that would fill the cache's disk stops with one line, before writing anything big."""
    paths, _ = forged_images["14"]
    comp = tmp_path / "vmcore.2.gz"
    comp.write_bytes(gzip.compress(open(paths["vmcore"], "rb").read(), 1))
    monkeypatch.setenv("KVM_VOL_DECOMPRESS_RESERVE", str(1 << 62))  # more than any disk has free
    proc = run_vol("-q", "-f", str(comp), "freebsd.pslist")
    _assert_one_line_error(proc, str(comp), "decompression stopped after 0x0 bytes")


def test_decompression_stops_midway_when_the_disk_fills(tmp_path, monkeypatch):
    """Free space is checked as the copy grows; the partial copy is removed."""
    from kvm_vol.errors import DumpFormatError
    from kvm_vol.formats import compressed

    comp = tmp_path / "zeros.gz"
    comp.write_bytes(gzip.compress(bytes(8 << 20), 9))  # 8 MiB from a few KiB: an inflating stream
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KVM_VOL_DECOMPRESS_RESERVE", "0")
    monkeypatch.setattr(compressed, "_RESERVE_CHECK", 1 << 20)
    calls = []

    class Fs:  # plenty at the start, then nothing left
        f_frsize = 4096

        def __init__(self, free):
            self.f_bavail = free // 4096

    def statvfs(_directory):
        calls.append(1)
        return Fs(1 << 40 if len(calls) == 1 else 0)

    monkeypatch.setattr(compressed.os, "statvfs", statvfs)
    with pytest.raises(DumpFormatError, match=r"decompression stopped after 0x100000 bytes: only 0 MiB left free"):
        compressed.decompressed_copy(str(comp))
    assert len(calls) == 2
    assert [p for p in (tmp_path / "cache").rglob("*") if not p.is_dir()] == []  # no partial copy left
