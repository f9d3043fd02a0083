"""``kvm_vol.kvm.open()``: a libkvm-style handle on a dump or on a running system.

The opening rules are libkvm's ``_kvm_open`` (``lib/libkvm/kvm.c``):

* ``flags`` may only be ``O_RDONLY``, ``O_WRONLY`` or ``O_RDWR`` ("bad flags arg");
* a memory file of ``None`` means ``/dev/mem``;
* ``/dev/null`` gives the **no-memory** handle ``ps(1)`` and ``top(1)`` use:
  live, but nothing that reads the kernel works (:class:`NoMemoryKvm`; the
  load average, which libkvm takes from ``getloadavg(3)`` on a live
  handle, does);
* ``/dev/mem`` (or ``/dev/kmem``: the same driver) gives a **live** handle
  (:class:`LiveKvm`): physical memory read with ``pread`` inside the
  running kernel's ``dump_avail`` ranges, kernel addresses through the
  kernel's own page tables from ``KPML4phys`` (the stackers of
  :mod:`kvm_vol.layers` find them, as for a raw image);
* anything else is a dump (:class:`DumpKvm`), read through the same
  Volatility stack as ``vol -f``; a regular file that is empty fails with
  "empty file".

Two deliberate differences: the memory is always opened **read-only**
unless ``O_RDWR``/``O_WRONLY`` is asked for, and then only a live handle
(or a stand-in file given with ``ranges``) becomes writable -- a dump is
evidence, so :meth:`Kvm.write` on it fails like libkvm's "kvm_write not
implemented for dead kernels" and the file is never opened for writing.
And reads through a write-only handle work (kvm-vol needs them to find the
kernel).

``ranges`` (a list of ``(start, end)``) makes any file or device a stand-in
for ``/dev/mem`` with those RAM ranges: used by the tests, and by anyone
reading a copy of physical memory whose holes are known.
"""

import abc
import logging
import os
import stat
from typing import Iterable, List, Optional, Sequence, Tuple

from volatility3.framework import contexts, exceptions, interfaces
from volatility3.framework.layers import physical as vphysical

import kvm_vol.volatility  # noqa: F401  (stackers, identifier, symbol directories)
from kvm_vol.errors import KvmVolError, TranslationError
from kvm_vol.layers import live
from kvm_vol.core.amd64 import canonical
from kvm_vol.layers.kernel import FreebsdKernelStacker
from kvm_vol.layers.physical import FreebsdDumpStacker, dump_for_layer
from kvm_vol.symbols import volsym

vollog = logging.getLogger(__name__)

__all__ = ["KvmError", "Kvm", "NoMemoryKvm", "LiveKvm", "DumpKvm", "open"]

_ACCMODES = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR)


class KvmError(KvmVolError):
    """A kvm operation failed; the message is what ``kvm_geterr()`` would hold."""


class Kvm(abc.ABC):
    """A handle: ``read``/``write`` kernel virtual memory, ``procs()``, ``close()``.

    Errors raise :class:`KvmError` (or :class:`TranslationError` for an
    unreadable address) and are also kept for :meth:`geterr`, which, like
    libkvm's, is never cleared by a successful call.
    """

    #: ``ISALIVE(kd)``: a running system rather than a dump.
    alive = False

    def __init__(self, memfile: str, flags: int):
        self.memfile = memfile
        self.flags = flags
        self._err = ""

    # -- errors ------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        self._err = str(exc)
        raise exc

    def geterr(self) -> str:
        return self._err

    # -- memory ------------------------------------------------------------
    @abc.abstractmethod
    def read(self, kva: int, length: int) -> bytes:
        """Implemented by each kind of handle (no memory, live, dump)."""

    @abc.abstractmethod
    def write(self, kva: int, data: bytes) -> None:
        """Implemented by each kind of handle (no memory, live, dump)."""

    @abc.abstractmethod
    def procs(self) -> list:
        """Implemented by each kind of handle (no memory, live, dump)."""

    @abc.abstractmethod
    def getloadavg(self, nelem: int = 3) -> Tuple[float, ...]:
        """Implemented by each kind of handle (no memory, live, dump)."""

    def native(self) -> bool:
        """``kvm_native()``: 1 for a live handle; layouts come from the ISF, so dumps qualify too."""
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.memfile!r}>"


