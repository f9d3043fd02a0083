"""Raw physical memory image: file offset = physical address.

What ``dd if=/dev/mem``, a hypervisor's memory file or the forge's raw writer
produce.  Everything up to the end of the file counts as dumped; memory
that was not captured reads as whatever the file holds there (usually zeros).
"""

from typing import List

from kvm_vol.formats import Dump, Run

__all__ = ["RawDump"]


class RawDump(Dump):
    kind = "raw"
    what = "the raw image"
    #: A raw image carries no header: its architecture is whatever kernel the stacker finds in it.
    arch = None

    def _compute_runs(self) -> List[Run]:
        return [(0, self.origin, self.view.size)] if self.view.size else []
