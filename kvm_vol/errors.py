"""Exceptions with enough context for a one-line message.

Every error caused by the evidence names the file and, where known, the
offset and the structure or field at fault, so a user can check it with a hex
editor.  The ``kvm-vol`` CLI and the Volatility glue print ``str(exc)`` on one
line; nobody should need a traceback to understand bad input.
"""

from typing import Optional


class KvmVolError(Exception):
    """Base class of kvm-vol's own errors (printed as one line)."""


class DumpFormatError(KvmVolError):
    """A dump file is malformed: truncated, wrong magic, inconsistent sizes.

    ``str()`` gives ``"<path>: <field> at offset 0x<off>: <message>"``, leaving
    out the parts that are unknown.
    """

    def __init__(self, path: str, message: str, offset: Optional[int] = None, field: Optional[str] = None):
        self.path = path
        self.message = message
        self.offset = offset
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<memory>"
        parts = []
        if self.field:
            parts.append(self.field)
        if self.offset is not None:
            parts.append(f"at offset {self.offset:#x}")
        loc = " ".join(parts)
        return f"{where}: {loc}: {self.message}" if loc else f"{where}: {self.message}"


class TranslationError(KvmVolError):
    """An address cannot be translated; ``reason`` keeps libkvm's specific text.

    ``address`` is the address of the failing page (or of the physical page
    for physical lookups), ``layer`` names the address space.
    """

    def __init__(self, address: int, reason: str, layer: str = ""):
        self.address = address
        self.reason = reason
        self.layer = layer
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.layer}: " if self.layer else ""
        return f"{prefix}invalid address {self.address:#x}: {self.reason}"


class SymbolError(KvmVolError):
    """A symbol file (ISF, kernel ELF, type pack) is missing or unusable."""
