"""The VNET and DPCPU linker sets: where virtualised and per-CPU globals really live.

Pure constants and arithmetic (no Volatility imports), shared by the symbol
lookup (:mod:`kvm_vol.kvm.nlist`) and the forge.

* ``VNET_DEFINE(type, name)`` (``sys/net/vnet.h``) puts the master copy of a
  network-stack global into the linker set ``set_vnet`` under the symbol
  ``vnet_entry_<name>``.  Each vnet has its own copy at
  ``vnet_data_base + <symbol value>``, where ``vnet_data_base`` is
  ``vnet_data_mem - __start_set_vnet`` (``vnet_data_init``/``vnet_alloc``).
* ``DPCPU_DEFINE(type, name)`` (``sys/sys/pcpu.h``) does the same with the
  set ``set_pcpu`` and ``pcpu_entry_<name>``; CPU ``n``'s copy is at
  ``dpcpu_off[n] + <symbol value>`` (``dpcpu_init``: ``dpcpu_off[cpuid] =
  (uintptr_t)dpcpu - DPCPU_START``).
* UMA per-CPU allocations (``counter(9)`` among them) are one
  ``UMA_PCPU_ALLOC_SIZE`` (= ``sizeof(struct pcpu)`` = PAGE_SIZE) slot per
  CPU; on amd64 the pointer is an offset from ``__pcpu`` (libkvm's
  ``__OFFSET_BY_PCPU``), so CPU ``n``'s copy is at
  ``base + __pcpu + n * sizeof(struct pcpu)``.
"""

VNET_SETNAME = "set_vnet"
VNET_SYMPREFIX = "vnet_entry_"
VNET_MAGIC_N = 0x3E0D8F29
DPCPU_SETNAME = "set_pcpu"
DPCPU_SYMPREFIX = "pcpu_entry_"

#: ``struct vnet`` on LP64 as ``sys/net/vnet.h`` declares it since FreeBSD 12
#: (vnet_le, vnet_magic_n, vnet_ifcnt, vnet_sockcnt, vnet_state,
#: vnet_data_mem, vnet_data_base); used when the ISF has no ``struct vnet``
#: (type packs do not carry it).
VNET_LP64_OFFSETS = {"vnet_magic_n": 16, "vnet_data_mem": 32, "vnet_data_base": 40}
VNET_LP64_SIZE = 48

#: Architectures whose zpcpu pointers are offsets from ``__pcpu`` (libkvm's ``__OFFSET_BY_PCPU``).
OFFSET_BY_PCPU = ("amd64",)

_U64 = (1 << 64) - 1


def set_bounds(setname: str):
    """The linker's start and stop symbols of a set (``__start_set_vnet``, ``__stop_set_vnet``)."""
    return f"__start_{setname}", f"__stop_{setname}"


def relocate(value: int, start: int, stop: int, base: int, mask: int = _U64) -> int:
    """``_kvm_vnet_validaddr``/``_kvm_dpcpu_validaddr``: values in ``[start, stop)`` move by ``base``.

    The sum wraps like the kernel's ``uintptr_t`` arithmetic: ``mask`` is
    ``2**(8 * sizeof(void *)) - 1`` (32 bits on i386, whose offsets are
    often "negative").
    """
    if value == 0 or not start <= value < stop:
        return value
    return (base + value) & mask
