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
from typing import Iterator

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
    seen = set()
    ptr = first
    count = 0
    while True:
        try:
            address = int(ptr)
        except (exceptions.InvalidAddressException, TypeError, ValueError):
            vollog.warning(f"{name}: unreadable next pointer after {count} elements; list cut short")
            return
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
            element = ptr.dereference()
            next_ptr = getattr(getattr(element, entry_field), next_name)
            int(next_ptr)  # force the read now, so a bad element is caught here
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"{name}: element at {address:#x} is unreadable ({exc}); list cut short")
            return
        count += 1
        yield element
        ptr = next_ptr
