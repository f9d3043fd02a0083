"""The Volatility layers on the translation core: C and twin give the same answers.

``FreebsdDumpLayer`` (physical), ``FreebsdMinidumpIntel32e`` (minidumps) and
``FreebsdIntel32e`` (ELF full dumps, raw images) are built from config alone,
as Volatility builds them, once with ``KVM_VOL_PURE=0`` (C core) and once
with ``KVM_VOL_PURE=1`` (twin); reads, ``mapping`` and ``translate`` must
agree with each other, with the forge's memory and, on a raw image, with
Volatility's stock ``Intel32e``.  Process layers are made the way
``kvm_vol.kvm`` makes them: the kernel layer's class and config with another
``page_map_offset``.
"""

import random

import pytest
from nativekit import ensure_native
from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import intel, physical

from kvm_vol.core import amd64 as A
from kvm_vol.forge import build
from kvm_vol.layers.kernel import FreebsdIntel32e, FreebsdMinidumpIntel32e
from kvm_vol.layers.physical import FreebsdDumpLayer

MASK48 = (1 << 48) - 1
FORMATS = ("vmcore", "minidump-v2", "full", "raw", "kdh-vmcore")


@pytest.fixture(scope="module")
def has_native(tmp_path_factory):
    return ensure_native(str(tmp_path_factory.mktemp("native")))


@pytest.fixture(scope="module")
def forged(tmp_path_factory, has_native):
    machine = build.build("freebsd-14.3-amd64")
    paths = machine.write(str(tmp_path_factory.mktemp("layers")), stem="forge", formats=FORMATS)
    return machine, paths


def kernel_layer(path, fmt, kpml4phys, pure, monkeypatch):
    """Physical and kernel layers for ``path`` built from config, on the requested core."""
    monkeypatch.setenv("KVM_VOL_PURE", "1" if pure else "0")
    ctx = contexts.Context()
    ctx.config["base.location"] = "file://" + path
    ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
    if fmt == "raw":
        memory, phys = "base", None
    else:
        ctx.config["phys.base_layer"] = "base"
        phys = FreebsdDumpLayer(ctx, "phys", "phys")
        ctx.layers.add_layer(phys)
        memory = "phys"
    ctx.config["kernel.memory_layer"] = memory
    ctx.config["kernel.page_map_offset"] = kpml4phys
    cls = FreebsdMinidumpIntel32e if "vmcore" in fmt or fmt.startswith("minidump") else FreebsdIntel32e
    layer = cls(ctx, "kernel", "kernel")
    ctx.layers.add_layer(layer)
    assert layer._core.native is not pure
    if phys is not None:
        assert phys.core.native is not pure
    return ctx, layer, phys


def result(fn, *args):
    try:
        value = fn(*args)
        if not isinstance(value, (bytes, bool, tuple)):
            value = list(value)
    except exceptions.InvalidAddressException as exc:
        return ("invalid", exc.invalid_address, type(exc).__name__)
    return ("ok", value)


def random_addresses(m, rng, count):
    kva = sorted(m.kva_pages)
    pools = [
        lambda: rng.choice(kva) + rng.randrange(-32, 4096),
        lambda: A.KERNSTART + rng.randrange(0, 4 << 20),
        lambda: A.DMAP_MIN_ADDRESS + rng.randrange(0, m.ram_size + (1 << 20)),
        lambda: rng.randrange(0, 1 << 47),
    ]
    for _ in range(count):
        yield rng.choice(pools)() & MASK48, rng.choice((1, 8, 64, 4096, 6000))


@pytest.mark.parametrize("fmt", FORMATS)
def test_c_and_twin_layers_agree(forged, has_native, fmt, monkeypatch):
    machine, paths = forged
    m = machine.machine
    _c_ctx, c_layer, c_phys = kernel_layer(paths[fmt], fmt, m.kpml4phys, False, monkeypatch)
    _t_ctx, t_layer, t_phys = kernel_layer(paths[fmt], fmt, m.kpml4phys, True, monkeypatch)
    rng = random.Random(fmt)
    oks = invalids = 0
    for va, n in random_addresses(m, rng, 600):
        got = result(c_layer.read, va, n)
        assert got == result(t_layer.read, va, n), hex(va)
        assert result(c_layer.read, va, n, True) == result(t_layer.read, va, n, True)
        assert result(c_layer.is_valid, va, n) == result(t_layer.is_valid, va, n)
        assert result(c_layer.translate, va) == result(t_layer.translate, va)
        assert result(c_layer.mapping, va, n, True) == result(t_layer.mapping, va, n, True)
        if got[0] == "ok":
            oks += 1
            assert got[1] == m.read_kva(va | 0xFFFF000000000000 if va >> 47 else va, n)
            assert c_layer.is_valid(va, n)
        else:
            invalids += 1
            assert got[2] == "PagedInvalidAddressException" and va <= got[1] < va + n
            assert c_layer.read(va, n, pad=True) != b"" and len(c_layer.read(va, n, pad=True)) == n
    assert oks > 100 and invalids > 50
    if c_phys is not None:
        for _ in range(300):
            pa = rng.randrange(0, m.ram_size + (1 << 20))
            n = rng.choice((8, 4096, 9000))
            got = result(c_phys.read, pa, n)
            assert got == result(t_phys.read, pa, n)
            assert result(c_phys.read, pa, n, True) == result(t_phys.read, pa, n, True)
            if got[0] == "ok":
                assert got[1] == m.mem.read(pa, n)


