"""Live FreeBSD memory (``/dev/mem``, ``/dev/kmem``, ``/dev/null``) without a FreeBSD host.

Stand-ins: a forge raw image is physical memory byte for byte, so a copy of
it with a declared range list plays ``/dev/mem`` (a hole is punched into the
list where the machine keeps nothing); ``/dev/zero`` is a real character
device that reports size 0 and supports ``pread``; the forge machine's own
kernel-VA reader plays ``/dev/kmem``.  One test needs a real FreeBSD
``/dev/mem`` and runs only there, as root.
"""

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import run_vol

from volatility3.framework import contexts, exceptions, interfaces
from volatility3.framework.layers import physical as vphysical

from kvm_vol import freebsd as F
from kvm_vol import kvm
from kvm_vol.core import amd64 as A
from kvm_vol.errors import TranslationError
from kvm_vol.kvm import handle
from kvm_vol.layers import live

MiB = 1 << 20
#: A hole inside RAM where the forge machine keeps nothing: the kernel image
#: and boot page tables lie below 16 MiB, the object pool starts above 22 MiB.
HOLE = (16 * MiB, 17 * MiB)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _declared_ranges(manifest):
    """The machine's dump_avail with HOLE punched out of it."""
    out = []
    for start, end in manifest["dump_avail"]:
        if start < HOLE[0] < end:
            out += [(start, HOLE[0]), (HOLE[1], end)]
        else:
            out.append((start, end))
    return out


@pytest.fixture(scope="module")
def stand_in(forged_images, tmp_path_factory):
    """A private copy of the 14.x raw image (tests may write to it) and its manifest."""
    handle._refresh_symbol_cache()
    paths, manifest = forged_images["14"]
    path = tmp_path_factory.mktemp("live") / "mem"
    shutil.copyfile(paths["raw"], path)
    return str(path), manifest


def _pids(kd):
    return [int(p.p_pid) for p in kd.procs()]


# ----------------------------------------------------------------------
# the physical layer: declared ranges and holes

def test_stand_in_reads_ranges_and_refuses_holes(stand_in, monkeypatch):
    path, manifest = stand_in
    ranges = _declared_ranges(manifest)
    offsets = []
    real_pread = os.pread

    def recording_pread(fd, n, offset):
        offsets.append((offset, n))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", recording_pread)
    with kvm.open(None, path, ranges=ranges) as kd:
        phys = kd.context.layers[kd.physical_layer_name]
        assert phys.ranges == ranges
        with open(path, "rb") as fh:
            fh.seek(0x100000)
            assert phys.read(0x100000, 64) == fh.read(64)
        for bad in (HOLE[0], HOLE[1] - 8, 0x0, 0x9F000, manifest["ram_size"]):
            assert not phys.is_valid(bad, 8)
            with pytest.raises(exceptions.InvalidAddressException):
                phys.read(bad, 8)
        with pytest.raises(exceptions.InvalidAddressException):
            phys.read(HOLE[0] - 8, 16)  # runs from RAM into the hole
        # The kernel is found on top of the live layer and allproc walked through it.
        assert _pids(kd) == [p["pid"] for p in manifest["processes"]]
        assert kd.read(kd.symbol("version"), len(manifest["banner"])) == manifest["banner"].encode()
    # Nothing in a hole (or outside RAM) was ever read from the device.
    assert offsets
    for offset, n in offsets:
        assert any(s <= offset and offset + n <= e for s, e in ranges), hex(offset)


def test_read_only_by_default(stand_in):
    path, _ = stand_in
    before = _sha(path)
    with kvm.open(None, path, ranges=_declared_ranges(stand_in[1])) as kd:
        phys = kd.context.layers[kd.physical_layer_name]
        device = kd.context.layers[phys.config["base_layer"]].device
        assert device.open_flags & os.O_ACCMODE == os.O_RDONLY
        assert not device.writable
        version = kd.symbol("version")
        with pytest.raises(handle.KvmError, match="read-only"):
            kd.write(version, b"X")
        assert "read-only" in kd.geterr()
        with pytest.raises(exceptions.LayerException):
            phys.context.layers[phys.config["base_layer"]].write(0x100000, b"X")
        kd.procs()
    assert _sha(path) == before


