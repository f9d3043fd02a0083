"""Load average and CPU time of a dead kernel, like kvm_getloadavg() and kvm_getcptime().

``averunnable`` is a ``struct loadavg { fixpt_t ldavg[3]; long fscale; }``
that ``loadav()`` (kern_synch.c) updates every few seconds; each average is
``ldavg[i] / fscale`` (kvm_getloadavg.c; old kernels also had an ``fscale``
global, which overrides the field when present).  CPU time is
``long cp_time[CPUSTATES]``: a ``cp_time`` global on old kernels, otherwise
the sum of every CPU's ``pcpu.pc_cp_time`` reached through
``cpuid_to_pcpu[0 .. mp_maxcpus - 1]`` (what ``read_cpu_time()`` and
libkvm's ``getsysctl``-less path do), skipping absent CPUs.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional

from volatility3.framework import exceptions, interfaces

from kvm_vol import freebsd as F
from kvm_vol.kvm.kernelmod import KernelRef, kernel_module

vollog = logging.getLogger(__name__)

#: Upper bound on mp_maxcpus accepted from memory (amd64 MAXCPU is 1024).
MAX_CPUS = 65536


@dataclass
class LoadAvg:
    ldavg: List[int]  # raw fixed-point values
    fscale: int

    @property
    def load(self) -> List[float]:
        return [v / self.fscale for v in self.ldavg]


def getloadavg(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef) -> Optional[LoadAvg]:
    """``averunnable`` as kvm_getloadavg() reads it; None when absent or unreadable."""
    kernel = kernel_module(context, kernel_module_name)
    if not kernel.has_symbol("averunnable"):
        vollog.warning("the kernel has no averunnable symbol")
        return None
    try:
        la = kernel.object(object_type="loadavg", offset=kernel.get_symbol("averunnable").address)
        raw = [int(v) for v in la.ldavg][:3]
        fscale = int(la.fscale)
        if kernel.has_symbol("fscale"):  # pre-5.x kernels: an int global overrides the field
            fscale = int(kernel.object(object_type="int", offset=kernel.get_symbol("fscale").address))
    except exceptions.InvalidAddressException as exc:
        vollog.warning(f"averunnable is unreadable: {exc}")
        return None
    if fscale <= 0:
        vollog.warning(f"averunnable.fscale is {fscale}; not a load average")
        return None
    return LoadAvg(raw, fscale)


def getcptime(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef) -> Optional[List[int]]:
    """``long cp_time[CPUSTATES]`` summed over CPUs (kvm_getcptime()); None when unavailable."""
    kernel = kernel_module(context, kernel_module_name)
    n = len(F.CPUSTATES)
    try:
        if kernel.has_symbol("cp_time"):
            arr = kernel.object(object_type="array", offset=kernel.get_symbol("cp_time").address,
                                subtype=kernel.get_type("long"), count=n)
            return [int(v) for v in arr]
        if not (kernel.has_symbol("cpuid_to_pcpu") and kernel.has_symbol("mp_maxcpus")):
            return None
        maxcpus = int(kernel.object(object_type="int", offset=kernel.get_symbol("mp_maxcpus").address))
        if not 0 < maxcpus <= MAX_CPUS:
            vollog.warning(f"mp_maxcpus is {maxcpus}; no CPU time")
            return None
        layer = context.layers[kernel.layer_name]
        ptr = kernel.get_type("pointer").size  # struct pcpu *cpuid_to_pcpu[]: 4 bytes on i386
        raw = layer.read(kernel.offset + kernel.get_symbol("cpuid_to_pcpu").address, ptr * maxcpus)
        table = [int.from_bytes(raw[i:i + ptr], "little") for i in range(0, len(raw), ptr)]
    except exceptions.InvalidAddressException as exc:
        vollog.warning(f"CPU time is unreadable: {exc}")
        return None
    total = [0] * n
    pcpu_type = kernel.symbol_table_name + "!pcpu"
    found = False
    for cpu, address in enumerate(table):
        if not address:
            continue
        try:
            pc = context.object(pcpu_type, layer_name=kernel.layer_name, offset=address)
            for i, v in enumerate(list(pc.pc_cp_time)[:n]):
                total[i] += int(v)
            found = True
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"pcpu of CPU {cpu} is unreadable ({exc}); left out of cp_time")
    return total if found else None
