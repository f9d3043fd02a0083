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


@pytest.fixture(scope="module")
def fuzz_base(session_dir):
    """The fuzz runs' machine (14.3 amd64 demo) with its ISF installed for ``vol``."""
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    pack = pack_for_release("14")
    forged = build.build(pack)
    (user_symbols_dir() / "freebsd").mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(user_symbols_dir() / "freebsd" / f"fuzz-{pack}.json.xz"))
    return forged


def test_pipe_whose_struct_pipe_is_unreadable(fuzz_base, tmp_path):
    """seed 3 (all plugins per case): ``truncate`` raw image cut at 0x38d27c6, ``freebsd.files``.

    The ``struct file`` of a pipe was readable but its ``struct pipe`` was
    not: ``pipe_peer`` stayed None and formatting it raised TypeError.  The
    row now says the pipe was unreadable.
    """
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=3, index=496, draw_from=mutate.DEVICE_ERA_MUTATIONS)
    assert (case.mutation, case.fmt, case.detail) == ("truncate", "raw", "truncated to 0x38d27c6")
    proc = run_vol("-q", "-r", "json", "-f", case.path, "freebsd.files")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    import json

    pipes = [r for r in json.loads(proc.stdout) if r["TYPE"] == "PIPE"]
    assert pipes and any("unreadable" in r["DETAILS"] for r in pipes), pipes


def test_pipe_details_without_a_peer():
    from kvm_vol.kvm.files import FileRecord, pipe_details

    rec = FileRecord(fd="3", type="PIPE", flags=0, offset=0)
    rec.data, rec.details = 0xFFFFF80003A00000, "unreadable (PagedInvalidAddressException)"
    assert pipe_details(rec, {}) == "pipe 0xfffff80003a00000 unreadable (PagedInvalidAddressException)"


def test_terminal_escapes_in_names_are_shown_escaped(fuzz_base, tmp_path):
    """A name-cache entry holding ESC [ 2 J BEL (clear screen, bell) reaches the analyst as text:
    ``\\x1b[2J\\x07``, as FreeBSD's procstat/ps pass strings through vis(3)."""
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=5, index=76, mutation="vnode-names")
    assert case.fmt == "full" and "nc_name = b'\\x1b[2J\\x07" in case.detail
    proc = run_vol("-q", "-f", case.path, "freebsd.files")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "\\x1b[2J\\x07" in proc.stdout


def test_printable():
    from kvm_vol.volatility import printable

    assert printable("/usr/bin/sh") == "/usr/bin/sh"
    assert printable("a\tb\nc\x1b[0m\x7f\x9b\u200e\ufffd") == "a\\tb\\nc\\x1b[0m\\x7f\\x9b\\u200e\ufffd"


def test_absurd_pargs_length_is_reported(fuzz_base, tmp_path):
    """seed 3, ``pargs``: ``p_args->ar_length = 0x80000000`` on a minidump (no user stack to fall
    back on).  The arguments are '-' and a warning says why, instead of silence."""
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=3, index=2, draw_from=mutate.EVERY_MUTATION)
    assert case.detail == "pid 1021 p_args->ar_length = 0x80000000"
    proc = run_vol("-q", "-f", case.path, "freebsd.psargs", "--pid", "1021")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pid 1021: p_args at 0x" in proc.stderr and "ar_length 2147483648 exceeds ARG_MAX" in proc.stderr
    assert proc.stdout.splitlines()[-1].split("\t")[3:] == ["-", "-"]


def test_descriptor_count_the_kernel_never_sets(fuzz_base, tmp_path):
    """``file-table``: ``fdt_nfiles`` 20 -> 100000 (below the old bound of 2**20).

    Walking it read the memory after the table as 100,000 descriptor slots,
    any pointer there taken for a ``struct file``, silently.  fdgrowtable()
    keeps the count NDFILE or a multiple of NDENTRIES; anything else is now
    refused with a warning naming the process.
    """
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=9, index=0, mutation="file-table")
    assert case.detail == "pid 742 fdt_nfiles 20 -> 0x186a0"
    proc = run_vol("-q", "-f", case.path, "freebsd.files", "--pid", "742")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pid 742: fdt_nfiles is 100000, which the kernel never sets" in proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("742\t")]
    assert rows and all(not r[2].isdigit() for r in rows)  # only text/cwd/root: no descriptor rows


@pytest.mark.parametrize("plugin", ["freebsd.pslist", "freebsd.pstree"])
def test_start_time_out_of_datetime_range(fuzz_base, tmp_path, plugin):
    """seed 3 (every plugin), ``minidump-bitmap``, 13 bits flipped: a page of ``struct pstats``
    came from the wrong place, and ``p_stats->p_start`` gave the year 966,710,634.
    fromtimestamp() raised ValueError in pslist and pstree; the time is now unreadable."""
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=3, index=6491, draw_from=mutate.EVERY_MUTATION)
    assert (case.mutation, case.detail) == ("minidump-bitmap", "13 bitmap bits flipped")
    proc = run_vol("-q", "-f", case.path, plugin)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(line.split("\t") for line in lines if "CREATION TIME" in line)
    column = header.index("CREATION TIME")
    rows = [line.split("\t") for line in lines[lines.index("\t".join(header)) + 1:] if line.strip()]
    # Both processes the damaged allproc still reaches: their pstats page is the wrong one, so
    # the time is shown unreadable ("-"), not N/A (unknown) and not a traceback.
    assert rows and all(r[column] == "-" for r in rows), rows


def test_utc_time_bounds():
    from kvm_vol.freebsd import utc_time

    assert utc_time(0).isoformat() == "1970-01-01T00:00:00+00:00"
    assert utc_time(30506210000000000) is None and utc_time(-(1 << 63)) is None and utc_time(1e300) is None


def test_swap_when_swtailq_is_unreadable(fuzz_base, tmp_path):
    """seed 3 (every plugin), ``minidump-bitmap``, 61 bits flipped: the page holding the global
    ``swtailq`` left the dump.  The read escaped to Volatility's generic "unable to read a
    requested page" text (outcome ``unclear``); now one warning names swtailq and its address."""
    from kvm_vol.forge import mutate

    case = mutate.make_case(fuzz_base, str(tmp_path), seed=3, index=7379, draw_from=mutate.EVERY_MUTATION)
    assert (case.mutation, case.detail) == ("minidump-bitmap", "61 bitmap bits flipped")
    proc = run_vol("-q", "-f", case.path, "freebsd.swap")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "swtailq at 0xffffffff" in proc.stderr and "is unreadable" in proc.stderr
    assert "unable to read a requested page" not in proc.stderr


def test_allproc_unreadable_is_a_warning(caplog):
    """The same damage as swtailq's, on allproc's page: no processes and one warning, not a
    page error escaping from iter_procs (every process plugin starts there)."""
    from types import SimpleNamespace

    from volatility3.framework import exceptions

    from kvm_vol.kvm import procs

    class Kernel:
        offset = 0xFFFFFFFF80000000

        def get_symbol(self, name):
            return SimpleNamespace(address=0x1A3B460)

        def get_type(self, name):
            return name

        def object(self, **kwargs):
            raise exceptions.InvalidAddressException("kernel", 0xFFFFFFFF81A3B460, "page not in the dump")

    with caplog.at_level("WARNING"):
        assert list(procs.iter_procs(SimpleNamespace(modules={"kernel": Kernel()}), "kernel")) == []
    assert "allproc at 0xffffffff81a3b460 is unreadable" in caplog.text and "no processes listed" in caplog.text
