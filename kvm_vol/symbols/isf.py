"""Reading, writing and assembling Volatility ISF (Intermediate Symbol Format) files.

The ISFs kvm-vol produces follow format 6.2.0, the version dwarf2json 0.9
writes (Volatility 2.28 reads up to 6.3).  Three kinds exist:

* **types ISFs** - what :mod:`kvm_vol.symbols.dwarf2isf` makes from DWARF;
* **type packs** - shipped types from FreeBSD release headers, with the
  kernel globals' types at address 0 (:mod:`kvm_vol.symbols.typepacks`);
* **kernel ISFs** - :func:`make_kernel_isf` combines a types ISF with a kernel's
  ELF symbol table and its ``version`` banner, the form Volatility's symbol
  cache identifies a kernel by.

Volatility validates ISFs against its bundled JSON schema whenever
``jsonschema`` is installed, and the 6.2.0 schema forbids extra keys in
``metadata``.  kvm-vol's provenance therefore lives in
``metadata["producer"]["kvm_vol"]`` (the producer object is open), never
next to ``format``.

Files are written deterministically (sorted keys, no timestamps, fixed
compression settings) so regenerating an unchanged input gives identical
bytes and commits stay reviewable.
"""

import base64
import copy
import gzip
import json
import lzma
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from kvm_vol import __version__
from kvm_vol.errors import SymbolError

__all__ = [
    "BANNER_SYMBOL",
    "ISF_FORMAT",
    "KIND_KERNEL",
    "KIND_TYPE_PACK",
    "KIND_TYPES",
    "banner_of",
    "isf_kind",
    "load_isf",
    "make_kernel_isf",
    "producer",
    "write_isf",
]

#: ISF format written by kvm-vol (the dwarf2json format; Volatility 2.28 reads up to 6.3).
ISF_FORMAT = "6.2.0"

#: ``producer.kvm_vol.kind`` of an ISF made from DWARF alone (types and variables).
KIND_TYPES = "types"
#: ``producer.kvm_vol.kind`` of a shipped type pack (release headers, symbols at address 0).
KIND_TYPE_PACK = "type-pack"
#: ``producer.kvm_vol.kind`` of a kernel ISF (types + symbol addresses + banner).
KIND_KERNEL = "kernel"

#: The kernel symbol whose contents identify a FreeBSD kernel (``sys/conf/newvers.sh``).
BANNER_SYMBOL = "version"


def producer(provenance: Mapping[str, Any]) -> Dict[str, Any]:
    """Return the ``metadata.producer`` object naming kvm-vol and carrying ``provenance``.

    ``provenance`` is stored under ``producer["kvm_vol"]``; it must contain a
    ``"kind"`` (one of the ``KIND_*`` constants) so tools can tell a type
    pack from a kernel ISF without guessing from its contents.
    """
    if "kind" not in provenance:
        raise ValueError("ISF provenance needs a 'kind'")
    return {"name": "kvm-vol", "version": __version__, "kvm_vol": dict(provenance)}


def isf_kind(isf: Mapping[str, Any]) -> Optional[str]:
    """The ``KIND_*`` of an ISF written by kvm-vol, or None for other producers."""
    prov = isf.get("metadata", {}).get("producer", {}).get("kvm_vol")
    if isinstance(prov, Mapping):
        kind = prov.get("kind")
        return kind if isinstance(kind, str) else None
    return None


