"""The i386 forge machine is laid out as FreeBSD/i386's pmap lays a machine out.

What the readers rely on, checked on the machine itself (not through them):
``pae_mode`` and the two pmaps' roots, the kernel page directory of
``pmap_cold()`` (recursive PDEs, image superpages at VA == PA, the trampoline
PDE), process pmaps of ``pmap_pinit()`` (32-byte PDPT slots from UMA, PD
pages mapped into kernel_map, only the trampoline PDE of the kernel's), and
32-bit pointers, longs and time_t from the i386 type pack.
"""

import struct

import pytest

from kvm_vol.core import i386 as I
from kvm_vol.errors import TranslationError
from kvm_vol.forge import build
from kvm_vol.forge.machine_i386 import MachineI386


@pytest.fixture(scope="module", params=[True, False], ids=["pae", "nopae"])
def forged(request):
    return build.build("freebsd-15.0-i386", pae=request.param)


def test_defaults_and_refusals():
    assert build.build("freebsd-14.3-i386").machine.mode is I.PAE  # pmap_cold(): PAE on a PAE CPU
    with pytest.raises(ValueError, match="KERNBASE \\(VA\\) == KERNLOAD \\(PA\\)"):
        build.build("freebsd-14.3-i386", kernphys=0x3000000)
    with pytest.raises(ValueError, match="no direct map"):
        build.build("freebsd-14.3-i386").machine.dmap(0x1000)


def test_kernel_globals_name_the_running_pmap(forged):
    m = forged.machine
    assert isinstance(m, MachineI386) and forged.manifest["pae"] is m.mode.pae
    assert m.layout.pointer_size == 4 and m.read_uint(m.symbols["pae_mode"], 4) == int(m.mode.pae)
    roots = {name: m.read_ptr(m.symbols[name]) for name in ("IdlePDPT", "IdlePTD_pae", "IdlePTD_nopae")}
    if m.mode.pae:
        assert roots == {"IdlePDPT": m.root, "IdlePTD_pae": m.idleptd, "IdlePTD_nopae": 0}
    else:
        assert roots == {"IdlePDPT": 0, "IdlePTD_pae": 0, "IdlePTD_nopae": m.root}


def test_kernel_page_directory(forged):
    m = forged.machine
    mode, pt = m.mode, m.kernel_pt
    # the kernel's NPGPTD PD pages are contiguous and map themselves at PTDPTDI
    assert pt.ptd_pages == [m.idleptd + i * I.PAGE_SIZE for i in range(mode.npgptd)]
    for i in range(mode.npgptd):
        assert pt._get(pt.pdi_address(mode.ptdptdi + i)) & mode.pg_frame == m.idleptd + i * I.PAGE_SIZE
    # the image: superpages at KERNBASE, VA == PA; the low-memory identity map is gone (remap_lower)
    assert pt.pde(I.KERNBASE) & (I.PG_PS | I.PG_V) == I.PG_PS | I.PG_V
    assert pt.translate(m.symbols["version"]) == m.symbols["version"]
    assert pt.pde(0) == 0 and pt.translate(I.PMAP_MAP_LOW + 0x2000) == 0x2000
    assert pt.pde(I.VM_MAXUSER_ADDRESS) & I.PG_V  # pmap_init_trm()'s trampoline page table


def test_process_pmaps(forged):
    m = forged.machine
    mode = m.mode
    user_pmaps = [pt for root, pt in m._pmaps.items() if root != m.root]
    assert len(user_pmaps) >= 10
    for pt in user_pmaps:
        if mode.pae:
            assert pt.root % I.PDPT_ALIGN == 0  # a pdptzone item ...
        # ... and only the trampoline PDE of the kernel's: the 4/4G split
        entries = [(i, pt._get(pt.pdi_address(i))) for i in range(mode.npdeptd)]
        kernel_like = [i for i, e in entries if e and i >= I.KERNBASE >> mode.pdrshift
                       and e == m.kernel_pt._get(m.kernel_pt.pdi_address(i))]
        assert kernel_like == [mode.trptdi]
        with pytest.raises(TranslationError):
            I.walk(m.mem.read, pt.root, m.symbols["version"], mode)
    if mode.pae:
        assert any(pt.root % I.PAGE_SIZE for pt in user_pmaps)  # slots share UMA pages


def test_vmspace_records_kernel_virtual_addresses(forged):
    """pm_pdpt_pae / pm_pdir_nopae are KVAs whose vtophys() is the process's CR3 (pmap_get_cr3)."""
    m, L = forged.machine, forged.machine.layout
    field = "vm_pmap." + m.mode.pmap_root_field
    off, _desc = L.field("vmspace", field)
    seen = 0
    for p in forged.manifest["processes"]:
        proc = p["offset"]
        vm_off, _ = L.field("proc", "p_vmspace")
        vmspace = m.read_ptr(proc + vm_off)
        if not vmspace:
            continue
        kva = m.read_ptr(vmspace + off)
        pa = m.kernel_pt.translate(kva)
        if pa in m._pmaps:
            seen += 1
            if m.mode.pae:
                assert m.mem.read(pa, 8) == struct.pack("<Q", m._pmaps[pa].ptd_pages[0] | I.PG_V)
    assert seen >= 10


def test_time_t_is_32_bit():
    """FreeBSD/i386 is the one architecture with a 32-bit time_t."""
    L = build.build("freebsd-14.3-i386").machine.layout
    _off, desc = L.field("timeval", "tv_sec")
    assert L.type_size(desc) == 4 and L.long_size == 4
