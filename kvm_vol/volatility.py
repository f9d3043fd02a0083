"""Register kvm-vol with Volatility 3: layers, stackers, identifier, symbol finder.

The plugin modules installed as ``volatility3.plugins.freebsd`` import this
module first.  Importing it

* defines the stackers (``kvm_vol.layers``), so ``LayerStacker`` offers them
  for every ``vol -f`` run, generic plugins included;
* defines :class:`~kvm_vol.symbols.volsym.FreebsdIdentifier` (files FreeBSD
  ISFs as ``freebsd`` instead of ``mac``) and the FreeBSD symbol finder;
* appends the per-user ISF directory (``kvm-vol isf`` / ``kvm-vol demo``
  write there) to ``volatility3.symbols.__path__`` so ``vol`` needs no ``-s``.

It must raise nothing but ``ImportError``: Volatility's plugin loader turns any
other exception into a crash of every ``vol`` command.
"""

import logging

try:
    import volatility3.symbols
    from volatility3.framework import constants
    from volatility3.framework.configuration import requirements
except ImportError:  # pragma: no cover - volatility3 is a dependency
    raise

from kvm_vol import paths
from kvm_vol.layers import kernel as _kernel_layers  # noqa: F401  (registers the stacker)
from kvm_vol.layers import aarch64 as _aarch64_layers  # noqa: F401  (the AArch64 layer classes, for saved configs)
from kvm_vol.layers import physical as _physical_layers  # noqa: F401  (registers the stackers)
from kvm_vol.layers import live as _live_layers  # noqa: F401  (live /dev/mem stacker, FIFO-safe file: URLs)
from kvm_vol.symbols import volsym as _volsym  # noqa: F401  (identifier + symbol finder)

vollog = logging.getLogger(__name__)

#: Oldest Volatility framework we run on (and test against in CI).
MIN_FRAMEWORK = (2, 28, 0)


def _check_framework() -> None:
    have = (constants.VERSION_MAJOR, constants.VERSION_MINOR, constants.VERSION_PATCH)
    if have < MIN_FRAMEWORK or have[0] != MIN_FRAMEWORK[0]:
        raise ImportError(
            f"kvm-vol needs volatility3 framework {'.'.join(map(str, MIN_FRAMEWORK))} or a later 2.x; "
            f"found {'.'.join(map(str, have))}"
        )


def exclude_other_os_automagic() -> None:
    """Keep Windows/Linux/Mac automagics away from ``freebsd.*`` plugins.

    Volatility 2.28 knows only the categories windows, linux and mac; for any
    other plugin category it runs *every* automagic, so a FreeBSD plugin
    would wait for the Windows PDB scanner to scan the whole kernel address
    space.  Adding "freebsd" to ``OS_CATEGORIES`` and to the exclusion lists
    of the other systems' stackers and finders is exactly the core change
    proposed upstream (volatility3 PR #1182), applied from outside.  Generic
    plugins (banners, layerwriter, ...) are unaffected.
    """
    from volatility3.framework.automagic import linux, mac, pdbscan, windows

    if "freebsd" not in constants.OS_CATEGORIES:
        constants.OS_CATEGORIES.append("freebsd")
    for cls in (linux.LinuxIntelStacker, linux.LinuxIntelVMCOREINFOStacker, linux.LinuxSymbolFinder,
                mac.MacIntelStacker, mac.MacSymbolFinder, pdbscan.KernelPDBScanner,
                windows.WindowsIntelStacker, windows.WinSwapLayers):
        if "freebsd" not in cls.exclusion_list:
            cls.exclusion_list = list(cls.exclusion_list) + ["freebsd"]


def register_symbol_dirs() -> None:
    """Make the per-user ISF directory a Volatility symbol root (idempotent)."""
    directory = str(paths.user_symbols_dir())
    roots = volatility3.symbols.__path__
    if directory not in roots:
        roots.append(directory)


def kernel_requirement() -> "requirements.ModuleRequirement":
    """The FreeBSD kernel module every kvm-vol plugin needs: on any architecture kvm-vol reads.

    Volatility matches the kernel layer's ``architecture`` metadata
    (Intel64 for amd64, Intel32 for i386, AArch64 for arm64).
    """
    from kvm_vol.arch import METADATA_ARCHITECTURES

    return requirements.ModuleRequirement(name="kernel", description="FreeBSD kernel",
                                          architectures=sorted(METADATA_ARCHITECTURES))


def offset_mask(context, kernel_module_name: str) -> int:
    """The mask kernel object offsets are shown with: the kernel layer's ``address_mask``.

    Volatility shows Intel kernel addresses masked to the layer's bits (48 on
    amd64, 32 on i386); the AArch64 layer keeps all 64, because arm64 kernel
    addresses (0xffff0000...) have bit 47 clear and a 48-bit form would read
    as a user address.
    """
    from kvm_vol.kvm.kernelmod import kernel_module

    return context.layers[kernel_module(context, kernel_module_name).layer_name].address_mask


def pid_requirement(description: str = "Process IDs to include (all others are excluded)") -> "requirements.ListRequirement":
    """``--pid`` as the Linux plugins spell it: a list of ints, optional."""
    return requirements.ListRequirement(name="pid", element_type=int, optional=True, description=description)


_VIS = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with every unprintable character escaped (``\\x1b``, ``\\t``, ``\\u200e``), as FreeBSD's
    ps(1), dmesg(8) and procstat(1) pass memory's strings through vis(3).

    Names, arguments, environments, paths and kernel messages come from the
    image; unescaped, a hostile one could move the cursor, clear or retitle
    the analyst's terminal, or hide a line.  (Bytes that are not UTF-8 are
    already U+FFFD from the decoders.)
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _VIS.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else
                                                              f"\\u{ord(c):04x}") for c in text)


def printable_rows(rows):
    """A plugin's ``(level, row)`` generator with every ``str`` value passed through :func:`printable`."""
    for level, row in rows:
        yield level, tuple(printable(v) if isinstance(v, str) else v for v in row)


_check_framework()
exclude_other_os_automagic()
register_symbol_dirs()