def test_writable_open_writes_through_page_tables(stand_in, tmp_path):
    path, manifest = stand_in
    copy = tmp_path / "mem-rw"
    shutil.copyfile(path, copy)
    with kvm.open(None, str(copy), flags=os.O_RDWR, ranges=_declared_ranges(manifest)) as kd:
        version = kd.symbol("version")
        kd.write(version + 8, b"XX.Y")
        assert kd.read(version, 12) == b"FreeBSD XX.Y"
        before = _sha(copy)
        with pytest.raises(TranslationError):
            kd.write(0xFFFFFFFF00000000, b"never")
        assert _sha(copy) == before
    # The bytes landed at the kernel image's physical address (kernphys + offset in the image).
    pa = manifest["kernphys"] + version - A.KERNSTART
    with open(copy, "rb") as fh:
        fh.seek(pa)
        assert fh.read(12) == b"FreeBSD XX.Y"


def test_dump_refuses_write_and_stays_unopened_for_writing(forged_images):
    paths, manifest = forged_images["14"]
    before = _sha(paths["vmcore"])
    with kvm.open(None, paths["vmcore"], flags=os.O_RDWR) as kd:
        assert not kd.alive
        assert _pids(kd) == [p["pid"] for p in manifest["processes"]]
        assert kd.getloadavg() == tuple(manifest["loadavg"]["load"])  # from averunnable, not the host
        with pytest.raises(handle.KvmError, match="kvm_write not implemented for dead kernels"):
            kd.write(kd.symbol("version"), b"X")
        for name in kd.context.layers:
            layer = kd.context.layers[name]
            if isinstance(layer, vphysical.FileLayer):
                assert not layer._file.writable()
    assert _sha(paths["vmcore"]) == before


def test_process_address_spaces_through_pmaps(stand_in):
    """getprocs() and each process's user memory (its pm_cr3 page tables) over the live layer."""
    path, manifest = stand_in
    with kvm.open(None, path, ranges=_declared_ranges(manifest)) as kd:
        # KERN_PROC_ALL gives a record per thread, as the kernel's sysctl does.
        assert list(dict.fromkeys(r.pid for r in kd.getprocs())) == [p["pid"] for p in manifest["processes"]]
        with_env = [p for p in manifest["processes"] if p.get("env") and p["p_state"] != "PRS_ZOMBIE"]
        assert with_env
        for p in with_env:
            got = kd.kvm.env(p["pid"])
            assert (got.source, got.values) == ("ps_strings", p["env"]), got.reason
            layer_name, _why = kd.kvm.process_layer(kd.kvm.getprocs(F.KERN_PROC_PID, p["pid"])[0])
            assert kd.context.layers[layer_name].config["memory_layer"] == kd.physical_layer_name


# ----------------------------------------------------------------------
# opening rules (libkvm's _kvm_open)

def test_dev_null_is_the_no_memory_mode():
    with kvm.open(None, "/dev/null") as kd:
        assert kd.alive and isinstance(kd, handle.NoMemoryKvm)
        load = kd.getloadavg()
        assert len(load) == 3 and all(x >= 0 for x in load)
        assert len(kd.getloadavg(2)) == 2
        for call in (lambda: kd.read(A.KERNBASE, 8), kd.procs, lambda: kd.write(A.KERNBASE, b"x")):
            with pytest.raises(handle.KvmError, match="/dev/null"):
                call()
        assert "/dev/null" in kd.geterr()


