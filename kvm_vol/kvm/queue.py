"""Bounded, cycle-safe walks of BSD ``queue(3)`` lists in kernel memory.

FreeBSD links its objects with ``LIST_ENTRY`` (``le_next``), ``TAILQ_ENTRY``
(``tqe_next``), ``STAILQ_ENTRY`` (``stqe_next``) and ``SLIST_ENTRY``
(``sle_next``); each next pointer points at the next *element*, not at its
entry, so no container-of step is needed.  Every walk here stops at NULL, at
an address it has already visited (a cycle: smeared or hostile memory), at
an unreadable element, or after ``limit`` elements, and says which list it
was when it stops early.  Nothing raises for bad memory.
"""

import logging
from typing import Callable, Iterator, Tuple

from volatility3.framework import exceptions, interfaces

vollog = logging.getLogger(__name__)

#: Upper bound on any list walk (PID_MAX is 99999; threads are fewer than 10^6).
DEFAULT_LIMIT = 1_000_000

_NEXT_FIELD = {"LIST": "le_next", "TAILQ": "tqe_next", "STAILQ": "stqe_next", "SLIST": "sle_next"}


def walk(first: interfaces.objects.ObjectInterface, entry_field: str, kind: str = "LIST",
         name: str = "list", limit: int = DEFAULT_LIMIT) -> Iterator[interfaces.objects.ObjectInterface]:
    """Yield the elements of a list whose first element pointer is ``first``.

    Args:
        first: the head's first pointer (``lh_first`` / ``tqh_first`` ...),
            a Volatility pointer to the element type.
        entry_field: the element's linkage field (e.g. ``"p_list"``).
        kind: ``LIST``, ``TAILQ``, ``STAILQ`` or ``SLIST``.
        name: how warnings name the list (e.g. ``"allproc"``).
        limit: maximum number of elements.
    """
    next_name = _NEXT_FIELD[kind]
    pointers = {}  # element address -> its next pointer object

    def load(address: int):
        element = pointers[address].dereference()
        next_ptr = getattr(getattr(element, entry_field), next_name)
        return element, int(next_ptr), next_ptr  # int() forces the read now

    try:
        first_address = int(first)
    except (exceptions.InvalidAddressException, TypeError, ValueError):
        vollog.warning(f"{name}: unreadable next pointer after 0 elements; list cut short")
        return
    pointers[first_address] = first
    for address, (element, _next, next_ptr) in walk_addresses(load, first_address, name, limit):
        pointers.clear()
        pointers[_next] = next_ptr
        yield element


def walk_addresses(load: Callable[[int], tuple], first: int, name: str = "list",
                   limit: int = DEFAULT_LIMIT) -> Iterator[Tuple[int, tuple]]:
    """The bounded, cycle-safe loop under every list walk, on raw addresses.

    ``load(address)`` reads one element and returns a tuple whose second item
    is the next element's address; it raises ``InvalidAddressException`` when
    the element cannot be read.  Yields ``(address, load(address))``.  Used
    directly by the kvm API, which reads whole structs instead of objects.
    """
    seen = set()
    address = first
    count = 0
    while True:
        if address == 0:
            return
        if address in seen:
            vollog.warning(f"{name}: cycle back to {address:#x} after {count} elements; stopped there")
            return
        if count >= limit:
            vollog.warning(f"{name}: more than {limit} elements; stopped there")
            return
        seen.add(address)
        try:
            loaded = load(address)
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"{name}: element at {address:#x} is unreadable ({exc}); list cut short")
            return
        count += 1
        yield address, loaded
        address = loaded[1]
