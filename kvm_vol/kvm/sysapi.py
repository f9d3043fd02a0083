"""System-wide and per-file parts of the libkvm-style API, mixed into :class:`kvm_vol.kvm.kvm.KVM`.

``getloadavg`` (kvm_getloadavg), ``getcptime`` (kvm_getcptime),
``getswapinfo`` (kvm_getswapinfo, working on dead 13-15 kernels where libkvm
fails for want of ``dmmax``), ``getfiles`` (libprocstat's kvm mode, with
paths) and ``getmsgbuf`` (what ``dmesg -M`` reads).  The host class provides
``context``, ``layer_name``, ``symbol_table`` and ``_err`` (kept for
``geterr()``, never cleared by success, like libkvm's).
"""

from typing import List, Optional, Tuple

from kvm_vol.kvm import files, loadavg, msgbuf, swap


class SystemAPI:
    """Mixin: needs ``self.context``, ``self.layer_name``, ``self.symbol_table`` and ``self._err``."""

    def _kernel_module(self):
        module = getattr(self, "_system_module", None)
        if module is None:
            module = self.context.module(self.symbol_table, self.layer_name, 0)
            self._system_module = module
        return module

    def getloadavg(self, nelem: int = 3) -> Optional[Tuple[float, ...]]:
        """``averunnable.ldavg[i] / fscale`` for ``i < min(nelem, 3)``; None (and geterr) on failure."""
        if nelem < 0:
            self._err = "kvm_getloadavg: invalid nelem"
            return None
        la = loadavg.getloadavg(self.context, self._kernel_module())
        if la is None:
            self._err = "kvm_getloadavg: averunnable is missing or unreadable"
            return None
        return tuple(la.load[:min(nelem, 3)])

    def getcptime(self) -> Optional[List[int]]:
        """``long cp_time[CPUSTATES]`` summed over CPUs."""
        cp = loadavg.getcptime(self.context, self._kernel_module())
        if cp is None:
            self._err = "kvm_getcptime: no cp_time and no readable pcpu areas"
        return cp

    def getswapinfo(self) -> Optional[List[swap.SwapRow]]:
        """One row per swap device, then the total row (pages)."""
        rows = swap.getswapinfo(self.context, self._kernel_module())
        if rows is None:
            self._err = "kvm_getswapinfo: the kernel has no swtailq"
        return rows

    def getfiles(self, proc, mmapped: bool = False) -> List[files.FileRecord]:
        """Open files of a process: a ProcRecord, a ``struct proc`` object or its address.

        ``mmapped`` adds its memory-mapped files (libprocstat's ``mmapped``).
        """
        address = getattr(proc, "offset", None)
        if address is None:
            address = proc.vol.offset if hasattr(proc, "vol") else int(proc)
        obj = self.context.object(f"{self.symbol_table}!proc", layer_name=self.layer_name, offset=address)
        return files.Reader(self.context, self._kernel_module()).getfiles(obj, mmapped)

    def getmsgbuf(self, prefer_section: bool = False) -> Optional[msgbuf.MsgBuf]:
        """The kernel message buffer, oldest byte first (or the minidump's copy)."""
        mb = msgbuf.read_msgbuf(self.context, self._kernel_module(), prefer_section=prefer_section)
        if mb is None:
            self._err = "kvm msgbuf: msgbufp is missing or unreadable and the dump has no msgbuf section"
        return mb