def test_open_refusals(tmp_path):
    with pytest.raises(handle.KvmError, match="bad flags arg"):
        kvm.open(None, "/dev/null", flags=os.O_CREAT)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(handle.KvmError, match="empty file"):
        kvm.open(None, str(empty))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(handle.KvmError, match="FIFO"):
        kvm.open(None, str(fifo))  # refused before open(): opening would block
    with pytest.raises(live.MemDeviceError, match="FIFO"):
        live.MemDevice(str(fifo))
    with pytest.raises(handle.KvmError, match="No such file"):
        kvm.open(None, str(tmp_path / "missing"))


def test_size0_character_device():
    """/dev/zero: a character device reporting size 0, read with pread."""
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    assert live.device_size("/dev/zero") == 0
    with live.MemDevice("/dev/zero") as dev:
        assert dev.is_device and dev.size is None
        assert dev.open_flags & os.O_ACCMODE == os.O_RDONLY
        assert dev.read(0x123456789, 5000) == bytes(5000)
    ctx = contexts.Context()
    phys = live.build_live_layers(ctx, "/dev/zero", [(0x1000, 0x9F000), (0x100000, 0x200000)])
    ctx.add_layer(phys)
    base = ctx.layers[phys.config["base_layer"]]
    assert base.maximum_address == live.MAX_PHYS_ADDR - 1  # not -1, as FileLayer makes it
    assert phys.maximum_address == 0x1FFFFF
    assert phys.read(0x1F000, 0x2000) == bytes(0x2000)
    with pytest.raises(exceptions.InvalidAddressException):
        phys.read(0x9F000, 1)
    # Without ranges a size-0 device that is not /dev/mem cannot be memory.
    with pytest.raises(handle.KvmError, match="not FreeBSD's /dev/mem"):
        kvm.open(None, "/dev/zero")


# ----------------------------------------------------------------------
# /dev/kmem: identifying the running kernel and its RAM ranges

def _candidates():
    from kvm_vol.layers.kernel import isf_symbols
    from kvm_vol.symbols import volsym

    return [(banner, isf_symbols(url)) for banner, url in volsym.freebsd_banners().items()]


def test_ranges_from_kmem(forged_images):
    from kvm_vol.forge import build

    handle._refresh_symbol_cache()
    _paths, manifest = forged_images["15"]
    forged = build.build("freebsd-15.0-amd64")

    def kmem_of(machine):
        def read_kva(va, n):  # /dev/kmem: kernel VA in, bytes out, EFAULT for unmapped pages
            try:
                return machine.read_kva(va, n)
            except KeyError:
                raise TranslationError(va, "Bad address")
        return read_kva

    read_kva = kmem_of(forged.machine)

    banner, ranges, source = live.ranges_from_kmem(read_kva, _candidates())
    assert banner == manifest["banner"].encode()
    assert source == "dump_avail"
    assert ranges == [tuple(r) for r in manifest["dump_avail"]]

    # /dev/kmem of a kernel no ISF describes (zeros where every banner should be)
    with pytest.raises(live.MemDeviceError, match="none of the .* known FreeBSD ISFs matches"):
        live.ranges_from_kmem(lambda va, n: bytes(n), _candidates())
    fake_banner, version_va, avail_va = b"FreeBSD 99.0-TEST x\n", A.KERNSTART + 0x1000, A.KERNSTART + 0x2000
    memory = {version_va: fake_banner, avail_va: b"\x01" * 8 * A.PHYS_AVAIL_COUNT}
    with pytest.raises(live.MemDeviceError, match="neither dump_avail nor phys_avail"):
        live.ranges_from_kmem(lambda va, n: memory[va][:n], [(fake_banner, {"version": version_va})])
    with pytest.raises(live.MemDeviceError, match="dump_avail does not hold physical ranges"):
        live.ranges_from_kmem(lambda va, n: memory[va][:n],
                              [(fake_banner, {"version": version_va, "dump_avail": avail_va})])

    other = build.build("freebsd-15.0-amd64", banner="FreeBSD 15.0-CURRENT main-n1 NOISF\n")
    with pytest.raises(live.MemDeviceError, match="kvm-vol isf"):
        # (other ISFs installed by now, i386 and arm64 ones among them, name addresses this
        # kernel does not map: EFAULT, as on a real /dev/kmem)
        live.ranges_from_kmem(kmem_of(other.machine), _candidates())


