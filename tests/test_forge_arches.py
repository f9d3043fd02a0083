"""The architecture plumbing of issue #8: which forge machine, which reader facts.

* :mod:`kvm_vol.forge.arches` picks the machine class from the type pack's
  architecture and says clearly when kvm-vol has none;
* ``build()`` / ``Forged.write`` / ``kvm-vol demo --arch`` go through it;
* :mod:`kvm_vol.arch` gives the readers their per-architecture facts
  (direct map, address form, process address spaces);
* pointer sizes come from the layouts (type packs), never from the arch name.

The machines themselves are tested end to end (tests/test_e2e_*.py run on every
architecture in ``conftest.E2E_ARCHES``).
"""

import json
import types

import pytest

from conftest import E2E_ARCHES, RELEASES, forge_images
from kvm_vol import arch as archmod
from kvm_vol.errors import KvmVolError
from kvm_vol.forge import arches, build
from kvm_vol.forge.demo import pack_for_release
from kvm_vol.forge.machine import Machine
from kvm_vol.kvm import linkersets as LS
from kvm_vol.symbols import typepacks


@pytest.mark.parametrize("pack", typepacks.available())
def test_every_pack_names_its_architecture(pack):
    """The pack metadata and the pack name agree; the pointer size is the arch's ABI's."""
    types_ = typepacks.load(pack)
    arch = arches.arch_of_types(types_, pack)
    assert arch == pack.rsplit("-", 1)[-1] and arch in arches.ARCHES
    assert types_["base_types"]["pointer"]["size"] == (4 if arch == "i386" else 8)
    assert types_["base_types"]["long"]["size"] == types_["base_types"]["pointer"]["size"]  # ILP32 / LP64


def test_arch_of_types_without_metadata_uses_the_name():
    assert arches.arch_of_types({}, "freebsd-15.0-arm64") == "arm64"
    assert arches.arch_of_types({}, "my-own-isf") == "amd64"  # every ISF before issue #8


def test_machine_class_errors_are_one_clear_line(monkeypatch):
    assert arches.machine_class("amd64") is Machine
    with pytest.raises(KvmVolError, match=r"unknown architecture 'sparc64'; kvm-vol knows amd64, i386, arm64"):
        arches.machine_class("sparc64")
    monkeypatch.setitem(arches.MACHINES, "i386", ("kvm_vol.forge.machine_i386_not_there", "MachineI386"))
    with pytest.raises(KvmVolError, match=r"^forge: no i386 machine yet \(kvm_vol\.forge\.machine_i386_not_there"):
        arches.machine_class("i386")


def test_pack_for_release_per_arch():
    for arch in arches.ARCHES:
        assert pack_for_release("14", arch) == f"freebsd-14.3-{arch}"
        assert pack_for_release("15.0", arch) == f"freebsd-15.0-{arch}"
    assert pack_for_release("freebsd-15.0-i386", "amd64") == "freebsd-15.0-i386"  # a full name wins
    with pytest.raises(KvmVolError, match="no sparc64 type pack for release '14'"):
        pack_for_release("14", "sparc64")


def test_forged_write_checks_the_machines_formats(tmp_path):
    forged = build.build("freebsd-14.3-amd64", processes=None)
    assert forged.arch == "amd64" and type(forged.machine) is Machine
    with pytest.raises(ValueError, match=r"unknown forge format 'full32' for amd64; choose from vmcore, full, raw"):
        forged.write(str(tmp_path), formats=("full32",))
    paths = forged.write(str(tmp_path))  # default: the machine's demo formats
    assert tuple(paths) == Machine.DEMO_FORMATS
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert (man["arch"], man["page_size"]) == ("amd64", 4096)


def test_machine_pointer_helpers_follow_the_layout():
    forged = build.build("freebsd-15.0-amd64")
    m = forged.machine
    assert m.ptr_size == m.layout.pointer_size == 8 and m.layout.long_size == 8
    va = m.uma_alloc(16)
    m.write_ptr(va, 0xFFFFF80012345678)
    assert m.read_ptr(va) == 0xFFFFF80012345678
    assert m.read_uint(va, 4) == 0x12345678
    m.write_uint(va + 8, 4, -1)
    assert m.read_kva(va + 8, 8) == b"\xff\xff\xff\xff\x00\x00\x00\x00"


