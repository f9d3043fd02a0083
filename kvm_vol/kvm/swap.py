"""Swap devices of a dead kernel, with kvm_getswapinfo()'s contract.

libkvm's dead-kernel path needs the ``dmmax`` global, which FreeBSD removed
(``vm.dmmax`` became a sysctl over ``nsw_cluster_max``), so it fails on every
13.x-15.x vmcore, and it names devices with the *analysing* host's
``devname()``.  Here the rows come from the dump alone:

* ``swtailq`` (``TAILQ_HEAD(, swdevt)``, static in swap_pager.c) lists one
  ``struct swdevt`` per device;
* ``ksw_total = sw_nblks - dmmax`` with dmmax = ``nsw_cluster_max`` when the
  kernel has it (what the live path's ``vm.dmmax`` reports), else
  ``sw_nblks``; ``ksw_used = sw_used``; both in pages;
* the blist (``sw_blist``, subr_blist.c's radix tree of free-block bitmaps)
  gives a second count of blocks in use, walked leaf by leaf:
  ``bl_blocks`` minus the free bits minus the ``howmany(BBSIZE, PAGE_SIZE)``
  blocks swaponsomething() never frees.  The kernel keeps both (``sw_used``
  is bumped by swp_pager_getswapspace() as it takes blocks out of the
  blist), so they agree on a consistent dump; a difference (or a tree that
  disagrees with its own ``bl_avail``) is logged as a warning.  Used stays
  ``sw_used``, what swapinfo(8) reports (``xsw_used``);
* the name is ``[NFS swap]`` for ``sw_dev == NODEV``, else
  ``/dev/`` + ``sw_vp->v_rdev->si_name`` (SWIF_DEV_PREFIX, as swapinfo asks).

:func:`getswapinfo` returns the device rows followed by the total row (empty
name, flags 0), like ``kvm_getswapinfo(kd, ary, n + 1, SWIF_DEV_PREFIX)``.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional

from volatility3.framework import exceptions, interfaces

from kvm_vol import freebsd as F
from kvm_vol.core.amd64 import canonical
from kvm_vol.kvm.kernelmod import KernelRef, kernel_module
from kvm_vol.kvm import queue

vollog = logging.getLogger(__name__)

#: More swap devices than this is not a swap list (the kernel allows a few dozen).
MAX_SWAPDEV = 1024
NFS_SWAP = "[NFS swap]"


@dataclass
class SwapRow:
    devname: str  # ksw_devname; "" for the total row
    used: int  # pages
    total: int  # pages
    flags: int
    offset: Optional[int] = None  # struct swdevt VA; None for the total row
    nblks: Optional[int] = None
    blist_used: Optional[int] = None

    @property
    def is_total(self) -> bool:
        return self.offset is None


def _dmmax(kernel) -> int:
    for name in ("dmmax", "nsw_cluster_max"):
        if kernel.has_symbol(name):
            try:
                return int(kernel.object(object_type="int", offset=kernel.get_symbol(name).address))
            except exceptions.InvalidAddressException:
                vollog.warning(f"{name} is unreadable; swap totals are sw_nblks")
    return 0


def _devname(sw) -> str:
    if int(sw.sw_dev) == F.NODEV:
        return NFS_SWAP
    try:
        vp = sw.sw_vp.dereference()
        cdev = vp.v_rdev.dereference()
        name = cdev.si_name.cast("string", max_length=cdev.si_name.vol.count, errors="replace")
        if name:
            return "/dev/" + name
    except exceptions.InvalidAddressException:
        pass
    return f"dev {int(sw.sw_dev):#x}"  # the device's vnode or cdev is not in the dump


#: sw_nblks is an int: a device has fewer blocks than this.
MAX_BLIST_BLOCKS = 1 << 31
#: Nodes the walk reads at most (a 1 TiB device has about 4.2 million); past
#: that the tree is refused rather than walked for minutes.
MAX_BLIST_NODES = 1 << 23
_BLIST_MASK = F.BLIST_RADIX - 1
_ALL_ONES = (1 << F.BLIST_RADIX) - 1


def blist_free_blocks(context: interfaces.context.ContextInterface, kernel, bl, nblks: Optional[int] = None) -> int:
    """Free blocks of a ``struct blist``, counted from its leaves' bitmaps.

    The walk is subr_blist.c's own (``blist_stats()``/``blst_radix_print()``):
    a node's children follow it in ``bl_root[]``, ``radix_to_skip(radix) =
    radix / (BLIST_RADIX - 1)`` slots apart; a meta node's bit says whether
    that child still has a free block (a clear bit skips the whole subtree),
    a leaf's bit is one free block.  Only blocks below ``bl_blocks`` count,
    so nodes past the end of the allocation are never read.  ``nblks`` is
    the device's ``sw_nblks``, which swaponsomething() gave blist_create().
    Raises InvalidAddressException if a node is unreadable and ValueError
    if the header is not a blist's (or the tree is too big to walk).
    """
    blocks, radix = int(bl.bl_blocks), int(bl.bl_radix)
    if not 0 < blocks <= MAX_BLIST_BLOCKS:
        raise ValueError(f"bl_blocks is {blocks}")
    if nblks is not None and blocks != nblks:
        raise ValueError(f"bl_blocks is {blocks} but sw_nblks {nblks}")
    r = radix
    while r > 1 and r % F.BLIST_RADIX == 0:
        r //= F.BLIST_RADIX
    if r != 1 or radix * F.BLIST_RADIX < blocks:
        raise ValueError(f"bl_radix {radix} is not a power of {F.BLIST_RADIX} covering {blocks} blocks")
    layer = context.layers[bl.vol.layer_name]
    meta = kernel.get_type("blmeta")
    node_size = meta.size
    bitmap_off = meta.relative_child_offset("bm_bitmap")
    word = meta.vol.members["bm_bitmap"][1].size
    base = bl.bl_root.vol.offset

    def bitmap(index: int) -> int:
        raw = layer.read(base + index * node_size + bitmap_off, word)
        return int.from_bytes(bytes(raw), "little")

    free = 0
    visited = 0
    stack = [(0, 0, radix)]  # (node index, first block, radix)
    while stack:
        index, first, node_radix = stack.pop()
        visited += 1
        if visited > MAX_BLIST_NODES:
            raise ValueError(f"more than {MAX_BLIST_NODES} nodes to read")
        bits = bitmap(index)
        if node_radix == 1:
            valid = min(F.BLIST_RADIX, blocks - first)
            free += bin(bits & (_ALL_ONES >> (F.BLIST_RADIX - valid))).count("1")
            continue
        skip = node_radix // _BLIST_MASK
        for digit in range(F.BLIST_RADIX):
            child_first = first + digit * node_radix
            if child_first >= blocks:
                break
            if bits >> digit & 1:
                stack.append((index + 1 + digit * skip, child_first, node_radix // F.BLIST_RADIX))
    return free


def _blist_used(context, kernel, sw, devname: str) -> Optional[int]:
    """Blocks the blist says are allocated, less the ``howmany(BBSIZE, PAGE_SIZE)`` never freed.

    Also checks the tree against ``bl_avail`` (the blist's own free count);
    either disagreement is a warning, since one of the two is then stale or
    damaged.  None (with the reason logged) when the tree cannot be read, and
    for a device being removed (``SW_CLOSING``): swapoff_one() has filled its
    whole bitmap so that nothing more goes there, and only ``sw_used`` still
    counts the pages left to page in.
    """
    try:
        if not int(sw.sw_blist):
            return None
        if int(sw.sw_flags) & F.SW_CLOSING:
            vollog.debug(f"swap device {devname}: swapoff in progress, its blist is filled whole")
            return None
        bl = sw.sw_blist.dereference()
        free = blist_free_blocks(context, kernel, bl, int(sw.sw_nblks))
        blocks, avail = int(bl.bl_blocks), int(bl.bl_avail)
    except (exceptions.InvalidAddressException, ValueError) as exc:
        vollog.warning(f"swap device {devname}: blist at {int(sw.sw_blist):#x} unreadable ({exc}); "
                       "only sw_used is known")
        return None
    if free != avail:
        vollog.warning(f"swap device {devname}: the blist has {free} free blocks but bl_avail says {avail}")
    page_size = getattr(context.layers[kernel.layer_name], "page_size", F.PAGE_SIZE)
    return blocks - free - -(-F.BBSIZE // page_size)  # howmany(BBSIZE, PAGE_SIZE)


def getswapinfo(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef) -> Optional[List[SwapRow]]:
    """Device rows then the total row; None when the kernel has no swtailq."""
    kernel = kernel_module(context, kernel_module_name)
    if not kernel.has_symbol("swtailq"):
        vollog.warning("the kernel has no swtailq symbol")
        return None
    dmmax = _dmmax(kernel)
    address = kernel.get_symbol("swtailq").address
    try:
        first = kernel.object(object_type="pointer", offset=address, subtype=kernel.get_type("swdevt"))
    except exceptions.InvalidAddressException as exc:  # the fuzzer's damaged bitmaps: the global's page is gone
        vollog.warning(f"swtailq at {canonical(kernel.offset + address):#x} is unreadable ({exc}); "
                       "no swap devices listed")
        return None
    rows: List[SwapRow] = []
    for sw in queue.walk(first, "sw_list", "TAILQ", name="swtailq", limit=MAX_SWAPDEV):
        try:
            nblks, used, flags = int(sw.sw_nblks), int(sw.sw_used), int(sw.sw_flags)
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"swdevt at {sw.vol.offset:#x} is unreadable ({exc}); skipped")
            continue
        devname = _devname(sw)
        blist_used = _blist_used(context, kernel, sw, devname)
        if blist_used is not None and blist_used != used:
            vollog.warning(f"swap device {devname}: sw_used says {used} pages in use but its blist has "
                           f"{blist_used} blocks allocated")
        rows.append(SwapRow(devname=devname, used=used, total=nblks - dmmax, flags=flags,
                            offset=sw.vol.offset, nblks=nblks, blist_used=blist_used))
    rows.append(SwapRow(devname="", used=sum(r.used for r in rows), total=sum(r.total for r in rows), flags=0))
    return rows
