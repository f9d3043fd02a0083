"""Bad input through ``vol``: one line naming the file and field, non-zero exit, no traceback.

Also the missing-ISF case: a FreeBSD image whose kernel has no ISF yet stops
with one line naming the kernel and the ``kvm-vol isf`` command.
"""

import hashlib
import shutil
import struct

import pytest

from conftest import run_vol


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _corrupt(src, dst, offset, data):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("kvm-vol:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_truncated_minidump(forged_images, tmp_path):
    paths, _ = forged_images["14"]
    bad = tmp_path / "truncated.vmcore"
    with open(paths["vmcore"], "rb") as fh:
        bad.write_bytes(fh.read(0x3000))
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, str(bad))


def test_bitmap_larger_than_file(forged_images, tmp_path):
    paths, _ = forged_images["14"]
    bad = tmp_path / "bigbitmap.vmcore"
    _corrupt(paths["vmcore"], bad, 32, struct.pack("<I", 0x7FFFF000))
    before = _sha(bad)
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, str(bad), "bitmap")
    assert _sha(bad) == before  # evidence untouched


def test_unsupported_minidump_version(forged_images, tmp_path):
    paths, _ = forged_images["14"]
    bad = tmp_path / "v4.vmcore"
    _corrupt(paths["vmcore"], bad, 24, struct.pack("<I", 4))
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, str(bad), "version")


def test_elf_core_without_pt_load(forged_images, tmp_path):
    paths, _ = forged_images["14"]
    bad = tmp_path / "noload.full"
    shutil.copyfile(paths["full"], bad)
    with open(bad, "r+b") as fh:
        hdr = fh.read(64)
        phoff = struct.unpack_from("<Q", hdr, 32)[0]
        phnum = struct.unpack_from("<H", hdr, 56)[0]
        for i in range(phnum):
            fh.seek(phoff + 56 * i)
            fh.write(struct.pack("<I", 4))  # PT_NOTE instead of PT_LOAD
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, str(bad), "PT_LOAD")


def test_missing_isf_names_kernel_and_command(forged_images, tmp_path):
    """A kernel nobody made an ISF for: one line with its banner and the kvm-vol isf command."""
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release

    forged = build.build(pack_for_release("14"))
    paths = forged.write(str(tmp_path), stem="unknown", formats=("vmcore", "raw"))
    for fmt in ("vmcore", "raw"):
        data = bytearray(open(paths[fmt], "rb").read())
        old = forged.kernel.banner.encode()
        new = old.replace(b"GENERIC", b"CUSTOM1")
        assert data.count(old) >= 1
        data = data.replace(old, new)
        open(paths[fmt], "wb").write(bytes(data))
        proc = run_vol("-q", "-f", paths[fmt], "freebsd.pslist")
        _assert_one_line_error(proc, "CUSTOM1", "kvm-vol isf --elf")


def test_not_freebsd_at_all(tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\0" * (1 << 20))
    proc = run_vol("-q", "-f", str(junk), "freebsd.pslist")
    _assert_one_line_error(proc, "no FreeBSD kernel")


def test_known_kernel_that_does_not_translate(forged_images, tmp_path):
    """The ISF matches the banner, but the minidump's kernbase is damaged: say exactly that."""
    paths, manifest = forged_images["14"]
    bad = tmp_path / "badkernbase.vmcore"
    _corrupt(paths["vmcore"], bad, 40, struct.pack("<Q", 0x1000))
    proc = run_vol("-q", "-f", str(bad), "freebsd.pslist")
    _assert_one_line_error(proc, manifest["banner"].splitlines()[0], "do not translate")  # the release line
