"""VNET and DPCPU state of a forge machine: what ``kvm_nlist`` relocates.

Added to a built machine (after :func:`kvm_vol.forge.system.populate` made
the pcpu areas, ``__pcpu``, ``mp_ncpus`` and ``mp_maxcpus``), the way the
kernel sets it up at boot:

* ``set_pcpu`` holds the master copy of ``DPCPU_DEFINE_STATIC(int,
  pcputicks)`` (kern_clock.c) as ``pcpu_entry_pcputicks``; every CPU gets a
  dynamic per-CPU area and ``dpcpu_off[cpu] = area - __start_set_pcpu``
  (``dpcpu_init``);
* ``set_vnet`` holds ``VNET_DEFINE(int, ipforwarding)`` and
  ``VNET_PCPUSTAT_DEFINE(struct ipstat, ipstat)`` (an array of
  ``counter_u64_t``) as ``vnet_entry_*``; vnet0's copy lives at
  ``vnet_data_base + value`` with ``vnet_data_base = vnet_data_mem -
  __start_set_vnet`` (``vnet_alloc``), its ``struct vnet`` has
  ``VNET_MAGIC_N`` and is ``prison0.pr_vnet``; every credential points at
  ``prison0``;
* the ``ipstat`` counters are UMA per-CPU allocations: one 8-byte slot per
  CPU, ``sizeof(struct pcpu)`` apart, addressed relative to ``__pcpu``;
* ``dumptid`` is the tid of the thread that dumped (> 0: a crash dump, so
  libkvm takes the vnet of proc0).

:func:`add_vnet_and_dpcpu` returns the ground truth for the manifest and
refreshes the forge's ISF so that it knows the new symbols.
"""

from typing import Any, Dict

from kvm_vol.forge.build import Forged
from kvm_vol.kvm import linkersets as LS
from kvm_vol.symbols import isf as isfmod
from kvm_vol.symbols import typepacks

__all__ = ["add_vnet_and_dpcpu", "IPSTAT_COUNTERS"]

#: Per-CPU values of the ipstat counters (ips_total, ips_badsum, ips_tooshort, ips_toosmall).
IPSTAT_COUNTERS = ((184467, 3, 0, 1), (90211, 1, 2, 0))
PCPUTICKS = (7340032, 7340029)
_U64 = (1 << 64) - 1


def _int(m, name: str) -> int:
    return int.from_bytes(m.read_kva(m.symbols[name], 4), "little", signed=True)


