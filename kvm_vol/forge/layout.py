"""Struct layouts for the forge, read from an ISF (normally a shipped type pack).

The forge never hard-codes an offset: every field it writes is looked up in
the ISF made from FreeBSD's own headers, so a synthetic machine is laid out
exactly as that release lays out its kernel objects.
"""

import struct
from typing import Any, Dict, Optional, Tuple

_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Layout:
    """Offsets, sizes and encoders for the types of one ISF."""

    def __init__(self, isf: Dict[str, Any]):
        self.isf = isf
        self.user_types: Dict[str, Any] = isf["user_types"]
        self.base_types: Dict[str, Any] = isf["base_types"]
        self.enums: Dict[str, Any] = isf.get("enums", {})
        #: sizeof(void *) and sizeof(long) of the release's target (4 and 4 on i386, 8 and 8 on LP64).
        self.pointer_size: int = self.base_types["pointer"]["size"]
        self.long_size: int = self.base_types["long"]["size"]
        self._field_cache: Dict[Tuple[str, str], Tuple[int, Dict[str, Any]]] = {}

    # -- sizes -----------------------------------------------------------
    def sizeof(self, type_name: str) -> int:
        """Size of a struct/union, enum or base type by name."""
        if type_name in self.user_types:
            return self.user_types[type_name]["size"]
        if type_name in self.enums:
            return self.enums[type_name]["size"]
        return self.base_types[type_name]["size"]

    def type_size(self, desc: Dict[str, Any]) -> int:
        kind = desc["kind"]
        if kind == "pointer":
            return self.pointer_size
        if kind == "array":
            return desc["count"] * self.type_size(desc["subtype"])
        if kind in ("struct", "union", "class"):
            return self.user_types[desc["name"]]["size"]
        if kind == "enum":
            return self.enums[desc["name"]]["size"]
        if kind == "base":
            return self.base_types[desc["name"]]["size"]
        if kind == "bitfield":
            return self.type_size(desc["type"])
        raise KeyError(f"no size for type kind {kind!r}")

    def has_field(self, struct_name: str, path: str) -> bool:
        try:
            self.field(struct_name, path)
            return True
        except KeyError:
            return False

    # -- fields ----------------------------------------------------------
    def _direct_field(self, struct_name: str, name: str) -> Optional[Tuple[int, Dict[str, Any]]]:
        """Find ``name`` in ``struct_name``, looking through anonymous members."""
        fields = self.user_types[struct_name]["fields"]
        if name in fields:
            f = fields[name]
            return f["offset"], f["type"]
        for f in fields.values():
            if f.get("anonymous") and f["type"].get("kind") in ("struct", "union"):
                found = self._direct_field(f["type"]["name"], name)
                if found is not None:
                    return f["offset"] + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str) -> Tuple[int, Dict[str, Any]]:
        """``(offset, type descriptor)`` of a dotted field path, e.g. ``p_list.le_next``."""
        key = (struct_name, path)
        cached = self._field_cache.get(key)
        if cached is not None:
            return cached
        offset = 0
        current = struct_name
        desc: Dict[str, Any] = {"kind": "struct", "name": struct_name}
        for part in path.split("."):
            if desc["kind"] not in ("struct", "union"):
                raise KeyError(f"{struct_name}.{path}: {part!r} is not inside a struct")
            current = desc["name"]
            found = self._direct_field(current, part)
            if found is None:
                raise KeyError(f"struct {current} has no field {part!r}")
            offset += found[0]
            desc = found[1]
        self._field_cache[key] = (offset, desc)
        return offset, desc

    def offsetof(self, struct_name: str, path: str) -> int:
        return self.field(struct_name, path)[0]

    # -- encoding --------------------------------------------------------
    def encode(self, desc: Dict[str, Any], value: Any) -> bytes:
        """Encode ``value`` for a field of type ``desc`` (ints, pointers, enums, char arrays)."""
        kind = desc["kind"]
        if kind == "pointer":
            return struct.pack("<" + _INT_FORMATS[self.pointer_size], value & ((1 << (8 * self.pointer_size)) - 1))
        if kind in ("base", "enum"):
            size = self.type_size(desc)
            if isinstance(value, str) and kind == "enum":
                value = self.enums[desc["name"]]["constants"][value]
            return int(value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if kind == "array":
            size = self.type_size(desc)
            if isinstance(value, str):
                value = value.encode("utf-8")
            if isinstance(value, (bytes, bytearray)):
                data = bytes(value)[:size]
                return data + bytes(size - len(data))
            sub = desc["subtype"]
            out = b"".join(self.encode(sub, v) for v in value)
            return out + bytes(size - len(out))
        if kind in ("struct", "union"):
            if isinstance(value, (bytes, bytearray)):
                size = self.type_size(desc)
                return bytes(value)[:size] + bytes(max(0, size - len(value)))
        raise TypeError(f"cannot encode {value!r} as {desc}")

    def enum_value(self, enum_name: str, constant: str) -> int:
        return self.enums[enum_name]["constants"][constant]

    def field_enum_value(self, struct_name: str, path: str, constant: str) -> int:
        """Value of an enum constant for a field whose type is an enum."""
        desc = self.field(struct_name, path)[1]
        if desc["kind"] != "enum":
            raise KeyError(f"{struct_name}.{path} is not an enum")
        return self.enums[desc["name"]]["constants"][constant]
