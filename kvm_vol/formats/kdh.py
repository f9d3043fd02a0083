"""``struct kerneldumpheader``: the 512-byte header around a dump on the dump device.

Layout and rules from ``sys/sys/kerneldump.h`` (version 4) and
``sys/kern/kern_shutdown.c``.  All integers are big-endian ("dump byte
order").  On the device the kernel writes::

    | leader (1 block) | key (dumpkeysize) | dump (dumpextent) | trailer (1 block) |

where a block is ``blocksize`` bytes (the device sector size, at least 512)
holding the header followed by zeros, and ``dumpkeysize`` is already rounded
up to ``blocksize``.  savecore(8) strips both headers, so a ``vmcore.N``
normally starts directly with the minidump or ELF header; a file that still
starts with a leader (a copy of the dump area, a netdump capture) has its
dump at ``blocksize + dumpkeysize``.
"""

import struct
from dataclasses import asdict, dataclass
from typing import Optional

from kvm_vol.errors import DumpFormatError

__all__ = [
    "KDH_SIZE", "KERNELDUMPMAGIC", "TEXTDUMPMAGIC", "KERNELDUMPMAGIC_CLEARED", "KERNELDUMPVERSION",
    "KERNELDUMP_AMD64_VERSION", "KERNELDUMP_I386_VERSION", "KERNELDUMP_AARCH64_VERSION", "ARCHITECTURE_VERSIONS",
    "COMPRESSION_NAMES", "KernelDumpHeader", "compute_parity", "has_kdh_magic",
    "describe_unreadable", "KernelDumpKey", "ENCRYPTION_NAMES", "KERNELDUMP_IV_MAX_SIZE",
]

KDH_SIZE = 512
KERNELDUMPMAGIC = b"FreeBSD Kernel Dump"
TEXTDUMPMAGIC = b"FreeBSD Text Dump"
KERNELDUMPMAGIC_CLEARED = b"Cleared Kernel Dump"
_MAGICS = {KERNELDUMPMAGIC: "kernel", TEXTDUMPMAGIC: "text", KERNELDUMPMAGIC_CLEARED: "cleared"}
KERNELDUMPVERSION = 4  #: also KERNELDUMP_TEXT_VERSION
KERNELDUMP_AMD64_VERSION = 2  #: architectureversion written by amd64 kernels
KERNELDUMP_I386_VERSION = 2  #: architectureversion written by i386 kernels (sys/sys/kerneldump.h)
KERNELDUMP_AARCH64_VERSION = 1  #: architectureversion written by arm64 kernels (architecture "aarch64")
#: ``architectureversion`` each kernel writes, by ``architecture`` (its MACHINE_ARCH).
ARCHITECTURE_VERSIONS = {"amd64": KERNELDUMP_AMD64_VERSION, "i386": KERNELDUMP_I386_VERSION,
                         "aarch64": KERNELDUMP_AARCH64_VERSION}
#: ``compression`` values (KERNELDUMP_COMP_*).
COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "zstd"}

# magic, architecture, version, architectureversion, dumplength, dumptime,
# dumpkeysize, blocksize, hostname, versionstring, panicstring, compression,
# dumpextent, unused, parity
_KDH = struct.Struct(">20s12sIIQQII64s192s175sBQ4sI")
assert _KDH.size == KDH_SIZE
_WORDS = struct.Struct(">128I")
_PARITY_OFFSET = 508


def compute_parity(raw: bytes) -> int:
    """XOR of the 128 32-bit words of a header; 0 for a correct one (``kerneldump_parity``)."""
    result = 0
    for word in _WORDS.unpack(raw[:KDH_SIZE]):
        result ^= word
    return result