def add_vnet_and_dpcpu(forged: Forged) -> Dict[str, Any]:
    m = forged.machine
    L = m.layout
    for needed in ("__pcpu", "mp_ncpus", "mp_maxcpus"):
        if needed not in m.symbols:
            raise ValueError(f"forge: {needed} missing; build the machine with its pcpu areas first")
    if m.ptr_size != 8:
        # struct vnet's offsets below are LP64's (type packs do not carry struct vnet).
        raise ValueError(f"forge: VNET/DPCPU state is written for LP64 kernels only, not {m.ARCH}")
    ncpus, maxcpus = _int(m, "mp_ncpus"), _int(m, "mp_maxcpus")
    pcpu_size = L.sizeof("pcpu")
    pcpu_base = m.read_ptr(m.symbols["__pcpu"])
    int_t = {"kind": "base", "name": "int"}
    ulong = {"kind": "base", "name": "unsigned long"}
    truth: Dict[str, Any] = {}

    # --- DPCPU ---------------------------------------------------------
    start = m.kernel_var(LS.DPCPU_SYMPREFIX + "pcputicks", int_t, 0, align=64)
    stop = start + 4
    m.symbols[LS.set_bounds(LS.DPCPU_SETNAME)[0]] = start
    m.symbols[LS.set_bounds(LS.DPCPU_SETNAME)[1]] = stop
    offsets = []
    for cpu in range(ncpus):
        area = m.kmem_alloc(4096)
        offsets.append((area - start) & _U64)
        m.write_kva(area, PCPUTICKS[cpu % len(PCPUTICKS)].to_bytes(4, "little"))
    m.kernel_var("dpcpu_off", {"kind": "array", "count": maxcpus, "subtype": ulong}, offsets + [0] * (maxcpus - ncpus))
    truth["dpcpu"] = {"start": start, "stop": stop, "dpcpu_off": offsets,
                      "pcputicks": [PCPUTICKS[c % len(PCPUTICKS)] for c in range(ncpus)]}

    # --- zpcpu counters --------------------------------------------------
    ncounters = len(IPSTAT_COUNTERS[0])
    slots = m.kmem_alloc(ncpus * pcpu_size)  # CPU n's slot at slots + n * sizeof(struct pcpu)
    counters = []
    for k in range(ncounters):
        for cpu in range(ncpus):
            value = IPSTAT_COUNTERS[cpu % len(IPSTAT_COUNTERS)][k]
            m.write_kva(slots + cpu * pcpu_size + 8 * k, value.to_bytes(8, "little"))
        counters.append((slots + 8 * k - pcpu_base) & _U64)  # amd64: offset from __pcpu

    # --- VNET ----------------------------------------------------------
    vstart = m.kernel_var(LS.VNET_SYMPREFIX + "ipforwarding", int_t, 0, align=64)
    counter_t = {"kind": "pointer", "subtype": {"kind": "base", "name": "unsigned long"}}
    ipstat = m.kernel_var(LS.VNET_SYMPREFIX + "ipstat", {"kind": "array", "count": ncounters, "subtype": counter_t},
                          [0] * ncounters, align=8)
    vstop = ipstat + 8 * ncounters
    m.symbols[LS.set_bounds(LS.VNET_SETNAME)[0]] = vstart
    m.symbols[LS.set_bounds(LS.VNET_SETNAME)[1]] = vstop
    data_mem = m.kmem_alloc(vstop - vstart)
    base = (data_mem - vstart) & _U64
    m.write_kva(data_mem, (1).to_bytes(4, "little"))  # V_ipforwarding = 1 (a router)
    for k, c in enumerate(counters):
        m.write_kva(data_mem + (ipstat - vstart) + 8 * k, c.to_bytes(8, "little"))
    vnet = m.uma_alloc(LS.VNET_LP64_SIZE)
    off = LS.VNET_LP64_OFFSETS
    m.write_kva(vnet + off["vnet_magic_n"], LS.VNET_MAGIC_N.to_bytes(4, "little"))
    m.write_kva(vnet + off["vnet_data_mem"], data_mem.to_bytes(8, "little"))
    m.write_kva(vnet + off["vnet_data_base"], base.to_bytes(8, "little"))
    head = m.kernel_var("vnet_head", {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}, vnet)
    m.write_ptr(vnet + m.ptr_size, head)  # vnet_le.le_prev = &vnet_head.lh_first
    m.kernel_var("vnet0", {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}, vnet)
    prison0 = m.symbols.get("prison0") or m.kernel_var("prison0", {"kind": "struct", "name": "prison"}, align=64)
    m.set_fields(prison0, "prison", {"pr_vnet": vnet})
    cred_off = L.offsetof("proc", "p_ucred")
    for proc in forged.kernel.procs.values():
        cred = m.read_ptr(proc + cred_off)
        m.set_fields(cred, "ucred", {"cr_prison": prison0})
    truth["vnet"] = {"start": vstart, "stop": vstop, "vnet": vnet, "data_base": base, "ipforwarding": 1,
                     "ipstat": [sum(IPSTAT_COUNTERS[c % len(IPSTAT_COUNTERS)][k] for c in range(ncpus))
                                for k in range(ncounters)]}

    # --- dumptid -------------------------------------------------------
    if "dumptid" not in m.symbols:
        running = [t["tid"] for p in forged.kernel.manifest_procs for t in p["threads"]
                   if t["state"] == "running" and p["pid"] != 11]
        m.kernel_var("dumptid", int_t, running[0] if running else 100000)
    truth["dumptid"] = _int(m, "dumptid")

    _refresh_isf(forged)
    forged.extra_manifest["kvm_nlist"] = truth
    return truth


def _refresh_isf(forged: Forged) -> None:
    """Rebuild the forge ISF with the symbols added after :func:`kvm_vol.forge.build.build`."""
    types = typepacks.load(forged.pack)
    m = forged.machine
    symbol_types = {name: {"type": desc} for name, desc in m.symbol_types.items()}
    forged.isf = isfmod.make_kernel_isf(types, m.symbols, forged.kernel.banner.encode(), symbol_types)
