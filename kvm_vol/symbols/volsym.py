"""FreeBSD symbol tables in Volatility: identifier, banner lookup, symbol finder.

* :class:`FreebsdIdentifier` files ISFs whose ``version`` constant starts with
  ``FreeBSD `` under the operating system ``freebsd``.  It subclasses
  ``WindowsIdentifier`` only to sort before ``MacIdentifier`` in
  ``class_subclasses()`` order; otherwise stock Volatility files them as
  ``mac`` (the Mac identifier also keys on ``version``).
* :func:`freebsd_banners` is ``{banner: ISF URL}`` for every FreeBSD ISF,
  including rows cached as ``mac`` before kvm-vol was installed.
* :class:`FreebsdSymbolFinder` (priority 25, before the Windows PDB scanner at
  30 and the Mac finder at 40) satisfies a plugin's kernel symbol table from
  the banner the kernel stacker stored in the layer's config.  When it cannot,
  and the plugin is one of ours, it stops ``vol`` with one line that names
  the kernel found and the ``kvm-vol isf`` command that makes its ISF.
"""

import base64
import logging
import os
from typing import Dict, Optional

from volatility3.framework import constants, interfaces
from volatility3.framework.automagic import symbol_cache, symbol_finder
from volatility3.framework.configuration import requirements
from volatility3.framework.symbols import intermed

vollog = logging.getLogger(__name__)

BANNER_PREFIX = b"FreeBSD "
ISF_COMMAND = ("kvm-vol isf --elf /usr/lib/debug/boot/kernel/kernel.debug "
               "--elf-symbols /boot/kernel/kernel")
#: The same without the kernel-dbg package (types from the release's type pack).
ISF_PACK_COMMAND = "kvm-vol isf --elf-symbols /boot/kernel/kernel"


def banner_from_constant(constant_data: Optional[str]) -> Optional[bytes]:
    """The banner an ISF's ``version`` constant holds, trailing NULs removed."""
    if not constant_data:
        return None
    banner = base64.b64decode(constant_data).rstrip(b"\0")
    return banner if banner.startswith(BANNER_PREFIX) else None


class FreebsdIdentifier(symbol_cache.WindowsIdentifier):
    operating_system = "freebsd"

    @classmethod
    def get_identifier(cls, json) -> Optional[bytes]:
        return banner_from_constant(json.get("symbols", {}).get("version", {}).get("constant_data"))


def freebsd_banners() -> Dict[bytes, str]:
    """``{banner: ISF location}`` from Volatility's identifier cache."""
    cache = symbol_cache.SqliteCache(os.path.join(constants.CACHE_PATH, constants.IDENTIFIERS_FILENAME))
    found: Dict[bytes, str] = {}
    for os_name in ("mac", "freebsd"):  # freebsd rows win over stale mac rows
        for identifier, location in cache.get_identifier_dictionary(operating_system=os_name).items():
            if identifier is None:
                continue
            banner = identifier.rstrip(b"\0")
            if banner.startswith(BANNER_PREFIX):
                found[banner] = location
    return found


class FreebsdKernelIntermedSymbols(intermed.IntermediateSymbolTable):
    """The kernel's symbol table (types from DWARF or a type pack, symbols from the kernel)."""


class FreebsdSymbolFinder(symbol_finder.SymbolFinder):
    """Resolves the FreeBSD kernel symbol table from the banner the stacker found."""

    priority = 25
    banner_config_key = "kernel_banner"
    operating_system = "freebsd"
    symbol_class = "kvm_vol.symbols.volsym.FreebsdKernelIntermedSymbols"
    find_aslr = None
    exclusion_list = ["linux", "mac", "windows"]

    @property
    def banners(self) -> symbol_cache.BannersType:
        if not self._banners:
            self._banners = freebsd_banners()
        return self._banners

    def __call__(self, context, config_path, requirement, progress_callback=None) -> None:
        super().__call__(context, config_path, requirement, progress_callback)
        if not _is_kvm_vol_plugin(requirement):
            return None
        for sub_path, req in self._requirements:
            if isinstance(req, requirements.SymbolTableRequirement) and req.unsatisfied(
                context, interfaces.configuration.parent_path(sub_path)
            ):
                _stop_without_kernel(context)
        return None


#: Class names of kvm-vol's plugins (filled by :func:`kvm_plugin`).
_PLUGIN_NAMES = set()


def kvm_plugin(cls):
    """Class decorator for kvm-vol's plugins: a missing kernel ISF stops them with one line, and
    every ``str`` their ``_generator`` yields is escaped (:func:`kvm_vol.volatility.printable`).

    The escaping is here, where every plugin passes, so a new plugin cannot
    forget it: its strings come from the image and must not drive the
    analyst's terminal.
    """
    import functools

    _PLUGIN_NAMES.add(cls.__name__)
    generator = cls._generator

    @functools.wraps(generator)
    def escaped(self):
        from kvm_vol.volatility import printable_rows  # that module imports this one

        return printable_rows(generator(self))

    cls._generator = escaped
    return cls


def _is_kvm_vol_plugin(requirement) -> bool:
    """True when the ``vol`` CLI is configuring one of our plugins.

    ``automagic.run`` hands every automagic a MultiRequirement named after the
    plugin class.  This finder is excluded for Linux, Mac and Windows plugins,
    so a class name is enough to tell ours from generic plugins (banners ...).
    """
    import sys

    return "volatility3.cli" in sys.modules and getattr(requirement, "name", None) in _PLUGIN_NAMES


def _stop_without_kernel(context) -> None:
    """One line, exit status 1: which kernel is there and how to get its ISF."""
    from kvm_vol.layers import kernel as kernel_layers
    from kvm_vol.layers.physical import fatal

    diag = kernel_layers.LAST_DIAGNOSIS
    if diag.get("layout"):
        fatal(diag["layout"])
    if diag.get("isf"):
        fatal(f"found the kernel \"{diag['banner']}\" (banner at physical {diag['offset']}) and its ISF "
              f"{diag['isf']}, but the kernel's addresses do not translate in this image: its page "
              "tables or minidump pmap are damaged, or the ISF is from another build of this version")
    if diag.get("banner"):
        memsyms = f" (nor its symbol table: {diag['memsyms']})" if diag.get("memsyms") else ""
        fatal(f"no symbol table (ISF) for the kernel in this image, \"{diag['banner']}\" "
              f"(banner at physical {diag['offset']}){memsyms}; make one with: {ISF_COMMAND}, "
              f"or without kernel.debug: {ISF_PACK_COMMAND}")
    fatal("no FreeBSD kernel with a known symbol table (ISF) was found in this image; "
          f"if it is a FreeBSD dump, make the kernel's ISF with: {ISF_COMMAND}")
