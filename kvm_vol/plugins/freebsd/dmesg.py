"""``freebsd.dmesg``: the kernel message buffer, oldest line first, like ``dmesg -a``."""

import re
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement
from kvm_vol.kvm import msgbuf
from kvm_vol.symbols.volsym import kvm_plugin

#: A syslog priority prefix, "<pri>", that log(9) puts at the start of a line.
_PRIORITY = re.compile(r"^<(\d{1,3})>")


def split_priority(line: str):
    """``(priority or None, text)``: dmesg(8) strips the ``<pri>`` prefix of log(9) lines."""
    m = _PRIORITY.match(line)
    if not m:
        return None, line
    return int(m.group(1)), line[m.end():]


@kvm_plugin
class Dmesg(interfaces.plugins.PluginInterface):
    """The kernel message buffer (msgbufp; for minidumps optionally the dump's own copy)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            requirements.BooleanRequirement(
                name="section", default=False, optional=True,
                description="Read the ring from the minidump's msgbuf section instead of kernel memory"),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        mb = msgbuf.read_msgbuf(self.context, self.config["kernel"], prefer_section=self.config.get("section"))
        if mb is None:
            return
        for number, line in enumerate(mb.lines(), 1):
            pri, text = split_priority(line)
            yield 0, (number, renderers.NotAvailableValue() if pri is None else pri, text)

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid([("Line", int), ("Priority", int), ("Text", str)], self._generator())