def _host_loadavg(kd: Kvm, nelem: int) -> Tuple[float, ...]:
    """A live handle's ``kvm_getloadavg``: libkvm calls ``getloadavg(3)`` and reads no kernel memory."""
    if nelem < 0:
        kd._fail(KvmError("kvm_getloadavg: invalid nelem"))
    return tuple(os.getloadavg()[:min(nelem, 3)])


class NoMemoryKvm(Kvm):
    """``kvm_open(..., "/dev/null", ...)``: live, no memory; only what needs no kernel read works."""

    alive = True

    def _no_memory(self, what: str) -> None:
        self._fail(KvmError(f"{what}: no kernel memory on a {live.DEV_NULL} handle (libkvm's sysctl-only mode); "
                            f"open {live.DEV_MEM} (root or group kmem) or a dump to read the kernel"))

    def read(self, kva: int, length: int) -> bytes:
        self._no_memory("kvm_read")

    def write(self, kva: int, data: bytes) -> None:
        self._no_memory("kvm_write")

    def procs(self) -> list:
        self._no_memory("kvm_getprocs")

    def getloadavg(self, nelem: int = 3) -> Tuple[float, ...]:
        return _host_loadavg(self, nelem)


class _VolatilityKvm(Kvm):
    """A handle whose kernel is found by kvm-vol's stackers on a physical layer."""

    def __init__(self, memfile: str, flags: int):
        super().__init__(memfile, flags)
        self.context = contexts.Context()
        self.physical_layer_name: Optional[str] = None
        self.kernel_layer_name: Optional[str] = None
        self.module_name: Optional[str] = None
        self.banner: Optional[bytes] = None
        self._kvm = None

    def _attach_kernel(self, phys_name: str) -> None:
        """Run the kernel stacker on ``phys_name`` and load the matching ISF as module ``kernel``."""
        self.physical_layer_name = phys_name
        layer = None
        for attempt in range(2):
            layer = FreebsdKernelStacker.stack(self.context, phys_name)
            if layer is not None or attempt:
                break
            _refresh_symbol_cache()  # ISFs installed since the last vol run
        if layer is None:
            self._fail(KvmError(f"{self.memfile}: no FreeBSD kernel with a known ISF found; "
                                f"make the kernel's ISF with: {volsym.ISF_COMMAND}"))
        self.context.add_layer(layer)
        self.kernel_layer_name = layer.name
        self.banner = layer.config["kernel_banner"].encode("latin-1")
        url = volsym.freebsd_banners().get(self.banner)
        table_name = self.context.symbol_space.free_table_name("kvm_kernel")
        table = volsym.FreebsdKernelIntermedSymbols(self.context, f"kvm.{table_name}", table_name, url)
        self.context.symbol_space.append(table)
        module = contexts.Module.create(self.context, "kernel", layer.name, 0, symbol_table_name=table_name)
        self.module_name = module.name

    @property
    def kernel(self):
        return self.context.modules[self.module_name]

    def symbol(self, name: str) -> int:
        """A kernel symbol's address (``kvm_nlist`` for one name); KvmError if the ISF lacks it."""
        try:
            return canonical(self.kernel.get_symbol(name).address)
        except exceptions.SymbolError:
            self._fail(KvmError(f"kvm_nlist: {name}: no such symbol in the kernel's ISF"))

    def read(self, kva: int, length: int) -> bytes:
        """``length`` bytes at kernel VA ``kva``; TranslationError names the first unreadable page."""
        layer = self.context.layers[self.kernel_layer_name]
        try:
            return layer.read(kva & layer.address_mask, length)
        except exceptions.InvalidAddressException as exc:
            self._fail(TranslationError(canonical(exc.invalid_address), "kvm_read: invalid address", self.memfile))

    def procs(self) -> list:
        """The ``struct proc`` objects on ``allproc`` (bounded, cycle-safe walk), newest first.

        kinfo_proc-style records are built from these by the process API on
        the same ``context`` and ``module_name``.
        """
        from kvm_vol.kvm import procs

        return list(procs.iter_procs(self.context, self.module_name))

    def getloadavg(self, nelem: int = 3) -> Tuple[float, ...]:
        """A dump's ``kvm_getloadavg``: ``averunnable.ldavg[i] / fscale`` from the kernel's memory."""
        from kvm_vol.kvm import loadavg

        if nelem < 0:
            self._fail(KvmError("kvm_getloadavg: invalid nelem"))
        found = loadavg.getloadavg(self.context, self.module_name)
        if found is None:
            self._fail(KvmError("kvm_getloadavg: averunnable is missing or unreadable"))
        return tuple(found.load[:min(nelem, 3)])

    @property
    def kvm(self):
        """The process API (:class:`kvm_vol.kvm.kvm.KVM`) on this handle's kernel."""
        if self._kvm is None:
            from kvm_vol.kvm.kvm import KVM

            self._kvm = KVM(self.context, self.module_name)
        return self._kvm

    def getprocs(self, *args) -> list:
        """``kvm_getprocs()``: kinfo_proc-like records, as :meth:`kvm_vol.kvm.kvm.KVM.getprocs` makes them."""
        return self.kvm.getprocs(*args)

    def close(self) -> None:
        for name in list(self.context.layers):
            layer = self.context.layers[name]
            if isinstance(layer, live.FreebsdMemDeviceLayer):
                layer.destroy()
            elif isinstance(layer, vphysical.FileLayer):
                layer.destroy()


