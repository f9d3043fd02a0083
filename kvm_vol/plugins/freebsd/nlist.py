"""``freebsd.nlist``: look kernel symbols up like ``kvm_nlist(3)``, VNET and DPCPU globals included."""

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement
from kvm_vol.kvm.nlist import KernelNlist
from kvm_vol.symbols import layoutcheck
from kvm_vol.symbols.volsym import kvm_plugin

vollog = logging.getLogger(__name__)

#: Without --symbol: what libkvm resolves for its own work on a dump (kvm_vnet.c,
#: kvm_pcpu.c, kvm_proc.c) and the kernel's self-describing layout symbols.
DEFAULT_SYMBOLS = (
    "version", "osreldate", "kernbase", "allproc", "proc0", "dumptid", "vnet_head", "vnet0",
    "___start_set_vnet", "___stop_set_vnet", "___start_set_pcpu", "___stop_set_pcpu",
    "dpcpu_off", "cpuid_to_pcpu", "___pcpu", "mp_maxcpus", "mp_ncpus",
) + layoutcheck.SYMBOLS


@kvm_plugin
class Nlist(interfaces.plugins.PluginInterface):
    """Resolves kernel symbols as kvm_nlist does (vnet_entry_/pcpu_entry_ relocation)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            requirements.ListRequirement(name="symbol", element_type=str, optional=True,
                                         description="Symbol names (a leading '_' is removed, as kvm_nlist does); "
                                                     "default: the symbols libkvm itself looks up"),
            requirements.IntRequirement(name="cpu", default=0, optional=True,
                                        description="CPU whose copy of DPCPU symbols to use (kvm_dpcpu_setcpu)"),
            requirements.IntRequirement(name="vnet-pid", optional=True,
                                        description="Use the vnet of this process's jail (default: proc0's, as libkvm on a dump)"),
            requirements.BooleanRequirement(name="counter", default=False, optional=True,
                                            description="Also read each symbol as a counter_u64_t and sum it over CPUs"),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        nl = KernelNlist.for_module(self.context, self.config["kernel"], cpu=self.config.get("cpu") or 0,
                         vnet_pid=self.config.get("vnet-pid"))
        na = renderers.NotAvailableValue
        for entry in nl.nlist(list(self.config.get("symbol") or DEFAULT_SYMBOLS)):
            counter = na()
            if self.config.get("counter") and entry.value is not None:
                raw = nl.read(entry.value, nl.ptr_size)  # counter_u64_t is a pointer
                total = nl.counter_u64_fetch(int.from_bytes(raw, "little")) if raw is not None else None
                counter = total if total is not None else renderers.UnreadableValue()
            yield 0, (
                entry.name, entry.symbol or na(),
                format_hints.Hex(entry.value) if entry.value is not None else na(),
                entry.relocation or "-", counter,
            )
        for note in dict.fromkeys(nl.notes):  # why a relocation was unavailable (-v shows it)
            vollog.info(note)

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("NAME", str), ("SYMBOL", str), ("VALUE", format_hints.Hex), ("RELOCATION", str), ("COUNTER", int)],
            self._generator(),
        )