def load_isf(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Load an ISF from ``.json``, ``.json.xz`` or ``.json.gz``.

    Raises :class:`SymbolError` naming the file when it is missing, cannot
    be decompressed or decoded, or is not an ISF (no ``metadata``/``user_types``).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SymbolError(f"{p}: cannot read ISF: {exc.strerror or exc}") from exc
    name = p.name.lower()
    try:
        if name.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif name.endswith(".gz"):
            raw = gzip.decompress(raw)
        obj = json.loads(raw.decode("utf-8"))
    except (lzma.LZMAError, OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise SymbolError(f"{p}: not a readable ISF file: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict) or "user_types" not in obj:
        raise SymbolError(f"{p}: not an ISF file (no metadata/user_types)")
    return obj


def _encode(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, trailing newline."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def write_isf(obj: Mapping[str, Any], path: Union[str, "os.PathLike[str]"]) -> Path:
    """Write ``obj`` to ``path`` deterministically; return the path.

    The encoding follows the name: ``.xz`` gives an xz stream (preset 9,
    CRC64 check; xz carries no timestamps), ``.gz`` a gzip member with mtime
    0 and no file name, anything else plain JSON.  Parent directories are
    created.  The file is written to a temporary name and renamed, so a
    reader never sees a half-written ISF.
    """
    p = Path(path)
    data = _encode(obj)
    name = p.name.lower()
    if name.endswith(".xz"):
        data = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)
    elif name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as exc:
        raise SymbolError(f"{p}: cannot write ISF: {exc.strerror or exc}") from exc
    return p


def banner_of(isf: Mapping[str, Any]) -> Optional[bytes]:
    """The kernel banner stored in ``symbols.version.constant_data``, or None.

    This is the identifier Volatility's symbol cache and kvm-vol's FreeBSD
    identifier match against memory.  Type packs never carry one.
    """
    sym = isf.get("symbols", {}).get(BANNER_SYMBOL)
    if not isinstance(sym, Mapping) or "constant_data" not in sym:
        return None
    try:
        return base64.b64decode(sym["constant_data"], validate=True)
    except (ValueError, TypeError):
        return None


def make_kernel_isf(
    types_isf: Mapping[str, Any],
    symbols: Mapping[str, int],
    banner: bytes,
    symbol_types: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Build a kernel ISF from a types ISF, ELF symbol addresses and the banner.

    * Types (``base_types``, ``user_types``, ``enums``) are copied from
      ``types_isf`` (the kernel's own DWARF, or a type pack).
    * Every entry of ``symbols`` (name -> address, e.g. from the kernel's
      ``.symtab``) becomes a symbol.  Its ``type`` comes from
      ``symbol_types[name]["type"]`` if present, else from
      ``types_isf["symbols"][name]["type"]``; untyped symbols (functions,
      linker symbols) stay untyped.  ``symbol_types`` has the shape of an
      ISF ``symbols`` section (addresses in it are ignored), so another
      ISF's symbols can be passed as they are.
    * Variables that ``types_isf`` places at a non-zero address but the
      symbol table lacks are kept as they are (DWARF knows them, as in
      dwarf2json).  Address-0 entries - everything in a type pack, and
      declarations - are dropped: an address of 0 would be a lie.
    * ``symbols["version"]["constant_data"]`` is the banner: the ``version``
      bytes with trailing NULs removed (the final ``"\\n"`` is kept).

    Raises :class:`SymbolError` if ``symbols`` has no ``version`` or the
    banner is empty, because such an ISF could never be matched to a dump.
    """
    if BANNER_SYMBOL not in symbols:
        raise SymbolError(f"no '{BANNER_SYMBOL}' symbol: cannot make a kernel ISF without the kernel banner")
    text = bytes(banner).rstrip(b"\0")
    if not text:
        raise SymbolError(f"the '{BANNER_SYMBOL}' string is empty: cannot make a kernel ISF without the kernel banner")
    extra_types: Mapping[str, Mapping[str, Any]] = symbol_types or {}
    dwarf_symbols: Mapping[str, Any] = types_isf.get("symbols", {})

    out_symbols: Dict[str, Dict[str, Any]] = {}
    for name, entry in dwarf_symbols.items():
        if entry.get("address"):
            out_symbols[name] = copy.deepcopy(dict(entry))
    for name, address in symbols.items():
        sym: Dict[str, Any] = {"address": int(address)}
        sym_type = extra_types.get(name, {}).get("type") or dwarf_symbols.get(name, {}).get("type")
        if sym_type is not None:
            sym["type"] = copy.deepcopy(dict(sym_type))
        out_symbols[name] = sym
    out_symbols[BANNER_SYMBOL]["constant_data"] = base64.b64encode(text).decode("ascii")

    types_prov = types_isf.get("metadata", {}).get("producer", {}).get("kvm_vol")
    provenance: Dict[str, Any] = {"kind": KIND_KERNEL, "symbol_count": len(symbols)}
    if isinstance(types_prov, Mapping):
        provenance["types"] = copy.deepcopy(dict(types_prov))
    return {
        "metadata": {"format": ISF_FORMAT, "producer": producer(provenance)},
        "base_types": copy.deepcopy(dict(types_isf.get("base_types", {}))),
        "user_types": copy.deepcopy(dict(types_isf.get("user_types", {}))),
        "enums": copy.deepcopy(dict(types_isf.get("enums", {}))),
        "symbols": out_symbols,
    }