def test_parse_avail():
    def words(*values):
        return b"".join(v.to_bytes(8, "little") for v in values) + bytes(8 * (A.PHYS_AVAIL_COUNT - len(values)))

    assert live.parse_avail(words(0x1000, 0x9F000, 0x100000, 0x4000000, 0, 0)) == [
        (0x1000, 0x9F000), (0x100000, 0x4000000)]
    assert live.parse_avail(words(0x1001, 0x9F000, 0, 0)) is None  # not page aligned
    assert live.parse_avail(words(0x100000, 0x200000, 0x1000, 0x9F000, 0, 0)) is None  # descending
    assert live.parse_avail(words(0x9F000, 0x1000, 0, 0)) is None  # end before start
    assert live.parse_avail(words(0, 0)) is None  # empty
    assert live.parse_avail(b"\x11" * 8 * A.PHYS_AVAIL_COUNT) is None  # no terminator


# ----------------------------------------------------------------------
# the stacker behind ``vol -f /dev/mem``

def test_stacker_builds_live_layers_for_a_memory_device(monkeypatch):
    """The stacker's wiring, with /dev/zero as the device and the kernel's answer faked."""
    ranges = [(0x1000, 0x9F000), (0x100000, 0x4000000)]
    monkeypatch.setattr(live, "live_ranges", lambda path: (b"FreeBSD 14.3-RELEASE x\n", ranges, "dump_avail"))
    ctx = contexts.Context()
    join = interfaces.configuration.path_join
    ctx.config[join("FileLayer", "location")] = "file:///dev/zero"
    ctx.add_layer(vphysical.FileLayer(ctx, "FileLayer", "FileLayer"))
    assert ctx.layers["FileLayer"].maximum_address == -1  # what Volatility makes of a device
    phys = live.FreebsdLiveStacker.stack(ctx, "FileLayer")
    assert isinstance(phys, live.FreebsdLivePhysLayer)
    assert phys.ranges == ranges
    device = ctx.layers[phys.config["base_layer"]]
    assert isinstance(device, live.FreebsdMemDeviceLayer)
    assert device.device.path == "/dev/zero" and not device.device.writable
    assert phys.metadata.get("os") == "FreeBSD"


def test_vol_stack_on_a_memory_device_runs_pslist(stand_in, monkeypatch):
    """``vol -f <device> freebsd.pslist`` in-process, through Volatility's automagic.

    /dev/zero plays the device that ``-f`` names (a real size-0 character
    device); the running kernel's answer (its ranges) is faked and the
    physical reads are sent to the stand-in image, so the layers must
    survive Volatility's rebuild from configuration and the kernel stacker
    must find the kernel on the live layer.
    """
    from volatility3.framework import automagic, plugins
    from volatility3.plugins.freebsd.pslist import PsList

    path, manifest = stand_in
    ranges = _declared_ranges(manifest)
    monkeypatch.setattr(live, "live_ranges", lambda dev: (manifest["banner"].encode(), ranges, "dump_avail"))
    monkeypatch.setattr(live, "physical_device_for", lambda dev: path)
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = "file:///dev/zero"
    chosen = automagic.choose_automagic(automagic.available(ctx), PsList)
    plugin = plugins.construct_plugin(ctx, chosen, PsList, "plugins", None, None)
    kernel_layer = ctx.layers[ctx.modules[plugin.config["kernel"]].layer_name]
    phys = ctx.layers[kernel_layer.config["memory_layer"]]
    assert isinstance(phys, live.FreebsdLivePhysLayer) and phys.ranges == ranges
    assert not ctx.layers[phys.config["base_layer"]].device.writable
    pids = []
    plugin.run().populate(lambda node, _acc: pids.append(node.values[1]), None)
    assert pids == [p["pid"] for p in manifest["processes"]]


