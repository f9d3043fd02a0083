"""Convert DWARF debug information to a Volatility ISF (format 6.2.0), like dwarf2json.

Works on linked kernels (``kernel.debug``) and on relocatable objects built by
clang/zig (DWARF 4 and 5; pyelftools applies the ``.rela.debug_*``
relocations, so variable addresses come out section-relative, as with
dwarf2json).  kvm-vol needs its own converter because dwarf2json is a Go
program that is not installable from PyPI, and because it gets some things
wrong that matter for FreeBSD (see below).

What is emitted, and how it maps DWARF:

* ``base_types``: every ``DW_TAG_base_type`` by name, plus ``void`` and
  ``pointer`` (unsigned, sized by the compile units' address size).
* ``user_types``: every complete struct/union/class.  A member without a
  name becomes ``unnamed_field_<hex offset>``; when its type is a struct or
  union it is marked ``"anonymous": true`` so Volatility 2.28 flattens its
  members into the parent (C11 anonymous structs/unions).  Aggregates without
  a tag are named ``unnamed_<16 hex>`` from a SHA-1 of their definition, so
  the name is stable across runs and identical anonymous types (one
  ``LIST_ENTRY(proc)`` per compile unit) collapse into one.
* Bit-fields: ``{"kind": "bitfield", "bit_position", "bit_length", "type"}``
  where ``offset`` is the naturally aligned storage unit of the field's type
  that holds the field and ``bit_position`` counts from that unit's least
  significant bit - exactly what Volatility's ``BitField`` reads.  Both the
  DWARF 4+ ``DW_AT_data_bit_offset`` and the older big-endian-style
  ``DW_AT_bit_offset`` are handled (dwarf2json mishandled both at times).
* ``enums``: size, constants and ``base`` from the enumeration's
  ``DW_AT_type`` (else the first int base type of the same size and
  signedness, as dwarf2json does).
* ``symbols``: variables declared at file scope, with the address from
  ``DW_OP_addr``/``DW_OP_addrx`` (0 when DWARF has none); function-scope
  statics are left out because the ELF symbol table names them differently
  (``func.var``).
* Type descriptors follow typedefs and qualifiers; arrays nest one level per
  dimension; arrays without a bound (flexible members) have ``count`` 0;
  function types are ``{"kind": "function"}``.

When two compile units define the same tag differently, the first
definition at file scope wins and the name is listed under
``producer.kvm_vol.conflicting_types``; members Volatility cannot represent
are listed under ``dropped_fields``.  Output is deterministic for a given
input file.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError, ELFRelocationError
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.elf.elffile import ELFFile

from kvm_vol.errors import SymbolError
from kvm_vol.symbols.isf import ISF_FORMAT, KIND_TYPES, producer

__all__ = ["dwarf_to_isf"]

Descriptor = Dict[str, Any]

_AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union", "DW_TAG_class_type": "class"}
#: Tags that name or qualify another type without changing its layout.
_TRANSPARENT = {
    "DW_TAG_typedef",
    "DW_TAG_const_type",
    "DW_TAG_volatile_type",
    "DW_TAG_restrict_type",
    "DW_TAG_atomic_type",
    "DW_TAG_immutable_type",
    "DW_TAG_packed_type",
    "DW_TAG_shared_type",
}
_POINTERS = {"DW_TAG_pointer_type", "DW_TAG_reference_type", "DW_TAG_rvalue_reference_type"}
#: Scopes whose variables and types are local to code (not reachable by a global name).
_CODE_SCOPES = {"DW_TAG_subprogram", "DW_TAG_lexical_block", "DW_TAG_inlined_subroutine", "DW_TAG_entry_point"}

#: DW_ATE_* encoding -> (ISF kind, signed).  Unlisted encodings are unsigned ints.
_ENCODINGS = {
    0x01: ("int", False),  # address
    0x02: ("bool", False),  # boolean
    0x03: ("float", True),  # complex_float
    0x04: ("float", True),  # float
    0x05: ("int", True),  # signed
    0x06: ("char", True),  # signed_char
    0x07: ("int", False),  # unsigned
    0x08: ("char", False),  # unsigned_char
    0x09: ("float", True),  # imaginary_float
    0x0D: ("int", True),  # signed_fixed
    0x0E: ("int", False),  # unsigned_fixed
    0x0F: ("float", True),  # decimal_float
    0x10: ("char", False),  # UTF
    0x11: ("char", False),  # UCS
    0x12: ("char", False),  # ASCII
}
_DATA_FORM_BITS = {"DW_FORM_data1": 8, "DW_FORM_data2": 16, "DW_FORM_data4": 32, "DW_FORM_data8": 64}
_CONSTANT_FORMS = set(_DATA_FORM_BITS) | {"DW_FORM_sdata", "DW_FORM_udata", "DW_FORM_implicit_const", "DW_FORM_data16"}

_VOID: Descriptor = {"kind": "base", "name": "void"}


class _Unrepresentable(Exception):
    """A member Volatility's ISF cannot express; the member is dropped and listed."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _signed(attr: Any) -> int:
    """The attribute's value as a signed number.

    pyelftools returns ``DW_FORM_dataN`` raw (unsigned); DWARF leaves their
    signedness to context, and every place this is used (bounds, bit offsets,
    enumerators of signed enums) means a signed value.
    """
    bits = _DATA_FORM_BITS.get(attr.form)
    value = int(attr.value)
    if bits and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _release_dies(unit: Any) -> None:
    """Drop the DIEs pyelftools cached for ``unit``, keeping its top DIE.

    pyelftools keeps every parsed DIE of every unit for the life of the
    DWARFInfo, which for a kernel (hundreds of MB of .debug_info) means many
    GB of Python objects.  The converter memoises what it derives by DIE
    offset, so a unit's DIEs are not needed once it has been walked;
    references into it from later units are re-parsed on demand.  The cache
    layout (parallel ``_dielist``/``_diemap`` lists, top DIE first) is a
    pyelftools internal, hence the defensive check.
    """
    dies, offsets = getattr(unit, "_dielist", None), getattr(unit, "_diemap", None)
    if isinstance(dies, list) and isinstance(offsets, list) and len(dies) == len(offsets) > 1:
        del dies[1:]
        del offsets[1:]


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