def has_kdh_magic(raw: bytes) -> bool:
    """Whether ``raw`` starts with one of the three kerneldumpheader magics."""
    return raw[:20].rstrip(b"\0") in _MAGICS


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass
class KernelDumpHeader:
    """One kerneldumpheader; :meth:`pack` computes the parity word."""

    magic: bytes = KERNELDUMPMAGIC
    architecture: str = "amd64"
    version: int = KERNELDUMPVERSION
    architectureversion: int = KERNELDUMP_AMD64_VERSION
    dumplength: int = 0  #: bytes of dump, headers and key excluded
    dumptime: int = 0  #: seconds since the epoch
    dumpkeysize: int = 0  #: bytes of encryption key after the leader (0: not encrypted)
    blocksize: int = 512
    hostname: str = ""
    versionstring: str = ""
    panicstring: str = ""
    compression: int = 0
    dumpextent: int = 0  #: space reserved for the dump on the device
    parity: int = 0  #: as stored; :attr:`parity_ok` tells whether it checks out
    parity_ok: bool = True

    @property
    def kind(self) -> str:
        """``"kernel"``, ``"text"`` (a textdump tar stream) or ``"cleared"`` (already saved)."""
        return _MAGICS.get(self.magic, "unknown")

    @property
    def dump_offset(self) -> int:
        """Where the dump begins, counted from the start of the leader."""
        return self.blocksize + self.dumpkeysize

    @classmethod
    def parse(cls, raw: bytes, path: str, offset: int = 0) -> "KernelDumpHeader":
        """Decode a header; ``path``/``offset`` only label errors.

        Raises :class:`DumpFormatError` for a short buffer, an unknown magic,
        a version other than 4 (older headers have another layout) or a
        block size below 512.  A parity mismatch is kept in
        :attr:`parity_ok`: savecore refuses such headers without ``-f`` but
        the dump behind them may still be fine.
        """
        if len(raw) < KDH_SIZE:
            raise DumpFormatError(path, f"truncated kerneldumpheader: {len(raw)} of {KDH_SIZE} bytes", offset,
                                  "kerneldumpheader")
        fields = _KDH.unpack_from(raw)
        magic = fields[0].rstrip(b"\0")
        if magic not in _MAGICS:
            raise DumpFormatError(path, f"not a kerneldumpheader: magic {fields[0]!r}", offset,
                                  "kerneldumpheader.magic")
        hdr = cls(
            magic=magic,
            architecture=_cstr(fields[1]),
            version=fields[2],
            architectureversion=fields[3],
            dumplength=fields[4],
            dumptime=fields[5],
            dumpkeysize=fields[6],
            blocksize=fields[7],
            hostname=_cstr(fields[8]),
            versionstring=_cstr(fields[9]),
            panicstring=_cstr(fields[10]),
            compression=fields[11],
            dumpextent=fields[12],
            parity=fields[14],
            parity_ok=compute_parity(raw) == 0,
        )
        if hdr.version != KERNELDUMPVERSION:
            raise DumpFormatError(
                path,
                f"kerneldumpheader version {hdr.version} is not supported (kvm-vol reads version {KERNELDUMPVERSION})",
                offset + 32, "kerneldumpheader.version")
        if hdr.blocksize < KDH_SIZE:
            raise DumpFormatError(
                path, f"block size {hdr.blocksize} is smaller than the {KDH_SIZE}-byte header",
                offset + 60, "kerneldumpheader.blocksize")
        return hdr

    def pack(self) -> bytes:
        """The 512 bytes of this header with a correct parity word (fields truncated to fit)."""

        def enc(text: str, size: int) -> bytes:
            return text.encode("utf-8")[:size - 1]

        raw = bytearray(_KDH.pack(
            self.magic, enc(self.architecture, 12), self.version, self.architectureversion,
            self.dumplength, self.dumptime, self.dumpkeysize, self.blocksize,
            enc(self.hostname, 64), enc(self.versionstring, 192), enc(self.panicstring, 175),
            self.compression, self.dumpextent, b"", 0,
        ))
        struct.pack_into(">I", raw, _PARITY_OFFSET, compute_parity(raw))
        return bytes(raw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["magic"] = self.magic.decode("ascii")
        d["kind"] = self.kind
        d["compression_name"] = COMPRESSION_NAMES.get(self.compression, f"unknown ({self.compression})")
        d["dump_offset"] = self.dump_offset
        return d


#: ``KERNELDUMP_IV_MAX_SIZE`` and the ``kdk_encryption`` values (KERNELDUMP_ENC_*).
KERNELDUMP_IV_MAX_SIZE = 32
ENCRYPTION_NAMES = {0: "none", 1: "AES-256-CBC", 2: "ChaCha20"}
# struct kerneldumpkey (packed, dump byte order): kdk_encryption, kdk_iv,
# kdk_encryptedkeysize, then the encrypted key itself.
_KDK = struct.Struct(f">B{KERNELDUMP_IV_MAX_SIZE}sI")


@dataclass
class KernelDumpKey:
    """The key section ``dumpon -k`` puts after the leader: cipher, IV, the RSA-encrypted key.

    Only the private RSA key (decryptcore(8)) can open the dump; kvm-vol
    just says which cipher and how big the encrypted key is.
    """

    encryption: int
    iv: bytes
    encryptedkeysize: int

    @property
    def cipher(self) -> str:
        return ENCRYPTION_NAMES.get(self.encryption, f"unknown cipher {self.encryption}")

    @classmethod
    def parse(cls, raw: bytes) -> Optional["KernelDumpKey"]:
        """Decode the start of a key section; None if it is too short to hold one."""
        if len(raw) < _KDK.size:
            return None
        encryption, iv, size = _KDK.unpack_from(raw)
        return cls(encryption, iv, size)

    def pack(self, encrypted_key: bytes) -> bytes:
        return _KDK.pack(self.encryption, self.iv, len(encrypted_key)) + encrypted_key


def describe_unreadable(hdr: KernelDumpHeader, key: Optional[KernelDumpKey] = None) -> Optional[str]:
    """Why the dump behind ``hdr`` cannot be read as memory, or None if it can.

    Text dumps are tar archives of ddb output, compressed dumps are a gzip or
    zstd stream and encrypted dumps need their key; each message says what to
    do instead.  ``key`` (the parsed key section) names the cipher.
    """
    if hdr.kind == "text":
        return ("this is a textdump (ddb output written backwards as a tar archive, not a memory image); "
                "list and extract its files with 'kvm-vol textdump list|extract FILE'")
    if hdr.dumpkeysize:
        cipher = f" with {key.cipher}" if key is not None else ""
        return (f"the dump is encrypted (dumpkeysize {hdr.dumpkeysize}){cipher}; "
                "decrypt it with decryptcore(8) and the private key given to dumpon -k first")
    if hdr.compression:
        name = COMPRESSION_NAMES.get(hdr.compression, f"unknown method {hdr.compression}")
        if hdr.compression in COMPRESSION_NAMES:
            return (f"the dump is compressed ({name}); open the file itself (kvm_vol.formats.open_dump, "
                    "vol -f), which reads it through a decompressed copy")
        return (f"the dump is compressed ({name}), a method kvm-vol and savecore(8) do not know; "
                "only gzip (1) and zstd (2) exist")
    return None
