"""Check an ISF's structure layouts against the kernel's own description of them.

Since FreeBSD 10.3 ``sys/kern/kern_proc.c`` exports a few ``const int``
globals holding ``offsetof()`` of the ``struct proc`` and ``struct thread``
members that debuggers need (kgdb and lldb enumerate threads with them when
there is no debug information), and the machine-dependent code exports
``pcb_size`` (``sizeof(struct pcb)``) on amd64 and arm64.  They are the
kernel's own statement of its layout, so they are the arbiter whenever the
types did not come from the kernel's DWARF: a type pack made from release
headers, or an ISF made for a different build.

:data:`SELF_DESCRIBING` is the one table of those symbols (the forge writes
them from it, the checks read them from it).  :func:`expectations` turns an
ISF into the values its types predict; :func:`compare` lists every symbol
whose value in the kernel differs; :class:`LayoutMismatch` says which field,
what the types expect and what the kernel holds.  A symbol the kernel does
not have (older kernels lack ``proc_off_p_hash``; i386 has no ``pcb_size``)
is not checked.
"""

import struct
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from kvm_vol.errors import SymbolError
from kvm_vol.forge.layout import Layout

__all__ = ["SELF_DESCRIBING", "SYMBOLS", "LayoutMismatch", "Mismatch", "compare", "expectations",
           "read_int_le", "require_match"]

#: ``symbol -> (struct, member)``; a member of None means ``sizeof(struct)``.
SELF_DESCRIBING: Dict[str, Tuple[str, Optional[str]]] = {
    "proc_off_p_pid": ("proc", "p_pid"),
    "proc_off_p_comm": ("proc", "p_comm"),
    "proc_off_p_list": ("proc", "p_list"),
    "proc_off_p_threads": ("proc", "p_threads"),
    "proc_off_p_hash": ("proc", "p_hash"),
    "thread_off_td_tid": ("thread", "td_tid"),
    "thread_off_td_name": ("thread", "td_name"),
    "thread_off_td_oncpu": ("thread", "td_oncpu"),
    "thread_off_td_pcb": ("thread", "td_pcb"),
    "thread_off_td_plist": ("thread", "td_plist"),
    "pcb_size": ("pcb", None),
}
SYMBOLS: Tuple[str, ...] = tuple(SELF_DESCRIBING)


class Mismatch(NamedTuple):
    symbol: str
    field: str  # "proc.p_comm" or "sizeof(struct pcb)"
    expected: Optional[int]  # what the ISF's types say (None: the ISF lacks the member)
    found: int  # what the kernel says


def _field_name(struct_name: str, member: Optional[str]) -> str:
    return f"sizeof(struct {struct_name})" if member is None else f"{struct_name}.{member}"


def expectations(isf: Mapping[str, Any]) -> Dict[str, Optional[int]]:
    """``{symbol: value the ISF's types predict}`` for the structs the ISF defines.

    Structs absent from the ISF are left out (nothing to check); a member
    missing from a struct that is present maps to None, which any kernel
    value contradicts.
    """
    user_types = isf.get("user_types") or {}
    if not isinstance(user_types, Mapping) or "pointer" not in (isf.get("base_types") or {}):
        return {}
    layout = Layout(isf)  # type: ignore[arg-type]
    out: Dict[str, Optional[int]] = {}
    for symbol, (struct_name, member) in SELF_DESCRIBING.items():
        if struct_name not in user_types:
            continue
        try:
            out[symbol] = layout.sizeof(struct_name) if member is None else layout.offsetof(struct_name, member)
        except (KeyError, TypeError):
            out[symbol] = None
    return out


def compare(expected: Mapping[str, Optional[int]], read_int: Callable[[str], Optional[int]]) -> List[Mismatch]:
    """Mismatches between ``expected`` and the kernel, in :data:`SELF_DESCRIBING` order.

    ``read_int(symbol)`` returns the kernel's value of ``symbol`` (a 32-bit
    ``int``) or None when the kernel has no such symbol or it cannot be read.
    """
    problems: List[Mismatch] = []
    for symbol, (struct_name, member) in SELF_DESCRIBING.items():
        if symbol not in expected:
            continue
        found = read_int(symbol)
        if found is None or found == expected[symbol]:
            continue
        problems.append(Mismatch(symbol, _field_name(struct_name, member), expected[symbol], found))
    return problems


class LayoutMismatch(SymbolError):
    """The types disagree with the kernel's self-describing symbols."""

    def __init__(self, what: str, problems: List[Mismatch]):
        self.what = what
        self.problems = problems
        first = problems[0]
        exp = "no such member" if first.expected is None else f"{first.expected:#x}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"{what} do not match the kernel: {first.field} is {exp} in the types but the kernel's "
            f"{first.symbol} says {first.found:#x}{more}; refusing to use layouts that would read garbage")


def require_match(what: str, expected: Mapping[str, Optional[int]],
                  read_int: Callable[[str], Optional[int]]) -> int:
    """Raise :class:`LayoutMismatch` on any mismatch; return how many symbols agreed."""
    values = {symbol: read_int(symbol) for symbol in expected}
    problems = compare(expected, values.get)
    if problems:
        raise LayoutMismatch(what, problems)
    return sum(1 for v in values.values() if v is not None)


def read_int_le(data: Optional[bytes]) -> Optional[int]:
    """A C ``int`` (little-endian, 4 bytes) or None when fewer bytes were read."""
    if data is None or len(data) < 4:
        return None
    return struct.unpack("<i", data[:4])[0]
