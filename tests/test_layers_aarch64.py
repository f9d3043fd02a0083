"""The AArch64 Volatility layers and the stacker's arm64 paths, built from config as Volatility builds them.

Checks, on forge arm64 machines with 4 KiB and 16 KiB pages (raw image and
minidump v3), with the C core and with the twin: the layer never masks an
address (arm64 kernel addresses have bit 47 clear, so a 48-bit mask would
make them user addresses), reads equal the forge's memory, the kernel's own
layer has no user half while a process layer (the kernel layer's config with
the process's ``pm_l0_paddr``) reaches both halves, ``dmap_window`` gives
``dmap_phys_base``, and the stacker helpers find the TTBR1 root and the
granule (raw image: from the banner alone, refusing a root that does not
walk back to the banner).
"""

import pytest
from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import physical

from nativekit import ensure_native
from kvm_vol.core import arm64 as A
from kvm_vol.forge import build
from kvm_vol.layers import aarch64
from kvm_vol.layers.aarch64 import FreebsdAArch64, FreebsdMinidumpAArch64
from kvm_vol.layers.physical import FreebsdDumpLayer


@pytest.fixture(scope="module")
def has_native(tmp_path_factory):
    return ensure_native(str(tmp_path_factory.mktemp("native")))


@pytest.fixture(scope="module", params=[4096, 16384], ids=["4k", "16k"])
def forged(request, tmp_path_factory, has_native):
    f = build.build("freebsd-15.0-arm64", page_size=request.param)
    paths = f.write(str(tmp_path_factory.mktemp("a64layers")), stem="forge", formats=("vmcore", "raw"))
    return f, paths


def _layers(path, fmt, root, kernel_root, page_size, pure, monkeypatch):
    monkeypatch.setenv("KVM_VOL_PURE", "1" if pure else "0")
    ctx = contexts.Context()
    ctx.config["base.location"] = "file://" + path
    ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
    memory = "base"
    if fmt != "raw":
        ctx.config["phys.base_layer"] = "base"
        ctx.layers.add_layer(FreebsdDumpLayer(ctx, "phys", "phys"))
        memory = "phys"
    for key, value in (("memory_layer", memory), ("page_map_offset", root), ("kernel_page_map_offset", kernel_root),
                       ("page_size", page_size)):
        ctx.config[f"kernel.{key}"] = value
    cls = FreebsdAArch64 if fmt == "raw" else FreebsdMinidumpAArch64
    layer = cls(ctx, "kernel", "kernel")
    ctx.layers.add_layer(layer)
    assert layer._core is not None and layer._core.native is not pure
    return ctx, layer


