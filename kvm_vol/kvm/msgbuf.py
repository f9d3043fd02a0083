"""The kernel message buffer (``dmesg``) of a dead kernel.

``msgbufp`` points to a ``struct msgbuf`` whose ``msg_ptr`` is a ring of
``msg_size`` bytes.  Writers (``msgbuf_do_addchar()`` in subr_msgbuf.c) store
each character at ``msg_wseq % msg_size`` and advance ``msg_wseq`` modulo
``msg_seqmod`` (16 * msg_size); ``MSGBUF_WRAP`` in ``msg_flags`` says the
ring has been filled once, so the oldest byte sits at the write position.
:func:`unroll` reproduces ``msgbuf_peekbytes()`` from its initial sequence
number (``wseq - size`` when wrapped, else 0), which is what ``sysctl
kern.msgbuf`` and therefore ``dmesg`` show; ``msg_rseq`` (what the console
reader consumed) does not change what dmesg shows.

A minidump also carries the ring itself as its own section (cpu_minidumpsys()
writes ``msgbufp->msg_ptr`` before the page bitmap), so the text survives
even when the header page is missing; without the header's ``msg_wseq`` the
ring can only be shown in buffer order.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional

from volatility3.framework import exceptions, interfaces

from kvm_vol import freebsd as F
from kvm_vol.kvm.kernelmod import KernelRef, kernel_module

vollog = logging.getLogger(__name__)

#: Largest msg_size believed (the kernel's msgbufsize is a tunable; 96 KiB by default).
MAX_MSGBUF = 64 << 20

SOURCE_MEMORY = "msgbufp"
SOURCE_SECTION = "minidump msgbuf section"


@dataclass
class MsgBuf:
    text: bytes  # oldest byte first, as sysctl kern.msgbuf hands it out
    source: str
    size: int = 0
    wseq: Optional[int] = None
    rseq: Optional[int] = None
    flags: Optional[int] = None
    ordered: bool = True  # False: section without a header, shown in buffer order

    def lines(self) -> List[str]:
        """The text as dmesg(8) prints it: leading NULs stripped, one string per line."""
        text = self.text.lstrip(b"\0").replace(b"\0", b"").decode("utf-8", errors="replace")
        if not text:
            return []
        parts = text.split("\n")
        return parts[:-1] if text.endswith("\n") else parts


def seqsub(a: int, b: int, seqmod: int) -> int:
    """MSGBUF_SEQSUB()."""
    return a - b if a >= b else a + seqmod - b


def unroll(ring: bytes, wseq: int, flags: int, seqmod: int) -> bytes:
    """The ring's contents oldest first, as msgbuf_peekbytes() returns them."""
    size = len(ring)
    if size == 0:
        return b""
    if seqmod <= 0:
        seqmod = 16 * size
    wseq %= seqmod
    seq = seqsub(wseq, size, seqmod) if flags & F.MSGBUF_WRAP else 0
    length = seqsub(wseq, seq, seqmod)
    if length > size:
        seq, length = seqsub(wseq, size, seqmod), size
    pos = seq % size
    out = ring[pos:pos + length]
    return out + ring[:length - len(out)]


def _dump_section(context: interfaces.context.ContextInterface, layer_name: str) -> Optional[bytes]:
    """The msgbuf section of the minidump under ``layer_name``, if there is one."""
    seen = set()
    name = layer_name
    while name and name not in seen:
        seen.add(name)
        layer = context.layers[name]
        dump = getattr(layer, "dump", None)
        if dump is not None and hasattr(dump, "msgbuf"):
            try:
                return dump.msgbuf() or None
            except Exception as exc:  # a truncated section: report and go on without it
                vollog.warning(f"the minidump's msgbuf section is unreadable: {exc}")
                return None
        deps = getattr(layer, "dependencies", [])
        name = deps[0] if deps else None
    return None


def read_msgbuf(context: interfaces.context.ContextInterface, kernel_module_name: KernelRef,
                prefer_section: bool = False) -> Optional[MsgBuf]:
    """The message buffer; from kernel memory, or from the minidump's section.

    With ``prefer_section`` (or when the ring is unreadable in memory) the
    minidump's own copy of the ring is used, unrolled with the header's
    ``msg_wseq`` when the header is readable.
    """
    kernel = kernel_module(context, kernel_module_name)
    section = _dump_section(context, kernel.layer_name)
    hdr = None
    if kernel.has_symbol("msgbufp"):
        try:
            ptr = kernel.object(object_type="pointer", offset=kernel.get_symbol("msgbufp").address,
                                subtype=kernel.get_type("msgbuf"))
            if int(ptr):
                mb = ptr.dereference()
                hdr = {"ptr": int(mb.msg_ptr), "size": int(mb.msg_size), "wseq": int(mb.msg_wseq),
                       "rseq": int(mb.msg_rseq), "flags": int(mb.msg_flags), "seqmod": int(mb.msg_seqmod),
                       "magic": int(mb.msg_magic)}
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"the struct msgbuf at msgbufp is unreadable: {exc}")
    if hdr is not None and (hdr["magic"] != F.MSG_MAGIC or not 0 < hdr["size"] <= MAX_MSGBUF):
        vollog.warning(f"msgbufp does not point to a message buffer (magic {hdr['magic']:#x}, "
                       f"size {hdr['size']})")
        hdr = None

    ring = None
    source = SOURCE_MEMORY
    if hdr is not None and not prefer_section:
        try:
            ring = bytes(context.layers[kernel.layer_name].read(hdr["ptr"], hdr["size"]))
        except exceptions.InvalidAddressException as exc:
            vollog.warning(f"the message buffer ring at {hdr['ptr']:#x} is unreadable ({exc})"
                           + ("; using the minidump's msgbuf section" if section else ""))
    if ring is None and section is not None:
        ring, source = section, SOURCE_SECTION
        if hdr is not None and len(ring) != hdr["size"]:
            vollog.warning(f"the minidump's msgbuf section has {len(ring)} bytes, msg_size is {hdr['size']}")
            ring = ring[:hdr["size"]] if len(ring) > hdr["size"] else ring
    if ring is None:
        return None
    if hdr is None:
        vollog.warning("no readable struct msgbuf: the ring is shown in buffer order, not oldest first")
        return MsgBuf(text=ring, source=source, size=len(ring), ordered=False)
    return MsgBuf(text=unroll(ring, hdr["wseq"], hdr["flags"], hdr["seqmod"]), source=source,
                  size=hdr["size"], wseq=hdr["wseq"], rseq=hdr["rseq"], flags=hdr["flags"])