class _Converter:
    """One pass over all compile (and type) units, collecting the ISF sections."""

    def __init__(self, elf: ELFFile, path: Path):
        self.path = path
        self.dwarf = elf.get_dwarf_info()
        self.endian = "little" if elf.little_endian else "big"
        self.base_types: Dict[str, Dict[str, Any]] = {}
        self.user_types: Dict[str, Tuple[int, Dict[str, Any]]] = {}
        self.enums: Dict[str, Tuple[int, Dict[str, Any]]] = {}
        self.symbols: Dict[str, Tuple[int, Dict[str, Any]]] = {}
        self.pending_enum_bases: List[Tuple[str, int, bool]] = []
        self.dropped: Set[str] = set()
        self.conflicts: Set[str] = set()
        self.versions: Set[int] = set()
        self.address_size: Optional[int] = None
        self.units = 0
        self._descriptors: Dict[Tuple[int, int], Optional[Descriptor]] = {}
        self._aggregate_names: Dict[Tuple[int, int], str] = {}
        self._naming: Set[Tuple[int, int]] = set()
        self._expr_parsers: Dict[int, DWARFExprParser] = {}

    # -- traversal -------------------------------------------------------

    def run(self) -> None:
        for cu in self.dwarf.iter_CUs():
            self._walk_unit(cu)
        # Type units (.debug_types, -fdebug-types-section) need pyelftools >= 0.32;
        # older versions cannot read them at all, and kernels are not built with them.
        iter_type_units = getattr(self.dwarf, "iter_TUs", None)
        if iter_type_units is not None:
            for tu in iter_type_units():
                self._walk_unit(tu)
        self._resolve_enum_bases()

    def _walk_unit(self, unit: Any) -> None:
        self.units += 1
        try:
            self._walk_dies(unit)
        finally:
            _release_dies(unit)

    def _walk_dies(self, unit: Any) -> None:
        self.versions.add(unit.header.version)
        if self.address_size is None:
            self.address_size = unit.header.address_size
        stack: List[Tuple[DIE, bool]] = [(unit.get_top_DIE(), False)]
        while stack:
            die, in_code = stack.pop()
            tag = die.tag
            if tag == "DW_TAG_base_type":
                self._add_base_type(die)
            elif tag in _AGGREGATES and "DW_AT_declaration" not in die.attributes:
                self._add_aggregate(die, local=in_code)
            elif tag == "DW_TAG_enumeration_type" and "DW_AT_declaration" not in die.attributes:
                self._add_enum(die, local=in_code)
            elif tag == "DW_TAG_variable" and not in_code:
                self._add_variable(die)
            child_in_code = in_code or tag in _CODE_SCOPES
            children = list(die.iter_children())
            stack.extend((child, child_in_code) for child in reversed(children))

    @staticmethod
    def _key(die: DIE) -> Tuple[int, int]:
        """Identity of a DIE: offsets are unique within one section (.debug_info or .debug_types)."""
        return id(die.stream), die.offset

    def _type_of(self, die: DIE) -> Optional[DIE]:
        if "DW_AT_type" not in die.attributes:
            return None
        return die.get_DIE_from_attribute("DW_AT_type")

    def _name(self, die: DIE) -> Optional[str]:
        attr = die.attributes.get("DW_AT_name")
        return _text(attr.value) if attr is not None else None

    # -- base types ------------------------------------------------------

    def _add_base_type(self, die: DIE) -> str:
        """Register a ``DW_TAG_base_type`` (DWARF requires them to be named) and return its name."""
        name = self._name(die)
        if not name:
            raise SymbolError(f"{self.path}: DIE {die.offset:#x}: base type without a name")
        if name not in self.base_types:
            encoding = die.attributes["DW_AT_encoding"].value if "DW_AT_encoding" in die.attributes else 0x07
            kind, signed = _ENCODINGS.get(encoding, ("int", False))
            size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes else 0
            self.base_types[name] = {"size": size, "signed": signed, "kind": kind, "endian": self.endian}
        return name

    # -- type descriptors --------------------------------------------------

    def describe(self, die: Optional[DIE]) -> Optional[Descriptor]:
        """ISF type descriptor of a type DIE (None for types the ISF cannot express).

        Descriptors are memoised per DIE and shared between the places that
        use them; nothing in the converter mutates a descriptor once made.
        """
        if die is None:
            return _VOID
        key = self._key(die)
        if key not in self._descriptors:
            self._descriptors[key] = self._describe(die)
        return self._descriptors[key]

    def _describe(self, die: DIE) -> Optional[Descriptor]:
        tag = die.tag
        if tag in _TRANSPARENT:
            return self.describe(self._type_of(die))
        if tag == "DW_TAG_base_type":
            return {"kind": "base", "name": self._add_base_type(die)}
        if tag == "DW_TAG_unspecified_type":
            return _VOID
        if tag in _POINTERS:
            subtype = self.describe(self._type_of(die))
            return {"kind": "pointer", "subtype": subtype if subtype is not None else _VOID}
        if tag in _AGGREGATES:
            name = self._aggregate_name(die)
            return {"kind": _AGGREGATES[tag], "name": name} if name is not None else None
        if tag == "DW_TAG_enumeration_type":
            return {"kind": "enum", "name": self._enum_name(die)}
        if tag == "DW_TAG_array_type":
            return self._describe_array(die)
        if tag == "DW_TAG_subroutine_type":
            return {"kind": "function"}
        return None

    def _describe_array(self, die: DIE) -> Optional[Descriptor]:
        element = self.describe(self._type_of(die))
        if element is None:
            return None
        counts = [
            self._subrange_count(child)
            for child in die.iter_children()
            if child.tag in ("DW_TAG_subrange_type", "DW_TAG_enumeration_type")
        ] or [0]
        desc = element
        for count in reversed(counts):
            desc = {"kind": "array", "count": count, "subtype": desc}
        return desc

    @staticmethod
    def _subrange_count(sub: DIE) -> int:
        """Elements in one dimension; 0 for flexible or variable-length bounds."""
        attrs = sub.attributes
        if "DW_AT_count" in attrs:
            count = attrs["DW_AT_count"]
            return max(_signed(count), 0) if count.form in _CONSTANT_FORMS else 0
        upper = attrs.get("DW_AT_upper_bound")
        if upper is None or upper.form not in _CONSTANT_FORMS:
            return 0
        lower = attrs.get("DW_AT_lower_bound")
        low = _signed(lower) if lower is not None and lower.form in _CONSTANT_FORMS else 0
        return max(_signed(upper) - low + 1, 0)

    # -- structs and unions -----------------------------------------------

    def _aggregate_name(self, die: DIE) -> Optional[str]:
        """The ISF name of a struct/union: its tag, or a hash of its definition.

        An untagged aggregate is registered in ``user_types`` here, under
        the hash name.  None for an untagged declaration, which has nothing
        to name it by (C cannot produce one).
        """
        name = self._name(die)
        if name:
            return name
        key = self._key(die)
        if key in self._aggregate_names:
            return self._aggregate_names[key]
        if key in self._naming:
            raise SymbolError(f"{self.path}: DIE {die.offset:#x}: an anonymous aggregate contains itself")
        self._naming.add(key)
        try:
            definition = self._aggregate_definition(die)
        finally:
            self._naming.discard(key)
        if definition is None:
            return None
        name = "unnamed_" + _digest(definition)
        self.user_types.setdefault(name, (0, definition))
        self._aggregate_names[key] = name
        return name

    def _add_aggregate(self, die: DIE, local: bool) -> None:
        name = self._name(die)
        if not name:
            self._aggregate_name(die)
            return
        definition = self._aggregate_definition(die)
        if definition is not None:
            self._register(self.user_types, name, int(local), definition)

    def _register(self, table: Dict[str, Tuple[int, Dict[str, Any]]], name: str, tier: int, definition: Dict[str, Any]) -> None:
        """Keep the first definition of the best tier (0 = file scope, 1 = inside a function)."""
        old = table.get(name)
        if old is None or tier < old[0]:
            table[name] = (tier, definition)
        elif tier == old[0] and old[1] != definition:
            self.conflicts.add(name)

    def _aggregate_definition(self, die: DIE) -> Optional[Dict[str, Any]]:
        if "DW_AT_byte_size" not in die.attributes or "DW_AT_declaration" in die.attributes:
            return None
        kind = _AGGREGATES[die.tag]
        fields: Dict[str, Dict[str, Any]] = {}
        for member in die.iter_children():
            if member.tag != "DW_TAG_member" or "DW_AT_declaration" in member.attributes:
                continue
            label = self._name(member)
            try:
                offset, ftype = self._member(member)
            except _Unrepresentable as exc:
                owner = self._name(die) or f"<anonymous {kind} at DIE {die.offset:#x}>"
                self.dropped.add(f"{owner}.{label or '<anonymous>'}: {exc}")
                continue
            field: Dict[str, Any] = {"offset": offset, "type": ftype}
            if not label:
                label = f"unnamed_field_{offset:x}"
                if ftype.get("kind") in ("struct", "union", "class"):
                    field["anonymous"] = True
                base, n = label, 1
                while label in fields:
                    label, n = f"{base}_{n}", n + 1
            fields[label] = field
        return {"kind": kind, "size": die.attributes["DW_AT_byte_size"].value, "fields": dict(sorted(fields.items()))}

    def _member(self, member: DIE) -> Tuple[int, Descriptor]:
        type_die = self._type_of(member)
        ftype = self.describe(type_die)
        if ftype is None:
            raise _Unrepresentable(f"type {type_die.tag if type_die is not None else '?'} has no ISF form")
        location = self._member_location(member)
        if "DW_AT_bit_size" not in member.attributes:
            return location or 0, ftype
        return self._bitfield(member, location, type_die, ftype)

    def _member_location(self, member: DIE) -> Optional[int]:
        attr = member.attributes.get("DW_AT_data_member_location")
        if attr is None:
            return None
        if isinstance(attr.value, int):
            return attr.value
        ops = self._expr_parser(member).parse_expr(attr.value)
        if len(ops) == 1 and ops[0].op_name in ("DW_OP_plus_uconst", "DW_OP_constu", "DW_OP_consts"):
            return int(ops[0].args[0])
        raise _Unrepresentable("member location is a computed expression")

    def _bitfield(self, member: DIE, location: Optional[int], type_die: Optional[DIE], ftype: Descriptor) -> Tuple[int, Descriptor]:
        if ftype.get("kind") not in ("base", "enum"):
            raise _Unrepresentable(f"bit-field of a {ftype.get('kind')} type")
        unit = self._byte_size(type_die)
        if not unit:
            raise _Unrepresentable("bit-field type without a size")
        attrs = member.attributes
        length = attrs["DW_AT_bit_size"].value
        if "DW_AT_data_bit_offset" in attrs:
            first = _signed(attrs["DW_AT_data_bit_offset"])
        elif "DW_AT_bit_offset" in attrs:
            # DWARF 2/3: counted from the most significant bit of a storage
            # unit of DW_AT_byte_size bytes at the member location.
            storage = attrs["DW_AT_byte_size"].value if "DW_AT_byte_size" in attrs else unit
            first = (location or 0) * 8 + storage * 8 - _signed(attrs["DW_AT_bit_offset"]) - length
        else:
            first = (location or 0) * 8
        start = (first // (unit * 8)) * unit
        position = first - start * 8
        if position + length > unit * 8:
            # Packed structures: the aligned unit does not hold the whole field;
            # fall back to reading the type's size from the field's first byte.
            start, position = first // 8, first % 8
            if position + length > unit * 8:
                raise _Unrepresentable(f"{length}-bit field straddles more than a {unit}-byte read")
        return start, {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": ftype}

    def _byte_size(self, die: Optional[DIE]) -> int:
        while die is not None and die.tag in _TRANSPARENT:
            die = self._type_of(die)
        if die is None or "DW_AT_byte_size" not in die.attributes:
            return 0
        return int(die.attributes["DW_AT_byte_size"].value)

    def _expr_parser(self, die: DIE) -> DWARFExprParser:
        key = id(die.cu)
        if key not in self._expr_parsers:
            self._expr_parsers[key] = DWARFExprParser(die.cu.structs)
        return self._expr_parsers[key]

    # -- enumerations ------------------------------------------------------

    def _enum_name(self, die: DIE) -> str:
        name = self._name(die)
        if name:
            return name
        definition, _ = self._enum_definition(die)
        return "unnamed_" + _digest({"size": definition["size"], "constants": definition["constants"]})

    def _enum_definition(self, die: DIE) -> Tuple[Dict[str, Any], bool]:
        """The enum's ISF entry, and whether ``base`` still has to be chosen."""
        base_die = self._type_of(die)
        while base_die is not None and base_die.tag in _TRANSPARENT:
            base_die = self._type_of(base_die)
        underlying_signed: Optional[bool] = None
        base = "void"
        if base_die is not None and base_die.tag == "DW_TAG_base_type":
            base = self._add_base_type(base_die)
            underlying_signed = self.base_types[base]["signed"]
        constants: Dict[str, int] = {}
        for child in die.iter_children():
            if child.tag != "DW_TAG_enumerator":
                continue
            attr = child.attributes["DW_AT_const_value"]
            # dataN forms are raw bits: signed unless the underlying type says unsigned.
            value = int(attr.value) if underlying_signed is False else _signed(attr)
            constants[_text(child.attributes["DW_AT_name"].value)] = value
        size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes else self._byte_size(base_die)
        definition = {"size": size, "base": base, "constants": dict(sorted(constants.items()))}
        return definition, base_die is None or base_die.tag != "DW_TAG_base_type"

    def _add_enum(self, die: DIE, local: bool) -> None:
        name = self._enum_name(die)
        definition, needs_base = self._enum_definition(die)
        if needs_base:
            signed = any(v < 0 for v in definition["constants"].values())
            self.pending_enum_bases.append((name, definition["size"], signed))
        self._register(self.enums, name, 0 if not self._name(die) else int(local), definition)

    def _resolve_enum_bases(self) -> None:
        """Give enums without ``DW_AT_type`` a base type, once all base types are known."""
        for name, size, signed in self.pending_enum_bases:
            tier, definition = self.enums[name]
            if definition["base"] != "void":
                continue
            candidates = sorted(
                n for n, b in self.base_types.items() if b["kind"] == "int" and b["size"] == size and b["signed"] == signed
            )
            if candidates:
                base = candidates[0]
            else:
                base = f"enum_base_{'s' if signed else 'u'}{size}"
                self.base_types[base] = {"size": size, "signed": signed, "kind": "int", "endian": self.endian}
            self.enums[name] = (tier, {**definition, "base": base})

    # -- variables ---------------------------------------------------------

    def _add_variable(self, die: DIE) -> None:
        source = die
        for link in ("DW_AT_specification", "DW_AT_abstract_origin"):
            if link in die.attributes:
                source = die.get_DIE_from_attribute(link)
                break
        name = self._name(die) or self._name(source)
        type_die = self._type_of(die)
        if type_die is None:
            type_die = self._type_of(source)
        if not name or type_die is None:
            return
        address = self._static_address(die)
        desc = self.describe(type_die)
        entry = {"address": address or 0, "type": desc if desc is not None else _VOID}
        rank = 0 if address is not None else 1
        old = self.symbols.get(name)
        if old is None or rank < old[0]:
            self.symbols[name] = (rank, entry)

    def _static_address(self, die: DIE) -> Optional[int]:
        """The variable's address if its location is a plain static address."""
        attr = die.attributes.get("DW_AT_location")
        if attr is None or attr.form not in ("DW_FORM_exprloc", "DW_FORM_block1", "DW_FORM_block2", "DW_FORM_block4", "DW_FORM_block"):
            return None
        ops = self._expr_parser(die).parse_expr(attr.value)
        if not ops:
            return None
        head = ops[0]
        if head.op_name == "DW_OP_addr":
            address = int(head.args[0])
        elif head.op_name in ("DW_OP_addrx", "DW_OP_GNU_addr_index"):
            address = self.dwarf.get_addr(die.cu, int(head.args[0]))
        else:
            return None
        for op in ops[1:]:
            if op.op_name != "DW_OP_plus_uconst":
                return None
            address += int(op.args[0])
        return address

    # -- result --------------------------------------------------------------

    def result(self, provenance: Dict[str, Any]) -> Dict[str, Any]:
        base_types = dict(self.base_types)
        base_types["void"] = {"size": 0, "signed": False, "kind": "void", "endian": self.endian}
        base_types["pointer"] = {"size": self.address_size or 0, "signed": False, "kind": "int", "endian": self.endian}
        provenance = {
            "kind": KIND_TYPES,
            **provenance,
            "dwarf_versions": sorted(self.versions),
            "address_size": self.address_size,
            "units": self.units,
            "dropped_fields": sorted(self.dropped),
            "conflicting_types": sorted(self.conflicts),
        }
        return {
            "metadata": {"format": ISF_FORMAT, "producer": producer(provenance)},
            "base_types": dict(sorted(base_types.items())),
            "user_types": {name: entry[1] for name, entry in sorted(self.user_types.items())},
            "enums": {name: entry[1] for name, entry in sorted(self.enums.items())},
            "symbols": {name: entry[1] for name, entry in sorted(self.symbols.items())},
        }


def dwarf_to_isf(path: Union[str, Path]) -> Dict[str, Any]:
    """Convert the DWARF in the ELF file ``path`` to an ISF dictionary.

    ``producer.kvm_vol`` records the source file (name, SHA-256, ELF
    machine), the DWARF versions and address size seen, and the members or
    types that needed a decision (``dropped_fields``, ``conflicting_types``).

    Raises :class:`SymbolError` naming the file when it cannot be read, is
    not ELF, or has no DWARF.
    """
    p = Path(path)
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise SymbolError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        fh.seek(0)
        try:
            elf = ELFFile(fh)
        except (ELFError, ELFParseError) as exc:
            raise SymbolError(f"{p}: not an ELF file: {exc}") from exc
        try:
            if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
                raise SymbolError(f"{p}: no DWARF debug information (.debug_info)")
            converter = _Converter(elf, p)
            converter.run()
        except (ELFError, ELFParseError, ELFRelocationError, DWARFError) as exc:
            raise SymbolError(f"{p}: cannot read DWARF: {exc}") from exc
        machine = elf["e_machine"]
    return converter.result({"source": {"name": p.name, "sha256": digest.hexdigest()}, "machine": machine})
