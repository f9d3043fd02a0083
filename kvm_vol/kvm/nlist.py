"""``kvm_nlist`` on a dead kernel: symbols, VNET and DPCPU relocation, zpcpu reads, counters.

:class:`KernelNlist` answers what libkvm's ``_kvm_nlist`` answers for a
crash dump (``lib/libkvm/kvm.c``, ``kvm_vnet.c``, ``kvm_pcpu.c``):

* a name is looked up with one leading ``_`` removed (callers use a.out
  names such as ``_allproc``) in the kernel's symbol table, local symbols
  included; a hit is returned as it is;
* names still missing are tried as ``vnet_entry_<name>``, relocated by the
  selected vnet's ``vnet_data_base`` when inside ``set_vnet``, then as
  ``pcpu_entry_<name>``, relocated by ``dpcpu_off[cpu]`` when inside
  ``set_pcpu`` (:mod:`kvm_vol.kvm.linkersets`);
* the vnet is, as libkvm does for crash dumps (``dumptid > 0``), proc0's:
  ``p_ucred->cr_prison->pr_vnet`` with ``vnet_magic_n == VNET_MAGIC_N``;
  another process's vnet can be chosen by pid (libkvm would take the
  calling tool's own pid on a live system, which means nothing for a dump);
* :meth:`read_zpcpu` and :meth:`counter_u64_fetch` read UMA per-CPU data as
  ``kvm_read_zpcpu``/``kvm_counter_u64_fetch`` do, except that a read error
  gives None instead of libkvm's indistinguishable 0.

Nothing here raises for bad memory: unreadable or inconsistent state leaves
that relocation unavailable (and says why in :attr:`KernelNlist.notes`).
"""

import struct
from typing import List, NamedTuple, Optional, Tuple

from volatility3.framework import exceptions, interfaces

from kvm_vol import arch as archmod
from kvm_vol.core.amd64 import canonical
from kvm_vol.kvm import linkersets as LS

__all__ = ["KernelNlist", "NlistEntry"]

_U64 = (1 << 64) - 1
#: Upper bound for mp_maxcpus (MAXCPU is 1024 on amd64 GENERIC 14/15).
_MAX_CPUS = 65536


class NlistEntry(NamedTuple):
    name: str  #: as asked
    symbol: Optional[str]  #: the symbol that matched (``vnet_entry_...`` for a VNET global)
    value: Optional[int]  #: relocated address, None when unresolved
    relocation: str  #: "", "vnet" or "dpcpu"