@pytest.mark.parametrize("pure", [False, True], ids=["c", "twin"])
@pytest.mark.parametrize("fmt", ["raw", "vmcore"])
def test_kernel_and_process_layers(forged, fmt, pure, monkeypatch):
    f, paths = forged
    m = f.machine
    ps = m.PAGE_SIZE
    ctx, kernel = _layers(paths[fmt], fmt, m.l0phys, m.l0phys, ps, pure, monkeypatch)
    assert kernel.address_mask == (1 << 64) - 1 and kernel.page_size == ps
    assert kernel.metadata["architecture"] == "AArch64"
    version = m.symbols["version"]
    assert version >> 48 == 0xFFFF and not version & (1 << 47)  # why the layer must not mask
    assert kernel.read(version, len(f.kernel.banner)) == f.kernel.banner.encode()
    proc0 = f.manifest["processes"][-1]
    assert kernel.read(proc0["offset"], 64) == m.read_kva(proc0["offset"], 64)
    assert kernel.is_valid(version) and not kernel.is_valid(version & ((1 << 48) - 1))
    with pytest.raises(exceptions.InvalidAddressException, match="no TTBR0"):
        kernel.read(0x10000, 8)
    lo, hi, pa = kernel.dmap_window
    assert (lo, hi, pa) == (A.DMAP_MIN_ADDRESS, A.DMAP_MAX_ADDRESS, m.dmap_phys_base)
    # a process layer: the kernel's config with the process's TTBR0 table
    sh = next(p for p in f.manifest["processes"] if p["comm"] == "sh")
    vmspace = m.read_ptr(sh["offset"] + m.layout.offsetof("proc", "p_vmspace"))
    l0 = m.read_uint(vmspace + m.layout.offsetof("vmspace", "vm_pmap.pm_l0_paddr"), 8)
    for key, value in kernel.config.items():
        if not isinstance(value, dict) and key != "page_map_offset":
            ctx.config[f"proc.{key}"] = value
    ctx.config["proc.page_map_offset"] = l0
    proc = type(kernel)(ctx, "proc", "proc")
    assert proc.read(version, 8) == kernel.read(version, 8)
    stack = [r for r in proc.mapping(0, A.VM_MAX_USER_ADDRESS, ignore_errors=True)]
    if fmt == "raw":
        assert stack and all(r[0] < A.VM_MAX_USER_ADDRESS for r in stack)
        top = stack[-1][0] + stack[-1][1]
        # the user stack ends below USRSTACK (SHAREDPAGE), less the random stack gap (14+)
        assert A.VM_MAX_USER_ADDRESS - (1 << 30) < top <= A.VM_MAX_USER_ADDRESS - ps
    else:
        assert stack == []  # a minidump holds no user page tables


def test_stacker_finds_root_and_granule(forged):
    f, paths = forged
    m = f.machine
    syms = {"version": m.symbols["version"], "kernbase": A.KERNBASE, A.ROOT_SYMBOL: m.symbols[A.ROOT_SYMBOL]}
    banner = f.kernel.banner.encode()
    banner_pa = m.kva_to_pa(m.symbols["version"])
    ctx = contexts.Context()
    ctx.config["base.location"] = "file://" + paths["raw"]
    raw = physical.FileLayer(ctx, "base", "base")
    root, cls, extra = aarch64.validate(raw, banner_pa, banner, syms)
    assert (root, cls, extra) == (m.l0phys, FreebsdAArch64, {"kernel_page_map_offset": m.l0phys,
                                                             "page_size": m.PAGE_SIZE})
    # a banner copy elsewhere (a page away) implies a root that does not walk back: refused
    assert aarch64.validate(raw, banner_pa + m.PAGE_SIZE, banner, syms) is None
    assert aarch64.validate(raw, banner_pa, banner, dict(syms, **{A.ROOT_SYMBOL: syms["version"]})) is None

    ctx.config["phys.base_layer"] = "base"
    ctx.config["base2.location"] = "file://" + paths["vmcore"]
    ctx.layers.add_layer(physical.FileLayer(ctx, "base2", "base2"))
    ctx.config["phys.base_layer"] = "base2"
    phys = FreebsdDumpLayer(ctx, "phys", "phys")
    found = aarch64.find_in_minidump(phys, {banner: "forge"}, lambda url: syms)
    assert found == (banner, m.l0phys, FreebsdMinidumpAArch64,
                     {"kernel_page_map_offset": m.l0phys, "page_size": m.PAGE_SIZE})
    assert aarch64.find_in_minidump(phys, {banner[:-2] + b"X\n": "forge"}, lambda url: syms) is None


def test_image_only_isf_is_refused_with_a_reason(forged):
    """Without an ISF, the image-only path (loader's symtab copy) is amd64-only: one clear reason for arm64."""
    from kvm_vol.layers import memisf

    f, paths = forged
    ctx = contexts.Context()
    ctx.config["base.location"] = "file://" + paths["vmcore"]
    ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
    ctx.config["phys.base_layer"] = "base"
    phys = FreebsdDumpLayer(ctx, "phys", "phys")
    diagnosis = {}
    assert memisf.isf_from_image(phys, f.machine.kva_to_pa(f.machine.symbols["version"]), diagnosis) is False
    assert diagnosis["memsyms"].endswith("and this is an arm64 kernel")