def test_stacker_leaves_files_alone(stand_in):
    ctx = contexts.Context()
    ctx.config["FileLayer.location"] = "file://" + stand_in[0]
    ctx.add_layer(vphysical.FileLayer(ctx, "FileLayer", "FileLayer"))
    assert live.FreebsdLiveStacker.stack(ctx, "FileLayer") is None


@pytest.mark.parametrize("device, needle", [
    ("/dev/zero", "not FreeBSD's /dev/mem"),
    ("/dev/null", "no-memory mode"),
])
def test_vol_on_devices_stops_with_one_line(device, needle):
    proc = run_vol("-q", "-f", device, "freebsd.pslist", timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kvm-vol:")]
    assert len(lines) == 1 and needle in lines[0] and device in lines[0], proc.stderr


@pytest.mark.parametrize("plugin", ["freebsd.pslist", "banners.Banners"])
def test_vol_refuses_a_fifo_instead_of_hanging(tmp_path, plugin):
    fifo = tmp_path / "memory.fifo"
    os.mkfifo(fifo)
    proc = run_vol("-q", "-f", str(fifo), plugin, timeout=120)  # opening it would block forever
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kvm-vol:")]
    assert len(lines) == 1 and "FIFO" in lines[0] and str(fifo) in lines[0], proc.stderr


# ----------------------------------------------------------------------
# live memory changing under the reader

def test_list_changed_mid_walk_warns_and_stops(stand_in, tmp_path, caplog):
    """allproc is rewritten between two reads (a cycle, then a wild pointer): the walk warns and ends."""
    from kvm_vol.kvm import procs

    path, manifest = stand_in
    expected = [p["pid"] for p in manifest["processes"]]
    assert len(expected) > 4
    for bad_next in ("cycle", 0xFFFFF80FFFFF0000):
        copy = tmp_path / f"mem-{bad_next}"
        shutil.copyfile(path, copy)
        caplog.clear()
        with kvm.open(None, str(copy), ranges=_declared_ranges(manifest)) as kd:
            p_list = kd.kernel.get_type("proc").relative_child_offset("p_list")
            seen = []
            with caplog.at_level(logging.WARNING):
                for proc in procs.iter_procs(kd.context, kd.module_name):
                    seen.append(proc)
                    if len(seen) == 2:
                        # The running kernel unlinks/relinks: the third proc's le_next now
                        # points back at the first (or into unmapped direct map).
                        third = manifest["processes"][2]["offset"]
                        target = seen[0].vol.offset if bad_next == "cycle" else bad_next
                        with open(copy, "r+b") as fh:
                            fh.seek(third - A.DMAP_MIN_ADDRESS + p_list)
                            fh.write(target.to_bytes(8, "little"))
            assert [int(p.p_pid) for p in seen] == expected[:3]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "allproc" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


# ----------------------------------------------------------------------
# a real FreeBSD host

ON_FREEBSD_AS_ROOT = sys.platform.startswith("freebsd") and os.geteuid() == 0


@pytest.mark.skipif(not ON_FREEBSD_AS_ROOT, reason="needs a real FreeBSD /dev/mem: runs only on FreeBSD as root")
def test_real_dev_mem_pslist():
    """``vol -f /dev/mem freebsd.pslist`` on this host lists init and the kernel, and this very test's python."""
    kernel = subprocess.run(["sysctl", "-n", "kern.bootfile"], capture_output=True, text=True).stdout.strip()
    debug = f"/usr/lib/debug{kernel}.debug"
    subprocess.run(["kvm-vol", "isf", "--elf", debug, "--elf-symbols", kernel], check=True)
    proc = run_vol("-q", "-r", "json", "-f", "/dev/mem", "freebsd.pslist", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    import json

    pids = {row["PID"] for row in json.loads(proc.stdout)}
    assert {0, 1} <= pids and os.getpid() in pids
