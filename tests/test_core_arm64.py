"""FreeBSD/arm64 translation: the C core (kv_arm64.c) against its twin (core/arm64.py), and both against the forge.

Every check runs both implementations on the same dump and demands the same
bytes or the same error (address and reason), and that what is read is what
the forge put there.  Inputs: hand-made L0-L3 tables exercising each rule of
the walk with the 4 KiB and the 16 KiB granule (L1 and L2 blocks, L3 pages,
each kind of invalid descriptor, a missing table page, both halves of the
address space), and a forge arm64 machine written as raw image and as
minidump v1, v2 and v3 (v3 with 4 KiB and with 16 KiB pages).
"""

import random
import struct

import pytest

from nativekit import SpacePair, ensure_native
from kvm_vol.core import arm64 as A
from kvm_vol.errors import DumpFormatError
from kvm_vol.forge.layout import Layout
from kvm_vol.forge.machine_arm64 import RAM_BASE, MachineArm64
from kvm_vol.forge.physmem import PhysMem
from kvm_vol.forge.writers import write_raw
from kvm_vol.forge.writers_arm64 import write_minidump_arm64
from kvm_vol.formats import open_dump
from kvm_vol.formats.minidump_arm64 import MinidumpArm64
from kvm_vol.symbols import typepacks

GRANULES = (A.PAGE_SIZE_4K, A.PAGE_SIZE_16K)


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    return ensure_native(str(tmp_path_factory.mktemp("native")))


class Pair(SpacePair):
    """The same arm64 space served by the C core and by the twin."""

    def __init__(self, path, root, ttbr1, page_size, minidump=False):
        super().__init__(open_dump(path), path, None, root, arch="arm64", ttbr1=ttbr1, page_size=page_size,
                         minidump=minidump)


# ------------------------------------------------------- hand-made tables ----

KVA = A.VM_MIN_KERNEL_ADDRESS


class Tables:
    """L0-L3 tables written by hand into a PhysMem, one granule."""

    def __init__(self, page_size):
        self.g = A.granule_for(page_size)
        self.ps = page_size
        self.mem = PhysMem([(0, 2 << 30)])  # 2 GiB: room for a 1 GiB-aligned L1 block at 1 GiB
        self.next = 0x100000
        self.ttbr1 = self.page()
        self.ttbr0 = self.page()

    def page(self):
        pa = self.next
        self.next += self.ps
        self.mem.touch(pa >> 12)
        return pa

    def table(self, root, va, level):
        table = root
        for lvl in range(level):
            slot = table + 8 * self.g.index(lvl, va)
            e = self.mem.read_u64(slot)
            if e & 3 != A.L0_TABLE:
                new = self.page()
                self.mem.write_u64(slot, new | A.L0_TABLE)
                e = new | A.L0_TABLE
            table = A.pte_to_phys(e)
        return table

    def put(self, root, va, level, entry):
        self.mem.write_u64(self.table(root, va, level) + 8 * self.g.index(level, va), entry)