@pytest.mark.parametrize("arch", E2E_ARCHES)
@pytest.mark.parametrize("release", RELEASES)
def test_each_arch_machine_uses_its_packs_pointers(arch, release):
    """build() picks the arch's class; the manifest says which arch it is."""
    _paths, manifest = forge_images(arch, release)
    assert manifest["arch"] == arch
    assert manifest["type_pack"] == pack_for_release(release, arch)
    cls = arches.machine_class(arch)
    assert manifest["page_size"] in (4096, 16384) and cls.ARCH == arch
    assert cls.HAS_DMAP == (manifest["dmap"] is not None)  # i386: PMAP_HAS_DMAP 0
    assert arch in cls.KDH_ARCHITECTURE.replace("aarch64", "arm64")  # MACHINE_ARCH
    assert f"/usr/obj/usr/src/{arch}.{cls.KDH_ARCHITECTURE}/sys/GENERIC\n" in manifest["banner"]


def test_demo_arch_option(tmp_path, capsys):
    from kvm_vol.forge import demo

    parser = __import__("argparse").ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "d"), "--arch", "amd64", "--release", "15"])
    assert demo.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("FreeBSD/amd64 demo machine (FreeBSD 15.0-RELEASE")
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["arch"] == "amd64"
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), "--arch", "sparc64"])


# -- the readers' per-architecture record ------------------------------------------

def test_arch_for_layer():
    class Tagged:
        FREEBSD_ARCH = "amd64"
        metadata = {"architecture": "AArch64"}  # the class attribute wins

    assert archmod.for_layer(Tagged()).name == "amd64"
    plain = types.SimpleNamespace(metadata={"architecture": "Intel64"})
    assert archmod.for_layer(plain).name == "amd64"
    assert archmod.for_layer(types.SimpleNamespace(metadata={})).name == "amd64"
    assert set(archmod.METADATA_ARCHITECTURES.values()) == set(arches.ARCHES)
    with pytest.raises(KeyError, match="no reader support for architecture 'sparc64'"):
        archmod.for_name("sparc64")


def test_arch_address_forms():
    amd64 = archmod.for_name("amd64")
    assert amd64.canonical(0xF80012345678) == 0xFFFFF80012345678  # Volatility's 48-bit form
    assert amd64.canonical(0x7FFFFFFFE000) == 0x7FFFFFFFE000  # user addresses stay
    ilp32 = archmod.Arch(name="t32", has_dmap=False, dmap=None, vmspace_fields={},
                         process_config=lambda layer, fields: {}, address_bits=32)
    assert ilp32.canonical(0xC1234567) == 0xC1234567


def test_amd64_process_config():
    cfg = archmod.for_name("amd64").process_config
    assert cfg(None, types.SimpleNamespace(cr3=0x1234567 | 0x18)) == {"page_map_offset": 0x1234000}
    with pytest.raises(ValueError, match="pm_cr3 is 0"):
        cfg(None, types.SimpleNamespace(cr3=0))
    with pytest.raises(ValueError, match="no pmap.pm_cr3"):
        cfg(None, types.SimpleNamespace(cr3=None))


def test_relocation_wraps_at_the_pointer_width():
    """i386's dpcpu_off is often 'negative' (area below the set): uintptr_t arithmetic wraps at 32 bits."""
    start, stop = 0xC1800000, 0xC1800100
    off = (0x01000000 - start) & 0xFFFFFFFF  # dpcpu area at 0x01000000 in a 32-bit space
    assert LS.relocate(start + 8, start, stop, off, mask=0xFFFFFFFF) == 0x01000008
    assert LS.relocate(start + 8, start, stop, off) == 0x101000008  # what a 64-bit mask would give
    assert LS.relocate(0, start, stop, off, mask=0xFFFFFFFF) == 0


def test_kvm_reads_pointer_size_and_arch_from_the_kernel(arch_images):
    from kvm_vol.kvm.kvm import KVM

    paths, manifest = arch_images("amd64", "14")
    kvm = KVM.open(paths["vmcore"])
    assert kvm.mem.ptr_size == 8 and kvm.mem.arch.name == "amd64"
    assert kvm.mem.ptr(kvm._symbol("allproc")) == manifest["processes"][0]["offset"]  # LIST_FIRST(&allproc)
    assert kvm.boottime() == manifest["processes"][-1]["start"]  # proc0 started at boot


@pytest.mark.parametrize("arch", [a for a in E2E_ARCHES if a != "amd64"])
def test_kernel_file_is_amd64_only(arch):
    """The no-DWARF kernel file / loader symtab writer refuses other machines in one line."""
    from kvm_vol.forge import kernelfile

    forged = build.build(pack_for_release("14", arch))
    with pytest.raises(ValueError, match=f"written for amd64 kernels, not {arch}"):
        kernelfile.kernel_elf_bytes(forged)
    with pytest.raises(ValueError, match=f"not {arch}"):
        kernelfile.place_loader_symtab(forged)