def test_matches_stock_intel32e_on_raw(forged, has_native, monkeypatch):
    """Where stock Volatility can read, we read the same bytes and map the same pages."""
    machine, paths = forged
    m = machine.machine
    _ctx, ours, _phys = kernel_layer(paths["raw"], "raw", m.kpml4phys, False, monkeypatch)
    sctx = contexts.Context()
    sctx.config["base.location"] = "file://" + paths["raw"]
    sctx.layers.add_layer(physical.FileLayer(sctx, "base", "base"))
    sctx.config["kernel.memory_layer"] = "base"
    sctx.config["kernel.page_map_offset"] = m.kpml4phys
    stock = intel.Intel32e(sctx, "kernel", "kernel")
    start = min(m.kva_pages) & MASK48
    length = (max(m.kva_pages) & MASK48) + 4096 - start
    ours_map = [(o, n, mo) for o, n, mo, _mn, _l in ours.mapping(start, length, ignore_errors=True)]
    stock_map = [(o, n, mo) for o, n, mo, _mn, _l in stock.mapping(start, length, ignore_errors=True)]
    assert ours_map == stock_map and ours_map
    for va, n, _pa in ours_map[:50]:
        assert ours.read(va, n) == stock.read(va, n)


@pytest.mark.parametrize("fmt", ("vmcore", "full"))
@pytest.mark.parametrize("pure", (False, True))
def test_process_layer_from_copied_config(forged, has_native, fmt, pure, monkeypatch):
    """kvm_vol.kvm's recipe: the kernel layer's class and config, another page_map_offset."""
    machine, paths = forged
    m = machine.machine
    ctx, kernel, _phys = kernel_layer(paths[fmt], fmt, m.kpml4phys, pure, monkeypatch)
    from volatility3.framework import interfaces

    path = interfaces.configuration.path_join
    name = "kernel_Process1"
    for key, value in kernel.config.items():
        if key != "page_map_offset" and not isinstance(value, dict):
            ctx.config[path(name, key)] = value
    # a second root: a copy of the kernel PML4's upper half would be a process; the kernel's
    # own PDP page as a root maps nothing valid, which is enough to tell the roots apart
    other_root = m.kpdpphys
    ctx.config[path(name, "page_map_offset")] = other_root
    proc = kernel.__class__(ctx, name, name, metadata={"os": "FreeBSD"})
    ctx.add_layer(proc)
    assert proc._core.root == other_root and kernel._core.root == m.kpml4phys
    assert proc._core.phys is kernel._core.phys  # per-file state shared, not rebuilt
    version = machine.isf["symbols"]["version"]["address"] & MASK48
    banner = machine.kernel.banner.encode()
    assert kernel.read(version, len(banner)) == banner
    if fmt == "vmcore":  # kernel VA by the pmap section whatever the root
        assert proc.read(version, len(banner)) == banner
    with pytest.raises(exceptions.InvalidAddressException):
        proc.read(0x1000, 8)


@pytest.mark.parametrize("pure", (False, True))
def test_context_clone_and_threads(forged, has_native, pure, monkeypatch):
    """Volatility deep-copies contexts (clone); other threads may read: same bytes, shared core."""
    import copy
    import threading

    machine, paths = forged
    m = machine.machine
    ctx, kernel, _phys = kernel_layer(paths["vmcore"], "vmcore", m.kpml4phys, pure, monkeypatch)
    clone = ctx.clone()
    assert clone.layers["kernel"]._core is kernel._core
    assert copy.deepcopy(kernel)._core is kernel._core
    pages = sorted(m.kva_pages)[:64]
    expect = {va: m.read_kva(va, 4096) for va in pages}
    seen = {}

    def worker():
        seen.update({va: clone.layers["kernel"].read(va & MASK48, 4096) for va in pages})
        seen["mapping"] = list(clone.layers["kernel"].mapping(pages[0] & MASK48, 64 * 4096, ignore_errors=True))

    thread = threading.Thread(target=worker)
    thread.start()
    mine = {va: kernel.read(va & MASK48, 4096) for va in pages}
    thread.join()
    assert mine == expect and {va: seen[va] for va in pages} == expect
    assert seen["mapping"] == list(kernel.mapping(pages[0] & MASK48, 64 * 4096, ignore_errors=True))