class LiveKvm(_VolatilityKvm):
    """``/dev/mem`` (or a stand-in with declared ``ranges``): a running system."""

    alive = True

    def __init__(self, memfile: str, flags: int, ranges: Sequence[Tuple[int, int]]):
        super().__init__(memfile, flags)
        self.writable = flags != os.O_RDONLY
        try:
            phys = live.build_live_layers(self.context, memfile, ranges, writable=self.writable)
        except exceptions.LayerException as exc:
            self._fail(KvmError(str(exc)))
        except ValueError as exc:
            self._fail(KvmError(f"{memfile}: {exc}"))
        self.context.add_layer(phys)
        try:
            self._attach_kernel(phys.name)
        except BaseException:
            self.close()
            raise

    @property
    def ranges(self) -> List[Tuple[int, int]]:
        return self.context.layers[self.physical_layer_name].ranges

    def write(self, kva: int, data: bytes) -> None:
        """``kvm_write``: only on a handle opened ``O_RDWR``/``O_WRONLY``; page by page through the page tables.

        Every page is translated before anything is written, so an
        unmapped page in the middle leaves memory untouched.
        """
        if not self.writable:
            self._fail(KvmError("kvm_write: the handle is read-only; open it with O_RDWR to write "
                                "(root and securelevel <= 0 on FreeBSD)"))
        kernel = self.context.layers[self.kernel_layer_name]
        phys = self.context.layers[self.physical_layer_name]
        mask = kernel.address_mask
        try:
            pieces = [(pa, length) for _off, length, pa, _ml, _layer in kernel.mapping(kva & mask, len(data))]
        except exceptions.InvalidAddressException as exc:
            self._fail(TranslationError(canonical(exc.invalid_address), "kvm_write: invalid address", self.memfile))
        done = 0
        for pa, length in pieces:
            if not phys.is_valid(pa, length):
                self._fail(TranslationError(pa, "kvm_write: physical address outside RAM", self.memfile))
        base = self.context.layers[phys.config["base_layer"]]
        for pa, length in pieces:
            base.write(pa, data[done:done + length])
            done += length

    def getloadavg(self, nelem: int = 3) -> Tuple[float, ...]:
        return _host_loadavg(self, nelem)


