"""System-wide state of a synthetic FreeBSD: load average, CPU time, message buffer, swap.

Each part is written the way the kernel produces it, and its ground truth
goes into the manifest from the *specification* (never read back through
kvm-vol's readers):

* ``averunnable`` (``struct loadavg``): ``loadav()`` in kern_synch.c keeps
  ``ldavg[i]`` as fixed-point numbers with ``fscale = FSCALE`` (2048);
* per-CPU ``pc_cp_time[CPUSTATES]`` in ``struct pcpu``, reached through
  ``cpuid_to_pcpu[]`` (there is no ``cp_time`` global any more;
  ``read_cpu_time()`` sums the pcpus, as ``kvm_getcptime`` does);
* the message buffer filled character by character like
  ``msgbuf_addstr()`` in subr_msgbuf.c, with ``msg_wseq`` running modulo
  ``msg_seqmod = 16 * msg_size``; the default population writes more than
  ``msg_size`` bytes so the ring has wrapped (``MSGBUF_WRAP``), and its
  pages are added to the minidump like ``vm_page_startup()`` does
  (``dump_add_page()`` for the pages under ``msg_ptr``);
* ``swtailq``/``nswapdev`` with one ``struct swdevt`` per swap device, as
  ``swaponsomething()`` sets it up: ``sw_nblks`` pages, a ``struct blist``
  (the whole radix tree, :mod:`kvm_vol.forge.blist`) whose first
  ``howmany(BBSIZE, PAGE_SIZE)`` blocks are never freed and from which the
  device's allocation ranges are taken, ``sw_used`` pages in use (their
  sum), ``sw_dev``/``sw_vp`` naming the device (a VCHR vnode whose
  ``v_rdev`` is the ``struct cdev`` with ``si_name``).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kvm_vol import freebsd as F
from kvm_vol.forge.blist import Blist
from kvm_vol.forge.kernel import Kernel

#: Default load averages (1, 5, 15 minutes) of the demo machine.
DEFAULT_LOADAVG = (0.52, 0.39, 0.27)
#: Default statclock ticks per CPU: user, nice, sys, intr, idle.
DEFAULT_CP_TIME = ((81233, 120, 40211, 3110, 1902711), (60121, 14, 38800, 1210, 1931000))
#: swap_pager_init(): nsw_cluster_max = min(maxphys / PAGE_SIZE, MAX_PAGEOUT_CLUSTER) = 32 on amd64.
NSW_CLUSTER_MAX = 32


@dataclass
class SwapSpec:
    """One swap device: its devfs name, size in pages and the block ranges in use.

    ``allocations`` are (first block, count) ranges taken out of the
    device's blist; ``sw_used`` is what the kernel's counter says, the sum
    of the ranges unless a test wants the two to disagree.
    """

    name: str  # si_name of the device, e.g. "ada0p3"
    nblks: int
    allocations: Tuple[Tuple[int, int], ...] = ()
    flags: int = 0
    dev: int = 0  # dev_t (si_udev)
    sw_used: Optional[int] = None

    @property
    def used(self) -> int:
        return sum(count for _first, count in self.allocations)


#: A disk partition in use and a memory disk being removed (swapoff in progress: SW_CLOSING,
#: 300 pages still to be paged back in).
#: ada0p3's 524288 blocks make a four-level tree (bl_radix 262144: the root's
#: children cover 262144 blocks, theirs 4096, the leaves 64); its allocations cross
#: a leaf boundary, a 4096-block meta node boundary and the boundary between
#: the root's first two children, and leave single blocks free inside.
DEFAULT_SWAP = (SwapSpec("ada0p3", 524288, ((2, 4094), (4096, 4000), (8100, 40), (8142, 56),
                                            (200000, 4500), (262100, 187)), dev=0x5E),
                SwapSpec("md99", 65536, ((2, 300),), flags=F.SW_CLOSING, dev=0x9A))


def _boot_messages(banner: str, target: int) -> List[str]:
    """Console lines of a long-running machine, more than ``target`` bytes in all."""
    lines = ["---<<BOOT>>---\n", "Copyright (c) 1992-2025 The FreeBSD Project.\n", banner,
             "CPU: QEMU Virtual CPU (2400.00-MHz K8-class CPU)\n"]
    total = sum(len(s) for s in lines)
    n = 0
    while total < target:
        n += 1
        line = (f"pid {1000 + n % 7919} (exfil{n % 13}), jid 0, uid 1001: exited on signal 11 (no core dump - "
                f"bad address) seq={n}\n" if n % 5 else
                f"<6>ums0: on usbus0 (event {n})\n")
        lines.append(line)
        total += len(line)
    lines.append("Fatal trap 12: page fault while in kernel mode\n")
    lines.append("panic: forge: synthetic dump\n")
    return lines


class System:
    """Writes the system-wide state into a :class:`Kernel`'s machine."""

    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.m = kernel.m
        self.L = kernel.L
        self.manifest: Dict[str, Any] = {}

    # ------------------------------------------------------------------
    def loadavg(self, values: Sequence[float] = DEFAULT_LOADAVG) -> None:
        m = self.m
        raw = [int(v * F.FSCALE) for v in values]  # loadav(): fixed point, FSCALE units
        va = m.kernel_var("averunnable", {"kind": "struct", "name": "loadavg"})
        m.set_fields(va, "loadavg", {"ldavg": raw, "fscale": F.FSCALE})
        self.manifest["loadavg"] = {"ldavg": raw, "fscale": F.FSCALE,
                                    "load": [r / F.FSCALE for r in raw]}

    def cp_time(self, per_cpu: Sequence[Sequence[int]] = DEFAULT_CP_TIME) -> None:
        """pcpu areas with pc_cp_time, cpuid_to_pcpu[], mp_maxcpus/mp_ncpus (if nobody made them)."""
        m, L = self.m, self.L
        if "pcpu" not in L.user_types:
            return
        ptr_size = L.pointer_size
        if "cpuid_to_pcpu" in m.symbols:
            table = m.symbols["cpuid_to_pcpu"]
            pcpus = [int.from_bytes(m.read_kva(table + ptr_size * i, ptr_size), "little")
                     for i in range(len(per_cpu))]
        else:
            maxcpu = 256
            desc = self.k._types.get("cpuid_to_pcpu", {}).get("type")
            if desc and desc.get("kind") == "array":
                maxcpu = desc["count"]
            else:
                desc = {"kind": "array", "count": maxcpu,
                        "subtype": {"kind": "pointer", "subtype": {"kind": "struct", "name": "pcpu"}}}
            # amd64's pmap_bootstrap() takes pcpu pages right after the kernel and
            # maps them above KERNBASE (where even v1 minidumps reach); __pcpu
            # points at them.  The forge reserves them in its image.
            base = m.place_rodata(bytes(len(per_cpu) * L.sizeof("pcpu")), align=4096)
            pcpus = [base + i * L.sizeof("pcpu") for i in range(len(per_cpu))]
            m.kernel_var("cpuid_to_pcpu", desc, pcpus + [0] * (maxcpu - len(pcpus)))
            if "__pcpu" not in m.symbols:
                m.kernel_var("__pcpu", {"kind": "pointer", "subtype": {"kind": "struct", "name": "pcpu"}}, base)
            for name, value in (("mp_maxcpus", maxcpu), ("mp_ncpus", len(per_cpu)), ("mp_maxid", len(per_cpu) - 1)):
                if name not in m.symbols:
                    m.kernel_var(name, {"kind": "base", "name": "int" if name != "mp_maxid" else "unsigned int"}, value)
            for i, pc in enumerate(pcpus):
                m.set_fields(pc, "pcpu", {"pc_cpuid": i})
        for pc, ticks in zip(pcpus, per_cpu):
            m.set_fields(pc, "pcpu", {"pc_cp_time": list(ticks)})
        self.manifest["cp_time"] = [sum(t[i] for t in per_cpu) for i in range(len(F.CPUSTATES))]

    # ------------------------------------------------------------------
    def msgbuf(self, lines: Optional[List[str]] = None) -> None:
        """Refill the boot-time message buffer like msgbuf_addstr(), wrapping the ring."""
        m, L, k = self.m, self.L, self.k
        ring = getattr(k, "_msgbuf_ring", None)
        if ring is None:
            return
        data_va, size = ring
        hdr_va = m.read_ptr(m.symbols["msgbufp"])
        if lines is None:
            lines = _boot_messages(k.banner, size + size // 3)
        seqmod = 16 * size  # SEQMOD(size)
        buf = bytearray(size)
        wseq = 0
        for ch in "".join(lines).encode():
            buf[wseq % size] = ch  # MSGBUF_SEQ_TO_POS
            wseq = (wseq + 1) % seqmod  # MSGBUF_SEQADD
        text = "".join(lines).encode()
        flags = F.MSGBUF_WRAP if len(text) >= size else 0
        if not text.endswith(b"\n"):
            flags |= F.MSGBUF_NEEDNL
        m.write_kva(data_va, bytes(buf))
        m.set_fields(hdr_va, "msgbuf", {"msg_wseq": wseq, "msg_rseq": wseq, "msg_seqmod": seqmod,
                                        "msg_cksum": sum(buf) & 0xFFFFFFFF, "msg_flags": flags,
                                        "msg_lastpri": -1 & 0xFFFFFFFF, "msg_magic": F.MSG_MAGIC})
        # vm_page_startup(): the pages under msg_ptr go into minidumps (dump_add_page()).
        first = m.kva_to_pa(data_va)
        for pa in range(first & ~0xFFF, first + size + L.sizeof("msgbuf"), F.PAGE_SIZE):
            m.uma_pfns.add(pa >> 12)
        # What the kernel would hand out (msgbuf_peekbytes from the oldest byte).
        visible = text[-size:] if flags & F.MSGBUF_WRAP else text
        self.manifest["msgbuf"] = {
            "size": size, "wseq": wseq, "wrapped": bool(flags & F.MSGBUF_WRAP),
            "text": visible.decode(), "lines": visible.decode().split("\n")[:-1] if visible.endswith(b"\n")
            else visible.decode().split("\n"),
        }
        k.msgbuf_text = visible

    # ------------------------------------------------------------------
    def _cdev(self, name: str) -> int:
        """make_dev(): the device's struct cdev, named by si_name."""
        return self.m.alloc_struct("cdev", {"si_name": name.encode()})

    def _devvp(self, cdev: int) -> int:
        """The devfs VCHR vnode that swapon() opened (v_rdev -> the cdev)."""
        m, L = self.m, self.L
        vp = m.alloc_struct("vnode")
        m.set_fields(vp, "vnode", {"v_type": L.enum_value(L.field("vnode", "v_type")[1]["name"], "VCHR"),
                                   "v_rdev": cdev, "v_usecount": 1, "v_holdcnt": 1})
        return vp

    def _blist(self, dev: SwapSpec, reserved: int) -> int:
        """swaponsomething()'s blist with ``dev``'s allocations; returns its VA.

        blist_create() (M_ZERO: all allocated), blist_free() of every block
        but the first ``reserved``, then each allocation range filled.  The
        structure is one malloc(offsetof(struct blist, bl_root[nodes])).
        """
        m, L = self.m, self.L
        tree = Blist(dev.nblks)
        tree.free(reserved, dev.nblks - reserved)
        for first, count in dev.allocations:
            if tree.fill(first, count) != count:
                raise ValueError(f"swap {dev.name}: allocation {first}+{count} overlaps another or the reserved blocks")
        if dev.allocations:
            last_first, last_count = dev.allocations[-1]
            tree.cursor = (last_first + last_count) % dev.nblks  # blist_alloc() leaves it after the last one
        if dev.flags & F.SW_CLOSING:
            # swapoff_one(): blist_fill(sp->sw_blist, 0, nblks) so nothing more is
            # allocated there; the pages still on the device keep sw_used up, and
            # swp_pager_freeswapspace() no longer frees blocks of a closing device.
            tree.fill(0, dev.nblks)
        word = L.type_size(L.field("blmeta", "bm_bitmap")[1])
        root_off = L.offsetof("blist", "bl_root")
        nodes = tree.nodes_bytes(word)
        bl = m.uma_alloc(root_off + len(nodes))
        m.set_fields(bl, "blist", {"bl_blocks": tree.blocks, "bl_avail": tree.avail, "bl_radix": tree.radix,
                                   "bl_cursor": tree.cursor})
        m.write_kva(bl + root_off, nodes)
        return bl

    def swap(self, devices: Sequence[SwapSpec] = DEFAULT_SWAP) -> None:
        m, L = self.m, self.L
        if "swdevt" not in L.user_types or "blist" not in L.user_types:
            return
        # TAILQ_HEAD(, swdevt): tqh_first, tqh_last (the pack has the anonymous struct's type).
        head = m.kernel_var("swtailq", self.k._type("swtailq", {
            "kind": "array", "count": 2, "subtype": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}}))
        m.kernel_var("nswapdev", {"kind": "base", "name": "int"}, len(devices))
        m.kernel_var("nsw_cluster_max", {"kind": "base", "name": "int"}, NSW_CLUSTER_MAX)
        list_off = L.offsetof("swdevt", "sw_list")
        reserved = -(-F.BBSIZE // m.PAGE_SIZE)  # howmany(BBSIZE, PAGE_SIZE)
        prev_next = head  # &tqh_first
        rows = []
        first_blk = 0
        for dev in devices:
            sp = m.alloc_struct("swdevt")
            cdev = self._cdev(dev.name)
            vp = self._devvp(cdev)
            blocks = dev.nblks
            bl = self._blist(dev, reserved)
            sw_used = dev.used if dev.sw_used is None else dev.sw_used
            m.set_fields(sp, "swdevt", {
                "sw_flags": dev.flags, "sw_nblks": blocks, "sw_used": sw_used, "sw_dev": dev.dev,
                "sw_vp": vp, "sw_id": vp, "sw_first": first_blk, "sw_end": first_blk + blocks,
                "sw_blist": bl,
            })
            first_blk += blocks + 1  # swaponsomething(): one uncovered page between devices
            # TAILQ_INSERT_TAIL(&swtailq, sp, sw_list)
            m.write_ptr(prev_next, sp)
            m.write_ptr(sp + list_off + m.ptr_size, prev_next)
            prev_next = sp + list_off
            # "used" is the kernel's sw_used (what swapinfo shows); "blist_used" the
            # blocks the allocations took out of the bitmap, from the spec (None
            # while swapoff is in progress: the bitmap is then filled whole).
            rows.append({"device": f"/dev/{dev.name}", "nblks": blocks, "used": sw_used,
                         "total": blocks - NSW_CLUSTER_MAX, "flags": dev.flags,
                         "blist_used": None if dev.flags & F.SW_CLOSING else dev.used,
                         "allocations": [list(a) for a in dev.allocations],
                         "offset": sp})
        m.write_ptr(head + m.ptr_size, prev_next)  # tqh_last
        self.manifest["swap"] = {
            "devices": rows, "dmmax": NSW_CLUSTER_MAX,
            "total": {"total": sum(r["total"] for r in rows), "used": sum(r["used"] for r in rows)},
        }


def populate(kernel: Kernel, swap: Optional[Sequence[SwapSpec]] = None) -> Dict[str, Any]:
    """The default system state of a forge machine (``swap``: other devices); returns its manifest keys."""
    system = System(kernel)
    system.loadavg()
    system.cp_time()
    system.msgbuf()
    system.swap(DEFAULT_SWAP if swap is None else swap)
    return system.manifest
