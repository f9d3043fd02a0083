"""Regression tests for what the long fuzz runs found (docs/fuzzing.md lists the classes).

Each test rebuilds the failing input by hand, so it does not depend on the
fuzzer drawing the same case again.
"""

import struct

import pytest

from conftest import run_vol
from test_e2e_errors import _assert_one_line_error
from kvm_vol.errors import DumpFormatError
from kvm_vol.formats import open_dump


def _patch_phdr(src, dst, index, field_offset, value):
    with open(src, "rb") as fh:
        data = bytearray(fh.read())
    phoff = struct.unpack_from("<Q", data, 32)[0]
    struct.pack_into("<Q", data, phoff + 56 * index + field_offset, value)
    with open(dst, "wb") as fh:
        fh.write(data)
    return phoff + 56 * index


@pytest.mark.parametrize("paddr", [0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFF000])
def test_elf_segment_wrapping_the_address_space(forged_images, tmp_path, paddr):
    """seed 1: ``elf-phdrs`` ``phdr 1 p_paddr = 0xffffffffffffffff``.

    The segment ended past 2**64; the banner scan then "found" a banner at
    physical 0x100000000001fffff and printed 256 NUL bytes as its text.
    """
    paths, _ = forged_images["14"]
    bad = str(tmp_path / "wrap.full")
    at = _patch_phdr(paths["full"], bad, 1, 24, paddr)  # p_paddr
    with pytest.raises(DumpFormatError) as exc:
        open_dump(bad)
    assert exc.value.field == "phdr[1]" and exc.value.offset == at
    assert "runs past the top of the physical address space" in exc.value.message
    proc = run_vol("-q", "-f", bad, "freebsd.pslist")
    _assert_one_line_error(proc, bad, "phdr[1]", "runs past the top")
    assert "\0" not in proc.stderr


def test_banner_in_messages_is_a_printable_c_string():
    """The diagnosis never carries NULs or control characters into the one-line message."""
    from kvm_vol.layers import kernel as K

    class Layer:
        def scan(self, context, scanner):
            yield 0x1000

        def read(self, offset, length, pad=False):
            return (b"FreeBSD 14.3-RELEASE \x1b[2J\x07 GENERIC\0garbage" + bytes(length))[:length]

    K.LAST_DIAGNOSIS.clear()
    K._diagnose(Layer(), None, {})
    banner = K.LAST_DIAGNOSIS["banner"]
    assert banner == "FreeBSD 14.3-RELEASE \\x1b[2J\\x07 GENERIC" and banner.isprintable()
