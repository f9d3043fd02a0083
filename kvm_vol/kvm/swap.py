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
* the blist (``sw_blist``) gives a second count of blocks in use:
  ``bl_blocks - bl_avail`` minus the ``howmany(BBSIZE, PAGE_SIZE)`` blocks
  swaponsomething() never frees;
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


def _blist_used(sw) -> Optional[int]:
    try:
        if not int(sw.sw_blist):
            return None
        bl = sw.sw_blist.dereference()
        return int(bl.bl_blocks) - int(bl.bl_avail) - -(-F.BBSIZE // F.PAGE_SIZE)
    except exceptions.InvalidAddressException:
        return None


def getswapinfo(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef) -> Optional[List[SwapRow]]:
    """Device rows then the total row; None when the kernel has no swtailq."""
    kernel = kernel_module(context, kernel_module_name)
    if not kernel.has_symbol("swtailq"):
        vollog.warning("the kernel has no swtailq symbol")
        return None
    dmmax = _dmmax(kernel)
    first = kernel.object(object_type="pointer", offset=kernel.get_symbol("swtailq").address,
                          subtype=kernel.get_type("swdevt"))
    rows: List[SwapRow] = []
    for sw in queue.walk(first, "sw_list", "TAILQ", name="swtailq", limit=MAX_SWAPDEV):
        try:
            nblks, used, flags = int(sw.sw_nblks), int(sw.sw_used), int(sw.sw_flags)
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"swdevt at {sw.vol.offset:#x} is unreadable ({exc}); skipped")
            continue
        rows.append(SwapRow(devname=_devname(sw), used=used, total=nblks - dmmax, flags=flags,
                            offset=sw.vol.offset, nblks=nblks, blist_used=_blist_used(sw)))
    rows.append(SwapRow(devname="", used=sum(r.used for r in rows), total=sum(r.total for r in rows), flags=0))
    return rows