class DumpKvm(_VolatilityKvm):
    """A crash dump or raw image: read-only evidence."""

    def __init__(self, memfile: str, flags: int):
        super().__init__(memfile, flags)
        join = interfaces.configuration.path_join
        name = self.context.layers.free_layer_name("FileLayer")
        from urllib.request import pathname2url

        self.context.config[join(name, "location")] = "file://" + pathname2url(os.path.abspath(memfile))
        try:
            file_layer = vphysical.FileLayer(self.context, name, name)
            self.context.add_layer(file_layer)
            dump_for_layer(file_layer)  # raises DumpFormatError for a malformed or unreadable dump
            top = name
            dump_layer = FreebsdDumpStacker.stack(self.context, name)
            if dump_layer is not None:
                self.context.add_layer(dump_layer)
                top = dump_layer.name
            self._attach_kernel(top)
        except KvmVolError as exc:
            self.close()
            self._fail(KvmError(str(exc)))
        except BaseException:
            self.close()
            raise

    def write(self, kva: int, data: bytes) -> None:
        self._fail(KvmError("kvm_write not implemented for dead kernels"))


def _refresh_symbol_cache() -> None:
    """Index ISFs added since Volatility last scanned the symbol directories."""
    import os as _os

    from volatility3.framework import constants
    from volatility3.framework.automagic import symbol_cache

    try:
        symbol_cache.SqliteCache(_os.path.join(constants.CACHE_PATH, constants.IDENTIFIERS_FILENAME)).update()
    except Exception as exc:  # a broken cache must not break opening a dump
        vollog.warning(f"cannot update Volatility's symbol cache: {exc}")


def open(execfile: Optional[str] = None, corefile: Optional[str] = None, swapfile: Optional[str] = None,
         flags: int = os.O_RDONLY, *, ranges: Optional[Iterable[Tuple[int, int]]] = None) -> Kvm:
    """``kvm_openfiles(execfile, corefile, swapfile, flags)`` (see the module docstring).

    ``execfile`` (the kernel ELF) and ``swapfile`` are accepted for libkvm's
    signature and ignored: symbols come from the ISF that matches the
    kernel found in memory.  Raises :class:`KvmError` with libkvm's
    message where it has one.
    """
    if flags & ~(os.O_RDONLY | os.O_WRONLY | os.O_RDWR) or (flags & 3) not in _ACCMODES:
        raise KvmError("bad flags arg")
    memfile = live.DEV_MEM if corefile is None else os.fspath(corefile)
    try:
        st = os.stat(memfile)
    except OSError as exc:
        raise KvmError(f"{memfile}: {exc.strerror}") from None
    why = live.refuse_unseekable(memfile)
    if why:
        raise KvmError(why)
    if ranges is not None:
        return LiveKvm(memfile, flags, list(ranges))
    if stat.S_ISCHR(st.st_mode):
        real = os.path.realpath(memfile)
        if real == live.DEV_NULL:
            return NoMemoryKvm(memfile, flags)
        if live.device_size(memfile) <= 0:  # a memory device; a disk holding a dump has a size
            try:
                _banner, found, _src = live.live_ranges(memfile)
            except (OSError, live.MemDeviceError) as exc:
                raise KvmError(str(exc) if isinstance(exc, live.MemDeviceError) else
                               f"{memfile}: {exc.strerror}") from None
            return LiveKvm(live.physical_device_for(memfile), flags, found)
    elif stat.S_ISREG(st.st_mode) and st.st_size <= 0:
        raise KvmError(f"{memfile}: empty file")
    return DumpKvm(memfile, flags)