class KernelNlist:
    """libkvm-style symbol lookup over a Volatility kernel module."""

    def __init__(self, context: interfaces.context.ContextInterface, layer_name: str, symbol_table: str,
                 cpu: int = 0, vnet_pid: Optional[int] = None):
        self.context = context
        self.table = context.symbol_space[symbol_table]
        self.layer = context.layers[layer_name]
        self.cpu = cpu
        self.vnet_pid = vnet_pid
        self.notes: List[str] = []
        self._vnet: Optional[Tuple[int, int, int]] = None  # start, stop, base
        self._dpcpu: Optional[Tuple[int, int, List[int]]] = None  # start, stop, offsets
        self._vnet_tried = self._dpcpu_tried = False
        self._pcpu: Optional[Tuple[int, int, int]] = None  # ncpus, sizeof(struct pcpu), __pcpu
        self._pcpu_tried = False
        # sizeof(void *) / uintptr_t of this kernel (4 on i386), and its wrap-around mask.
        self.ptr_size = self.table.get_type("pointer").size
        self._mask = (1 << (8 * self.ptr_size)) - 1

    @classmethod
    def for_module(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                   cpu: int = 0, vnet_pid: Optional[int] = None) -> "KernelNlist":
        """The lookup for a plugin's kernel module (its layer and symbol table)."""
        module = context.modules[kernel_module_name]
        return cls(context, module.layer_name, module.symbol_table_name, cpu=cpu, vnet_pid=vnet_pid)

    # -- memory ------------------------------------------------------------
    def read(self, address: int, length: int) -> Optional[bytes]:
        try:
            return self.layer.read(canonical(address), length)
        except exceptions.InvalidAddressException:
            return None

    def _u(self, address: int, size: int, signed: bool = False) -> Optional[int]:
        data = self.read(address, size)
        return None if data is None else int.from_bytes(data, "little", signed=signed)

    # -- plain symbols -----------------------------------------------------
    def lookup(self, name: str) -> Optional[int]:
        """The address of ``name`` in the kernel's symbol table (no relocation), or None."""
        try:
            return canonical(self.table.get_symbol(name).address)
        except (exceptions.SymbolError, KeyError, AttributeError):
            return None

    def _offset(self, type_name: str, member: str) -> Optional[int]:
        try:
            return self.table.get_type(type_name).relative_child_offset(member)
        except (exceptions.SymbolError, KeyError, AttributeError):
            return None

    # -- VNET ----------------------------------------------------------------
    def _vnet_setup(self) -> Optional[Tuple[int, int, int]]:
        if self._vnet_tried:
            return self._vnet
        self._vnet_tried = True
        start_name, stop_name = LS.set_bounds(LS.VNET_SETNAME)
        start, stop = self.lookup(start_name), self.lookup(stop_name)
        if start is None or stop is None:
            self.notes.append("no set_vnet in this kernel (no VIMAGE): vnet symbols are not relocated")
            return None
        procp = self._vnet_proc()
        if procp is None:
            return None
        offs = [self._offset("proc", "p_ucred"), self._offset("ucred", "cr_prison"), self._offset("prison", "pr_vnet")]
        if None in offs:
            self.notes.append("the symbol table lacks proc.p_ucred, ucred.cr_prison or prison.pr_vnet")
            return None
        ptr = procp
        for what, off in zip(("p_ucred", "cr_prison", "pr_vnet"), offs):
            ptr = self._u(ptr + off, self.ptr_size)
            if not ptr:
                self.notes.append(f"vnet: {what} is NULL or unreadable")
                return None
        magic_off = self._offset("vnet", "vnet_magic_n")
        base_off = self._offset("vnet", "vnet_data_base")
        if magic_off is None or base_off is None:
            if self.ptr_size != 8:
                self.notes.append("vnet: the symbol table has no struct vnet (its LP64 layout does not apply here)")
                return None
            magic_off, base_off = LS.VNET_LP64_OFFSETS["vnet_magic_n"], LS.VNET_LP64_OFFSETS["vnet_data_base"]
        if self._u(ptr + magic_off, 4) != LS.VNET_MAGIC_N:
            self.notes.append(f"vnet at {ptr:#x}: invalid vnet magic#")
            return None
        base = self._u(ptr + base_off, self.ptr_size)  # uintptr_t vnet_data_base
        if base is None:
            self.notes.append(f"vnet at {ptr:#x}: vnet_data_base unreadable")
            return None
        self._vnet = (start, stop, base)
        return self._vnet

    def _vnet_proc(self) -> Optional[int]:
        """proc0 for a crash dump (dumptid > 0) unless a pid was chosen; else that pid's proc."""
        pid = self.vnet_pid
        dumptid_at = self.lookup("dumptid")
        dumptid = self._u(dumptid_at, 4, signed=True) if dumptid_at is not None else 0
        if pid is None or pid == 0:
            if pid is None and not dumptid:
                self.notes.append("not a crash dump (dumptid is 0): using proc0's vnet")
            proc0 = self.lookup("proc0")
            if proc0 is None:
                self.notes.append("vnet: no proc0 symbol")
            return proc0
        allproc = self.lookup("allproc")
        pid_off, list_off = self._offset("proc", "p_pid"), self._offset("proc", "p_list")
        if allproc is None or pid_off is None or list_off is None:
            self.notes.append("vnet: cannot walk allproc")
            return None
        seen = set()
        procp = self._u(allproc, self.ptr_size)
        while procp and procp not in seen and len(seen) < 1_000_000:
            seen.add(procp)
            if self._u(procp + pid_off, 4, signed=True) == pid:
                return procp
            procp = self._u(procp + list_off, self.ptr_size)
        self.notes.append(f"vnet: pid {pid} not found on allproc")
        return None

    # -- DPCPU -----------------------------------------------------------------
    def _dpcpu_setup(self) -> Optional[Tuple[int, int, List[int]]]:
        if self._dpcpu_tried:
            return self._dpcpu
        self._dpcpu_tried = True
        start_name, stop_name = LS.set_bounds(LS.DPCPU_SETNAME)
        start, stop = self.lookup(start_name), self.lookup(stop_name)
        off_at, max_at = self.lookup("dpcpu_off"), self.lookup("mp_maxcpus")
        if None in (start, stop, off_at, max_at):
            self.notes.append("no set_pcpu/dpcpu_off/mp_maxcpus: dpcpu symbols are not relocated")
            return None
        maxcpus = self._u(max_at, 4)
        if maxcpus is None or not 0 < maxcpus <= _MAX_CPUS:
            self.notes.append(f"dpcpu: implausible mp_maxcpus {maxcpus}")
            return None
        raw = self.read(off_at, self.ptr_size * maxcpus)  # uintptr_t dpcpu_off[MAXCPU]
        if raw is None:
            self.notes.append("dpcpu: dpcpu_off is unreadable")
            return None
        self._dpcpu = (start, stop, list(struct.unpack(f"<{maxcpus}{'I' if self.ptr_size == 4 else 'Q'}", raw)))
        return self._dpcpu

    def dpcpu_offset(self, cpu: int) -> Optional[int]:
        """``dpcpu_off[cpu]``; None when the CPU is beyond mp_maxcpus or absent (offset 0), as kvm_dpcpu_setcpu refuses."""
        setup = self._dpcpu_setup()
        if setup is None or not 0 <= cpu < len(setup[2]) or setup[2][cpu] == 0:
            return None
        return setup[2][cpu]

    def dpcpu_setcpu(self, cpu: int) -> bool:
        """``kvm_dpcpu_setcpu``: use CPU ``cpu``'s DPCPU copies; False (unchanged) if it does not exist."""
        if self.dpcpu_offset(cpu) is None:
            return False
        self.cpu = cpu
        return True

    # -- nlist -----------------------------------------------------------------
    def nlist(self, names: List[str]) -> List[NlistEntry]:
        """One :class:`NlistEntry` per name, in order (unresolved ones have value None)."""
        out = []
        for asked in names:
            name = asked[1:] if asked.startswith("_") and len(asked) > 1 else asked
            value = self.lookup(name)
            if value is None and name != asked:
                value = self.lookup(asked)  # a name that really starts with "_"
                name = asked if value is not None else name
            if value is not None:
                out.append(NlistEntry(asked, name, value, ""))
                continue
            out.append(self._prefixed(asked, name))
        return out

    def _prefixed(self, asked: str, name: str) -> NlistEntry:
        vname = LS.VNET_SYMPREFIX + name
        value = self.lookup(vname)
        if value is not None:
            setup = self._vnet_setup()
            if setup is not None:
                return NlistEntry(asked, vname, LS.relocate(value, *setup, mask=self._mask), "vnet")
            return NlistEntry(asked, vname, None, "vnet")
        pname = LS.DPCPU_SYMPREFIX + name
        value = self.lookup(pname)
        if value is not None:
            setup = self._dpcpu_setup()
            off = self.dpcpu_offset(self.cpu)
            if setup is not None and off is not None:
                return NlistEntry(asked, pname, LS.relocate(value, setup[0], setup[1], off, mask=self._mask), "dpcpu")
            if setup is not None:
                self.notes.append(f"dpcpu: CPU {self.cpu} not found (beyond mp_maxcpus or dpcpu_off 0)")
            return NlistEntry(asked, pname, None, "dpcpu")
        return NlistEntry(asked, None, None, "")

    # -- UMA per-CPU data ----------------------------------------------------------
    def _pcpu_setup(self) -> Optional[Tuple[int, int, int]]:
        if self._pcpu_tried:
            return self._pcpu
        self._pcpu_tried = True
        ncpus_at = self.lookup("mp_ncpus")
        ncpus = self._u(ncpus_at, 4) if ncpus_at is not None else None
        try:
            pcpu_size = self.table.get_type("pcpu").size
        except (exceptions.SymbolError, KeyError):
            pcpu_size = None
        if not ncpus or ncpus > _MAX_CPUS or not pcpu_size:
            self.notes.append("zpcpu: no mp_ncpus or struct pcpu")
            return None
        offset_base = 0
        if archmod.for_layer(self.layer).name in LS.OFFSET_BY_PCPU:
            at = self.lookup("__pcpu")
            offset_base = self._u(at, self.ptr_size) if at is not None else None
            if offset_base is None:
                self.notes.append("zpcpu: cannot read __pcpu")
                return None
        self._pcpu = (ncpus, pcpu_size, offset_base)
        return self._pcpu

    def read_zpcpu(self, base: int, size: int, cpu: int) -> Optional[bytes]:
        """CPU ``cpu``'s copy of a UMA per-CPU allocation at ``base`` (``kvm_read_zpcpu``)."""
        setup = self._pcpu_setup()
        if setup is None:
            return None
        _ncpus, pcpu_size, offset_base = setup
        return self.read((base + offset_base + pcpu_size * cpu) & self._mask, size)

    def counter_u64_fetch(self, base: int) -> Optional[int]:
        """Sum of a ``counter(9)`` over CPUs 0 .. mp_ncpus-1; None if any copy is unreadable."""
        setup = self._pcpu_setup()
        if setup is None:
            return None
        total = 0
        for cpu in range(setup[0]):
            data = self.read_zpcpu(base, 8, cpu)
            if data is None:
                return None
            total += int.from_bytes(data, "little")
        return total & _U64
