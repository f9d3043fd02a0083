"""The forge lays machines out the way FreeBSD does; check it independently of the readers.

These tests read the forge's physical memory with the page-table walk of
``kvm_vol.core.amd64`` and raw struct offsets from the type pack, so a
mistake in the forge cannot hide behind the same mistake in the plugins.
"""

import struct

import pytest

from kvm_vol.core import amd64 as A
from kvm_vol.forge import build
from kvm_vol.forge.demo import pack_for_release


@pytest.fixture(scope="module", params=["14", "15"])
def forged(request):
    return build.build(pack_for_release(request.param))


def _read_u64(mem):
    return lambda pa: mem.read_u64(pa)


def test_page_tables_match_create_pagetables(forged):
    m = forged.machine
    mem = m.mem
    pml4 = m.kpml4phys
    # recursive slot, direct map slot, KVA slots
    assert mem.read_u64(pml4 + 8 * A.PML4PML4I) & A.PG_FRAME == pml4
    assert mem.read_u64(pml4 + 8 * A.DMPML4I) & A.PG_V
    for i in range(A.NKPML4E):
        assert mem.read_u64(pml4 + 8 * (A.KPML4BASE + i)) & A.PG_V
    # KERNBASE: identity 2M then the image at kernphys, 2 MiB pages
    pa, size = A.walk(_read_u64(mem), pml4, A.KERNBASE + 0x1234)
    assert (pa, size) == (0x1234, 1 << 21)
    pa, size = A.walk(_read_u64(mem), pml4, A.KERNSTART + 0x10)
    assert (pa, size) == (m.kernphys + 0x10, 1 << 21)
    # direct map with 2 MiB pages below 1 GiB of RAM
    pa, size = A.walk(_read_u64(mem), pml4, A.DMAP_MIN_ADDRESS + 0x345678)
    assert (pa, size) == (0x345678, 1 << 21)


def test_symbols_translate_to_their_contents(forged):
    m = forged.machine
    man = forged.manifest
    pa, _ = A.walk(_read_u64(m.mem), m.kpml4phys, man["symbols"]["version"])
    assert m.mem.read(pa, len(man["banner"])) == man["banner"].encode()
    pa, _ = A.walk(_read_u64(m.mem), m.kpml4phys, man["symbols"]["KPML4phys"])
    assert m.mem.read_u64(pa) == m.kpml4phys


def test_kernel_stacks_are_4k_pages_scattered(forged):
    m = forged.machine
    L = m.layout
    td = forged.manifest["processes"][0]["threads"][0]["offset"]
    kstack = struct.unpack("<Q", m.read_kva(td + L.offsetof("thread", "td_kstack"), 8))[0]
    assert A.VM_MIN_KERNEL_ADDRESS <= kstack < A.KERNBASE
    pas = []
    for i in range(m.KSTACK_PAGES):
        pa, size = A.walk(_read_u64(m.mem), m.kpml4phys, kstack + i * 4096)
        assert size == 4096
        pas.append(pa)
    assert pas != list(range(pas[0], pas[0] + 4096 * len(pas), 4096))  # not PA-contiguous
    with pytest.raises(Exception):
        A.walk(_read_u64(m.mem), m.kpml4phys, kstack - 4096)  # guard page


def test_allproc_linkage_raw(forged):
    """Walk allproc with raw offsets: newest first, proc0 last, le_prev consistent."""
    m = forged.machine
    L = m.layout
    man = forged.manifest
    head = man["symbols"]["allproc"]
    list_off = L.offsetof("proc", "p_list")
    pid_off = L.offsetof("proc", "p_pid")
    p = struct.unpack("<Q", m.read_kva(head, 8))[0]
    prev_field = head
    pids = []
    while p:
        assert struct.unpack("<Q", m.read_kva(p + list_off + 8, 8))[0] == prev_field
        pids.append(struct.unpack("<i", m.read_kva(p + pid_off, 4))[0])
        assert A.DMAP_MIN_ADDRESS <= p < A.DMAP_MAX_ADDRESS or p == man["symbols"]["proc0"]
        prev_field = p + list_off
        p = struct.unpack("<Q", m.read_kva(p + list_off, 8))[0]
    assert pids == [proc["pid"] for proc in man["processes"]]
    assert pids[-1] == 0
    nprocs = struct.unpack("<i", m.read_kva(man["symbols"]["nprocs"], 4))[0]
    assert nprocs == len(pids)


def test_self_describing_offsets(forged):
    m = forged.machine
    L = m.layout
    syms = forged.manifest["symbols"]
    for sym, struct_name, member in (("proc_off_p_pid", "proc", "p_pid"),
                                     ("proc_off_p_comm", "proc", "p_comm"),
                                     ("thread_off_td_tid", "thread", "td_tid"),
                                     ("thread_off_td_plist", "thread", "td_plist")):
        assert struct.unpack("<i", m.read_kva(syms[sym], 4))[0] == L.offsetof(struct_name, member)


def test_credentials_follow_release_layout(forged):
    m = forged.machine
    L = m.layout
    sh = next(p for p in forged.manifest["processes"] if p["comm"] == "sh")
    cred = struct.unpack("<Q", m.read_kva(sh["offset"] + L.offsetof("proc", "p_ucred"), 8))[0]
    ngroups = struct.unpack("<i", m.read_kva(cred + L.offsetof("ucred", "cr_ngroups"), 4))[0]
    groups_ptr = struct.unpack("<Q", m.read_kva(cred + L.offsetof("ucred", "cr_groups"), 8))[0]
    groups = list(struct.unpack(f"<{ngroups}I", m.read_kva(groups_ptr, 4 * ngroups)))
    if L.has_field("ucred", "cr_gid"):  # 15.0
        assert groups == sh["groups"][1:]
        assert struct.unpack("<I", m.read_kva(cred + L.offsetof("ucred", "cr_gid"), 4))[0] == sh["gid"]
    else:  # 14.x: cr_gid is cr_groups[0]
        assert groups == sh["groups"]
