"""msgbuf unrolling (kvm_vol.kvm.msgbuf.unroll) against subr_msgbuf.c's semantics.

A Python model of msgbuf_addchar() writes text into a ring; unroll() must
give what msgbuf_peekbytes() hands to sysctl kern.msgbuf: everything when
the ring has not wrapped, else the last msg_size bytes, oldest first, also
after msg_wseq itself wrapped at msg_seqmod.
"""

import pytest

from kvm_vol import freebsd as F
from kvm_vol.kvm.msgbuf import MsgBuf, unroll


def write(size: int, text: bytes, start_seq: int = 0):
    """msgbuf_addchar() for every byte; returns (ring, wseq, flags, seqmod)."""
    seqmod = 16 * size
    ring = bytearray(size)
    wseq = start_seq % seqmod
    for ch in text:
        ring[wseq % size] = ch
        wseq = (wseq + 1) % seqmod
    flags = F.MSGBUF_WRAP if len(text) >= size or start_seq else 0
    return bytes(ring), wseq, flags, seqmod


@pytest.mark.parametrize("size,length,start", [(64, 10, 0), (64, 64, 0), (64, 65, 0), (64, 1000, 0),
                                               (64, 100, 16 * 64 - 30)])
def test_unroll_gives_the_newest_bytes_oldest_first(size, length, start):
    text = bytes(ord("a") + i % 26 for i in range(length))
    ring, wseq, flags, seqmod = write(size, text, start)
    assert unroll(ring, wseq, flags, seqmod) == text[-size:]


def test_unwrapped_ring_keeps_its_trailing_nuls_out():
    ring, wseq, flags, seqmod = write(32, b"boot\nok\n")
    assert unroll(ring, wseq, flags, seqmod) == b"boot\nok\n"
    assert MsgBuf(text=unroll(ring, wseq, flags, seqmod), source="test").lines() == ["boot", "ok"]


def test_bad_header_values_do_not_crash():
    assert unroll(b"", 5, F.MSGBUF_WRAP, 0) == b""
    assert unroll(b"abcd", 10 ** 9, F.MSGBUF_WRAP, 0) in (b"abcd", b"bcda", b"cdab", b"dabc")
    assert len(unroll(b"abcd", 3, 0, 7)) == 3
