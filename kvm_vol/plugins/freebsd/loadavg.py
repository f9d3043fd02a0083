"""``freebsd.loadavg``: the load average (``sysctl vm.loadavg``) and CPU time (``kern.cp_time``)."""

from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement
from kvm_vol import freebsd as F
from kvm_vol.kvm import loadavg
from kvm_vol.symbols.volsym import kvm_plugin


@kvm_plugin
class LoadAvg(interfaces.plugins.PluginInterface):
    """The 1, 5 and 15 minute load averages (averunnable) and the CPU time counters."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [kernel_requirement()]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        na = renderers.NotAvailableValue
        la = loadavg.getloadavg(self.context, self.config["kernel"])
        cp = loadavg.getcptime(self.context, self.config["kernel"])
        if la is None:
            load = [na()] * 3
            raw = [na()] * 3
            fscale = na()
        else:
            load = [round(v, 2) for v in la.load]
            raw, fscale = list(la.ldavg), la.fscale
        cp_cells = list(cp) if cp is not None else [na()] * len(F.CPUSTATES)
        yield 0, (*load, fscale, *raw, *cp_cells)

    def run(self) -> renderers.TreeGrid:
        # Volatility turns column names into identifiers, so none may start with a digit.
        columns = [("Load 1 min", float), ("Load 5 min", float), ("Load 15 min", float), ("FSCALE", int),
                   ("Raw 1 min", int), ("Raw 5 min", int), ("Raw 15 min", int)]
        columns += [(f"CP_{state.upper()}", int) for state in F.CPUSTATES]
        return renderers.TreeGrid(columns, self._generator())
