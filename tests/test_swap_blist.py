"""Swap use counted from the blist: the forge's tree, the reader's walk, their cross-checks.

The forge builds each swap device's ``struct blist`` with subr_blist.c's own
operations (blist_create geometry, blist_free of all but the reserved
blocks, blist_fill of the allocation ranges); the reader walks the tree in
the dump leaf by leaf.  Expected counts come from the allocation ranges of
the specification, never from either implementation.
"""

import logging

import pytest

from kvm_vol import freebsd as F
from kvm_vol.forge import blist
from kvm_vol.forge.system import DEFAULT_SWAP, SwapSpec

RESERVED = F.BBSIZE // F.PAGE_SIZE  # howmany(BBSIZE, PAGE_SIZE) = 2


# ---------------------------------------------------------------- the forge's model
@pytest.mark.parametrize("blocks,radix,nodes", [
    (64, 1, 2),          # one leaf, plus the sentinel (blocks % 64 == 0)
    (65, 64, 3),         # a meta node and two leaves, no sentinel
    (4096, 64, 66),      # 1 + 64 leaves + sentinel
    (4097, 4096, 68),    # root, two meta nodes, 65 leaves
    (524288, 262144, 8324),  # 1 + 2 + 128 + 8192 + sentinel
])
def test_blist_create_geometry(blocks, radix, nodes):
    """Worked by hand from blist_create()'s loop."""
    assert blist.create_geometry(blocks) == (radix, nodes)


def test_blist_free_and_fill_bitmaps():
    tree = blist.Blist(524288)
    tree.free(RESERVED, 524288 - RESERVED)
    assert tree.avail == 524288 - RESERVED
    # Leaf 0 (blocks 0-63): the reserved blocks stay allocated.
    leaf0 = 1 + 1 + 1  # root -> first child (radix 4096) -> its first child (radix 64) -> leaf 0
    assert tree.bitmap[leaf0] == (1 << 64) - 1 - 0b11
    assert tree.fill(2, 62) == 62
    assert tree.bitmap[leaf0] == 0
    assert not tree.bitmap[2] & 1, "the meta node's bit for an exhausted leaf is cleared"
    assert tree.fill(2, 2) == 0, "filling allocated blocks takes nothing"
    # An allocation across a leaf boundary (8190-8193) touches two leaves.
    assert tree.fill(8190, 4) == 4
    assert tree.avail == 524288 - RESERVED - 66
    tree.free(8191, 1)
    with pytest.raises(ValueError):
        tree.free(8191, 1)  # freeing a free block is the kernel's "freeing free block" panic


def test_default_swap_allocations_cross_radix_boundaries():
    """The demo's ada0p3 allocations span a leaf, a 4096-block node and a root child boundary."""
    ada = DEFAULT_SWAP[0]
    spans = [(first // 64 != (first + n - 1) // 64, first // 4096 != (first + n - 1) // 4096,
              first // 262144 != (first + n - 1) // 262144) for first, n in ada.allocations]
    assert any(s[0] for s in spans) and any(s[1] for s in spans) and any(s[2] for s in spans)
    assert ada.used == sum(n for _f, n in ada.allocations) == 12877


# ---------------------------------------------------------------- reader vs forge
@pytest.fixture(scope="module")
def odd_swap(session_dir):
    """A forge machine whose swap devices are built to disagree in known ways.

    * da0p2: consistent (sw_used == the blist's allocations), 300000 blocks,
      allocations in every level of the tree and in the last partial leaf;
    * da1p2: sw_used stale by 100 pages;
    * da2p2: bl_avail overwritten after the fact (the tree is right);
    * da3p2: bl_radix damaged (not a power of 64): the tree is refused;
    * da4p2: being removed (SW_CLOSING): swapoff_one() filled its bitmap, so
      only sw_used counts, and that is no disagreement.
    """
    from kvm_vol.forge import build
    from kvm_vol.paths import user_symbols_dir

    devices = (
        SwapSpec("da0p2", 300000, ((2, 1), (60, 10), (4090, 9000), (262140, 8), (299990, 10)), dev=0x70),
        SwapSpec("da1p2", 8192, ((100, 500),), dev=0x71, sw_used=600),
        SwapSpec("da2p2", 65, ((2, 63),), dev=0x72),
        SwapSpec("da3p2", 128, ((2, 10),), dev=0x73),
        SwapSpec("da4p2", 4096, ((2, 40),), flags=F.SW_CLOSING, dev=0x74),
    )
    forged = build.build("freebsd-15.0-amd64", swap=devices)
    m, L = forged.machine, forged.machine.layout
    third = forged.manifest["swap"]["devices"][2]["offset"]
    bl = int.from_bytes(m.read_kva(third + L.offsetof("swdevt", "sw_blist"), L.pointer_size), "little")
    m.set_fields(bl, "blist", {"bl_avail": 7})
    fourth = forged.manifest["swap"]["devices"][3]["offset"]
    bl = int.from_bytes(m.read_kva(fourth + L.offsetof("swdevt", "sw_blist"), L.pointer_size), "little")
    m.set_fields(bl, "blist", {"bl_radix": 100})
    directory = session_dir / "images-odd-swap"
    paths = forged.write(str(directory), stem="forge", formats=("vmcore",))
    isf_dir = user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(isf_dir / "forge-odd-swap.json.xz"))
    return paths["vmcore"], forged.manifest, devices


def test_reader_counts_the_tree(odd_swap, caplog):
    from kvm_vol.kvm.kvm import KVM

    path, manifest, devices = odd_swap
    with caplog.at_level(logging.WARNING, logger="kvm_vol.kvm.swap"):
        rows = KVM.open(path).getswapinfo()
    devs, total = rows[:-1], rows[-1]
    assert [r.devname for r in devs] == ["/dev/da0p2", "/dev/da1p2", "/dev/da2p2", "/dev/da3p2", "/dev/da4p2"]
    # The walk finds exactly the allocated blocks, whatever sw_used and bl_avail say;
    # a tree whose header is not a blist's gives no count at all, nor does a closing device's.
    assert [r.blist_used for r in devs] == [d.used for d in devices[:3]] + [None, None] == [9029, 500, 63, None, None]
    # Used is sw_used, as swapinfo shows it.
    assert [r.used for r in devs] == [9029, 600, 63, 10, 40]
    assert total.used == 9029 + 600 + 63 + 10 + 40
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("/dev/da1p2" in msg and "sw_used says 600" in msg and "500 blocks" in msg for msg in messages)
    assert any("/dev/da2p2" in msg and "bl_avail says 7" in msg for msg in messages)
    assert any("/dev/da3p2" in msg and "bl_radix 100 is not a power of 64" in msg for msg in messages)
    assert not any("/dev/da0p2" in msg or "/dev/da4p2" in msg for msg in messages), messages


def test_swap_plugin_used_is_the_blist_count(forged_images):
    """On the demo machine freebsd.swap's Used (sw_used) equals what the blist has allocated."""
    from conftest import run_vol_json

    paths, manifest = forged_images["14"]
    rows = {r["Device"]: r for r in run_vol_json("-f", paths["vmcore"], "freebsd.swap")}
    for dev in manifest["swap"]["devices"]:
        allocated = sum(n for _f, n in dev["allocations"])
        assert rows[dev["device"]]["Used"] == allocated * (F.PAGE_SIZE // 1024)
    assert rows["/dev/ada0p3"]["Used"] > 0
