"""``freebsd.swap``: swap devices and their use, like ``swapinfo -k``."""

from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.renderers import format_hints

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement
from kvm_vol import freebsd as F
from kvm_vol.kvm import swap
from kvm_vol.kvm.kernelmod import kernel_module
from kvm_vol.symbols.volsym import kvm_plugin

_FLAG_NAMES = ((F.SW_UNMAPPED, "UNMAPPED"), (F.SW_CLOSING, "CLOSING"))


def flag_names(flags: int) -> str:
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    rest = flags & ~sum(bit for bit, _ in _FLAG_NAMES)
    if rest:
        names.append(f"{rest:#x}")
    return ",".join(names)


@kvm_plugin
class Swap(interfaces.plugins.PluginInterface):
    """Swap devices (swtailq) with size and use in KiB, and the total row."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [kernel_requirement()]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        rows = swap.getswapinfo(self.context, self.config["kernel"])
        if rows is None:
            return
        # swap blocks are the kernel's pages: 16 KiB on a GENERIC-16K arm64 kernel (its layer knows)
        kernel = kernel_module(self.context, self.config["kernel"])
        kib = getattr(self.context.layers[kernel.layer_name], "page_size", F.PAGE_SIZE) // 1024
        for row in rows:  # the total row always comes last (swapinfo prints it for 2+ devices)
            avail = row.total - row.used
            capacity = f"{row.used / row.total * 100:.0f}%" if row.total > 0 else "0%"
            yield 0, (
                "Total" if row.is_total else row.devname, row.total * kib, row.used * kib, avail * kib, capacity,
                flag_names(row.flags),
                renderers.NotAvailableValue() if row.offset is None else format_hints.Hex(row.offset),
            )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("Device", str), ("Total", int), ("Used", int), ("Avail", int), ("Capacity", str),
             ("Flags", str), ("OFFSET (V)", format_hints.Hex)],
            self._generator(),
        )