def _hand_made(tmp_path, page_size):
    t = Tables(page_size)
    g, ps = t.g, page_size
    attrs = A.ATTR_DEFAULT | A.ATTR_S1_XN
    l2_size = 1 << g.l2_shift
    # an L3 page with data
    page_pa = 0x200000
    t.mem.write(page_pa, bytes(range(256)) * (ps // 256))
    t.put(t.ttbr1, KVA + 0x10 * ps, 3, page_pa | attrs | A.L3_PAGE)
    # an L2 block (2 MiB / 32 MiB) at a block-aligned PA
    block_pa = 2 * l2_size if page_size == A.PAGE_SIZE_16K else 0x400000
    t.mem.write(block_pa + 0x1234, b"L2 block!")
    t.put(t.ttbr1, KVA + 4 * l2_size, 2, block_pa | attrs | A.L2_BLOCK)
    # an L1 block at 1 GiB (valid with 4 KiB pages only)
    l1_va = KVA + (1 << g.l1_shift) * 3
    t.mem.write(0x40000000 + 0x345678, b"L1 block!")
    t.put(t.ttbr1, l1_va, 1, 0x40000000 | attrs | A.L1_BLOCK)
    # invalid descriptors at L3 (type 1 is reserved), L2 (type 2), and a table page outside RAM
    t.put(t.ttbr1, KVA + 0x11 * ps, 3, page_pa | attrs | 1)
    t.put(t.ttbr1, KVA + 5 * l2_size, 2, block_pa | 2)
    t.put(t.ttbr1, KVA + 6 * l2_size, 2, 0x90000000 | A.L2_TABLE)  # 2.25 GiB: beyond RAM
    # user half: one page through TTBR0
    user_pa = 0x300000
    t.mem.write(user_pa, b"user page")
    t.put(t.ttbr0, 0x10000 * ps, 3, user_pa | A.ATTR_DEFAULT | A.ATTR_S1_AP(A.ATTR_S1_AP_USER) | A.L3_PAGE)
    path = str(tmp_path / f"tables-{page_size}.raw")
    write_raw(t.mem, path)
    return t, path, dict(page=(KVA + 0x10 * ps, page_pa), block=(KVA + 4 * l2_size, block_pa), l1=(l1_va, 0x40000000),
                         bad_l3=KVA + 0x11 * ps, bad_l2=KVA + 5 * l2_size, missing_table=KVA + 6 * l2_size,
                         user=(0x10000 * ps, user_pa))


@pytest.mark.parametrize("page_size", GRANULES)
def test_walk_rules_hand_made(native, tmp_path, page_size):
    t, path, va = _hand_made(tmp_path, page_size)
    kernel = Pair(path, t.ttbr1, t.ttbr1, page_size)  # the kernel's own space: no TTBR0 table
    process = Pair(path, t.ttbr0, t.ttbr1, page_size)
    ps = page_size
    g = A.granule_for(page_size)

    kva, pa = va["page"]
    assert kernel.check(kva + 5, 300)[1] == bytes(range(256))[5:] + bytes(range(256))[:49]
    assert kernel.same("translate", kva + ps - 1)[1][0] == pa + ps - 1
    kva, pa = va["block"]
    assert kernel.check(kva + 0x1234, 9)[1] == b"L2 block!"
    assert kernel.same("translate", kva + 0x1234)[1][0] == pa + 0x1234
    # a mapping over a block is one run, as long as the dump's run is
    assert kernel.same("mapping", kva, 1 << g.l2_shift, False)[1] == [(kva, pa, pa, 1 << g.l2_shift)]

    kva, pa = va["l1"]
    if page_size == A.PAGE_SIZE_4K:
        assert kernel.check(kva + 0x345678, 9)[1] == b"L1 block!"
    else:
        assert kernel.check(kva + 0x345678, 9)[2] == "l1 block descriptor not allowed with 16 KiB pages"
    assert kernel.check(va["bad_l3"], 8)[1:3] == (va["bad_l3"], "l3 descriptor not valid")
    assert kernel.check(va["bad_l2"] + 8, 8)[1:3] == (va["bad_l2"] + 8, "l2 descriptor not valid")
    got = kernel.check(va["missing_table"], 8)
    entry_pa = 0x90000000 + 8 * g.index(3, va["missing_table"])
    assert got[2] == f"physical page {entry_pa & ~0xFFF:#x} not in {kernel.dump.what}"
    # unmapped KVA: no L1 table for this slot
    far = KVA + (1 << g.l1_shift) * 7
    assert kernel.check(far, 8)[2] in ("l1 descriptor not valid", "l2 descriptor not valid")

    uva, upa = va["user"]
    assert kernel.check(uva, 9)[1:3] == (uva, "no TTBR0 (user) page table in this address space")
    assert process.check(uva, 9)[1] == b"user page"
    assert process.same("translate", uva)[1][0] == upa
    # the process space reaches the kernel half through TTBR1
    assert process.check(va["block"][0] + 0x1234, 9)[1] == b"L2 block!"
    # the hole between the halves, and a read running into it
    assert kernel.check(0x0001000000000000, 4)[2] == "non-canonical address"
    assert process.check(0x0000FFFFFFFFFFFF, 4)[2] in ("l0 descriptor not valid", "l1 descriptor not valid")
    # a mapping over everything costs the tables, not the pages, and finds exactly what is mapped
    runs = kernel.same("mapping", 0, 1 << 64, True)[1]
    starts = {r[0] for r in runs}
    assert va["page"][0] in starts and va["block"][0] in starts
    assert all(r[0] >= A.TTBR1_BASE for r in runs)
    user_runs = process.same("mapping", 0, 1 << 48, True)[1]
    assert user_runs == [(uva, upa, upa, ps)]


@pytest.mark.parametrize("page_size", GRANULES)
def test_random_tables_agree(native, tmp_path, page_size):
    """Random descriptors (every type bit pattern, wild addresses) give the same result in C and twin."""
    rng = random.Random(page_size)
    t = Tables(page_size)
    for _ in range(300):
        level = rng.randrange(4)
        va = A.TTBR1_BASE + rng.randrange(0, 1 << 48) if rng.random() < 0.7 else rng.randrange(0, 1 << 48)
        root = t.ttbr1 if va >= A.TTBR1_BASE else t.ttbr0
        pa = rng.choice([rng.randrange(0, 2 << 30), rng.randrange(0, 1 << 50), 0x40000000])
        entry = (pa & A.BASE_MASK) | rng.randrange(4) | (rng.getrandbits(64) & A.ATTR_MASK & ~3)
        try:
            t.put(root, va, level, entry)
        except ValueError:
            pass
    path = str(tmp_path / "random.raw")
    write_raw(t.mem, path)
    for root in (t.ttbr0, t.ttbr1):
        pair = Pair(path, root, t.ttbr1, page_size)
        for _ in range(150):
            va = rng.choice([A.TTBR1_BASE + rng.randrange(0, 1 << 48), rng.randrange(0, 1 << 48),
                             rng.randrange(0, 1 << 64)])
            pair.check(va, rng.choice([1, 8, 4096, 5000, 3 * page_size]))
        pair.same("mapping", A.TTBR1_BASE, 1 << 48, True)


# ------------------------------------------------------------ forge machine ----


def _machine(page_size):
    m = MachineArm64(Layout(typepacks.load("freebsd-14.3-arm64")), page_size=page_size)
    rng = random.Random(7)
    ps = page_size
    kmem = m.kmem_alloc(3 * ps, guard_pages=1)
    m.write_kva(kmem, bytes(rng.getrandbits(8) for _ in range(3 * ps)))
    uma = m.uma_alloc(256)
    m.write_kva(uma, b"uma item" * 32)
    data = m.kernel_var("forge_data", {"kind": "array", "count": 64, "subtype": {"kind": "base", "name": "char"}},
                        b"kernel image data".ljust(64, b"\0"))
    # a device mapping, like pmap_mapdev() of the PL011 UART at 0x09000000 (not RAM: never dumped)
    dev_va = m.kmem_alloc(ps)
    m.map_page(dev_va, 0x09000000)
    user_root, _fields = m.new_user_pmap()
    user_va = A.VM_MAX_USER_ADDRESS - 4 * ps
    user_pa = m.alloc_page()
    m.mem.write(user_pa, b"user stack")
    m.map_page(user_va, user_pa, root=user_root, user=True)
    return m, dict(kmem=kmem, uma=uma, data=data, dev=dev_va, user_root=user_root, user=(user_va, user_pa))


CASES = [(4096, "raw"), (4096, 1), (4096, 2), (4096, 3), (16384, "raw"), (16384, 3)]
MINIDUMPS = [c for c in CASES if c[1] != "raw"]
V3 = [c for c in CASES if c[1] == 3]


def _case_id(case):
    return f"{case[0] // 1024}k-{case[1]}"


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def forged(request, tmp_path_factory, native):
    page_size, fmt = request.param
    m, where = _machine(page_size)
    path = str(tmp_path_factory.mktemp("arm64") / f"m.{fmt}")
    if fmt == "raw":
        write_raw(m.mem, path)
    else:
        write_minidump_arm64(m.mem, path, version=fmt, page_size=page_size, l0phys=m.l0phys, kva_end=m.kva_end,
                             dmapphys=m.dmap_phys_base, extra_pages=[p << 12 for p in m.uma_pfns],
                             msgbuf=b"msgbuf ring", dump_avail_count=A.PHYS_AVAIL_COUNT)
    return m, where, path, page_size, fmt


def test_forge_machine_reads(forged):
    m, where, path, ps, fmt = forged
    md = fmt != "raw"
    kernel = Pair(path, m.l0phys, m.l0phys, ps, minidump=md)
    assert kernel.check(where["data"], 17)[1] == b"kernel image data"
    assert kernel.check(where["uma"], 16)[1] == b"uma item" * 2
    kmem = where["kmem"]
    assert kernel.check(kmem + ps - 100, 200)[1] == m.read_kva(kmem + ps - 100, 200)
    # the guard page below the kernel stack-like allocation
    guard = kernel.check(kmem - 8, 16)
    assert guard[0] == "error" and guard[1] == kmem - 8
    assert guard[2] == ("pte not valid" if md else "l3 descriptor not valid")
    # the direct map of every RAM page the dump holds, and beyond RAM
    dmap_end = m.dmap(m.mem.end)
    beyond = kernel.check(dmap_end, 8)
    assert beyond[2] == (f"direct map address {dmap_end:#x} not in minidump" if md else "l2 descriptor not valid")
    if md:  # past the last L3 entry of the pmap section (and below the direct map)
        end = m.kva_end
        assert kernel.check(end + 3, 8)[1:3] == (end + 3, f"virtual address {end + 3:#x} not minidumped "
                                                          "(beyond the pmap section)")
    # a device page mapped in KVA is not RAM: a minidump never holds it; a raw image is
    # indexed by PA from 0, so there it reads as the file's bytes at that offset (a hole: zeros)
    dev = kernel.check(where["dev"], 8)
    if md:
        assert dev[2] == f"physical address {0x09000000:#x} not in minidump"
    else:
        assert dev == ("ok", bytes(8))
    # user memory: not in the kernel's space; in the process's only if its page was dumped
    uva, upa = where["user"]
    assert kernel.check(uva, 10)[2] == "no TTBR0 (user) page table in this address space"
    process = Pair(path, where["user_root"], m.l0phys, ps, minidump=md)
    got = process.check(uva, 10)
    if fmt == "raw":
        assert got[1] == b"user stack"
    else:
        assert got[0] == "error"  # user page tables and pages are not in a minidump
    assert process.check(where["data"], 17)[1] == b"kernel image data"


def test_forge_machine_random(forged):
    m, where, path, ps, fmt = forged
    rng = random.Random(ps + len(str(fmt)))
    kernel = Pair(path, m.l0phys, m.l0phys, ps, minidump=fmt != "raw")
    kva = sorted(m.kva_pages)
    pools = [
        lambda: A.KERNBASE + rng.randrange(0, m.KERNEL_IMAGE_SIZE + (2 << 20)),
        lambda: rng.choice(kva) + rng.randrange(-64, 4096),
        lambda: m.dmap(RAM_BASE) + rng.randrange(-(1 << 20), m.ram_size + (1 << 20)),
        lambda: A.VM_MIN_KERNEL_ADDRESS + rng.randrange(0, m.kva_end - A.VM_MIN_KERNEL_ADDRESS + (64 << 20)),
        lambda: rng.randrange(0, 1 << 64),
    ]
    for _ in range(300):
        va = rng.choice(pools)()
        n = rng.choice([1, 7, 4096, 4097, ps + 3])
        got = kernel.check(va, n)
        if got[0] == "ok":
            try:
                truth = m.read_kva(va, n)
            except KeyError:
                truth = None
            if truth is not None:
                assert got[1] == truth, f"{fmt}: wrong bytes at {va:#x}+{n}"
    whole = kernel.same("mapping", A.VM_MIN_KERNEL_ADDRESS, m.kva_end - A.VM_MIN_KERNEL_ADDRESS, True)[1]
    mapped = sum(r[3] for r in whole)
    assert mapped >= m.KERNEL_IMAGE_SIZE


# ------------------------------------------------------------- the format ----


@pytest.mark.parametrize("forged", MINIDUMPS, ids=_case_id, indirect=True)
def test_minidump_headers(forged):
    m, _where, path, ps, fmt = forged
    with open_dump(path) as dump:
        assert isinstance(dump, MinidumpArm64) and dump.arch == "arm64"
        hdr = dump.header
        assert (hdr.version, dump.page_size, hdr.kernbase, hdr.dmapphys) == (fmt, ps, A.VM_MIN_KERNEL_ADDRESS,
                                                                             m.dmap_phys_base)
        assert dump.msgbuf() == b"msgbuf ring"
        assert dump.dump_avail == (None if fmt == 1 else m.mem.ranges)
        assert dump.problems() == []
        info = dump.info()
        assert info["arch"] == "arm64" and info["page_size"] == ps and info["header"]["flags"] == (ps == 16384)
        assert dump.pmap_entries == (m.kva_end - A.VM_MIN_KERNEL_ADDRESS) // ps


def _patched(tmp_path, path, offset, raw):
    data = bytearray(open(path, "rb").read(1 << 16))
    data[offset:offset + len(raw)] = raw
    out = tmp_path / "patched.vmcore"
    out.write_bytes(bytes(data))
    return str(out)


@pytest.mark.parametrize("forged", V3, ids=_case_id, indirect=True)
def test_minidump_header_errors(forged, tmp_path):
    _m, _where, path, _ps, _fmt = forged
    with pytest.raises(DumpFormatError, match=r"flags at offset 0x4c: unknown page size flag 2"):
        open_dump(_patched(tmp_path, path, 76, struct.pack("<I", 2)))
    with pytest.raises(DumpFormatError, match=r"version at offset 0x18: wrong minidump version. Expected 3 got 4"):
        open_dump(_patched(tmp_path, path, 24, struct.pack("<I", 4)))
    with pytest.raises(DumpFormatError, match=r"bitmap section of .* extends past the end of the file"):
        open_dump(_patched(tmp_path, path, 32, struct.pack("<I", 1 << 30)))


@pytest.mark.parametrize("forged", V3, ids=_case_id, indirect=True)
def test_kerneldumpheader_wrapped_minidump(forged, tmp_path):
    """savecore's leader/trailer around an arm64 dump: architecture "aarch64", architectureversion 1."""
    from kvm_vol.forge.writers import wrap_kdh
    from kvm_vol.formats.kdh import KERNELDUMP_AARCH64_VERSION

    m, where, path, ps, _fmt = forged
    out = str(tmp_path / "kdh.vmcore")
    wrap_kdh(path, out, versionstring="FreeBSD 15.0-RELEASE GENERIC\n", architecture="aarch64")
    with open_dump(out) as dump:
        assert isinstance(dump, MinidumpArm64) and dump.origin == 512
        assert (dump.kdh.architecture, dump.kdh.architectureversion) == ("aarch64", KERNELDUMP_AARCH64_VERSION)
    kernel = Pair(out, m.l0phys, m.l0phys, ps, minidump=True)
    assert kernel.check(where["data"], 17)[1] == b"kernel image data"


@pytest.mark.parametrize("page_size", GRANULES)
def test_fuzz_hostile_minidump(native, tmp_path, page_size):
    """Random L3 entries (wild PAs, every type), a random bitmap and a short file: C and twin still agree."""
    m, _where = _machine(page_size)
    path = str(tmp_path / "good.vmcore")
    write_minidump_arm64(m.mem, path, version=3, page_size=page_size, l0phys=m.l0phys, kva_end=m.kva_end,
                         dmapphys=m.dmap_phys_base, extra_pages=[p << 12 for p in m.uma_pfns])
    data = bytearray(open(path, "rb").read())
    with open_dump(path) as dump:
        lay, hdr = dump.layout, dump.header
    rng = random.Random(page_size + 1)
    for i in range(hdr.pmapsize // 8):
        if rng.random() < 0.3:
            pa = rng.choice([rng.randrange(0, 1 << 48), RAM_BASE + rng.randrange(0, m.ram_size), 0x09000000])
            struct.pack_into("<Q", data, lay.pmap + 8 * i, (pa & A.BASE_MASK) | rng.randrange(4))
    for i in range(hdr.bitmapsize):
        if rng.random() < 0.2:
            data[lay.bitmap + i] = rng.randrange(256)
    del data[len(data) - 5 * page_size - 123:]  # truncated page data
    bad = tmp_path / "hostile.vmcore"
    bad.write_bytes(bytes(data))
    with open_dump(str(bad)) as dump:
        assert any("page data truncated" in p.message for p in dump.problems())
    pair = Pair(str(bad), m.l0phys, m.l0phys, page_size, minidump=True)
    for _ in range(400):
        va = rng.choice([A.VM_MIN_KERNEL_ADDRESS + rng.randrange(0, m.kva_end - A.VM_MIN_KERNEL_ADDRESS + (1 << 22)),
                         m.dmap(RAM_BASE) + rng.randrange(-(1 << 22), m.ram_size), rng.randrange(0, 1 << 64)])
        pair.check(va, rng.choice([1, 8, 4096, 4099, 2 * page_size + 5]))
    pair.same("mapping", A.VM_MIN_KERNEL_ADDRESS, m.kva_end - A.VM_MIN_KERNEL_ADDRESS, True)


def test_16k_machine_writes_only_what_a_16k_kernel_can(tmp_path):
    m = MachineArm64(Layout(typepacks.load("freebsd-15.0-arm64")), page_size=A.PAGE_SIZE_16K)
    assert m.FORMATS == ("vmcore", "raw", "kdh-vmcore") and MachineArm64.FORMATS[2:4] == ("minidump-v1", "minidump-v2")
    with pytest.raises(ValueError, match="predates 16 KiB pages"):
        m.write_image("minidump-v2", str(tmp_path / "x"), None)
    with pytest.raises(ValueError, match="has 4 KiB pages, not 16384"):
        write_minidump_arm64(m.mem, str(tmp_path / "y"), version=1, page_size=A.PAGE_SIZE_16K, l0phys=m.l0phys,
                             kva_end=m.kva_end, dmapphys=m.dmap_phys_base)


@pytest.mark.parametrize("forged", [c for c in CASES if c[1] == "raw"], ids=_case_id, indirect=True)
def test_raw_image_claims_no_architecture(forged):
    """A raw image has no header: ``kvm-vol info`` must not call an arm64 image amd64."""
    _m, _where, path, _ps, _fmt = forged
    with open_dump(path) as dump:
        assert dump.kind == "raw" and dump.arch is None and dump.info()["arch"] is None


@pytest.mark.parametrize("page_size", GRANULES)
def test_dump_avail_hole_is_not_another_page(native, tmp_path, page_size):
    """libkvm quirk 4 (vmcore-formats.md §10): an address in a dump_avail hole reads another page's
    bytes there; here it is "not in minidump", in C and twin, while both sides of the hole read right."""
    m, _where = _machine(page_size)
    lo, hi = RAM_BASE + (16 << 20), RAM_BASE + (20 << 20)
    for pa in (lo - page_size, lo, hi):
        m.mem.write(pa, f"page {pa:#x}".encode())
    extra = [lo - page_size, lo, hi]
    path = str(tmp_path / "holes.vmcore")
    write_minidump_arm64(m.mem, path, version=3, page_size=page_size, l0phys=m.l0phys, kva_end=m.kva_end,
                         dmapphys=m.dmap_phys_base, extra_pages=extra,
                         dump_avail=[(RAM_BASE, lo), (hi, RAM_BASE + m.ram_size)])
    pair = Pair(path, m.l0phys, m.l0phys, page_size, minidump=True)
    assert pair.check(m.dmap(lo - page_size), 16)[1].startswith(f"page {lo - page_size:#x}".encode())
    assert pair.check(m.dmap(hi), 16)[1].startswith(f"page {hi:#x}".encode())
    assert pair.check(m.dmap(lo), 16)[1:3] == (m.dmap(lo), f"direct map address {m.dmap(lo):#x} not in minidump")
