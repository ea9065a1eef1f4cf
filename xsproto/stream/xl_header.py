"""The xl save header: the part of a save image or migration stream that xl itself owns.

Layout (tools/xl/xl_saverestore.c, mirrored by ``xen.migration.xl``): a 32-byte magic,
four native-endian u32 (byteorder, mandatory_flags, optional_flags, optional_data_len),
then ``optional_data_len`` bytes of optional data: a u32 config length and the JSON domain
config. xl reads that config and ignores whatever optional data follows it, which is
where xsproto carries its own record without breaking stock xl 4.17.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from typing import Any

from xsproto.errors import ImageError
from xsproto.stream.reader import Readable, StreamReader

MAGIC = b"Xen saved domain, xl format\n \0 \r"
HEADER_FORMAT = "=IIII"
BYTEORDER_VALUE = 0x01020304

MANDATORY_FLAG_JSON = 1 << 0
MANDATORY_FLAG_STREAMV2 = 1 << 1
MANDATORY_FLAGS_KNOWN = MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2

MANDATORY_FLAGS_OFFSET = len(MAGIC) + 4
"""Where mandatory_flags is, after the magic and byteorder (36)."""
FIXED_SIZE = len(MAGIC) + struct.calcsize(HEADER_FORMAT)
"""Bytes before the optional data (48)."""

CONFIG_LEN_FORMAT = "=I"
CONFIG_OFFSET = FIXED_SIZE + struct.calcsize(CONFIG_LEN_FORMAT)
"""Where the JSON config starts in the image (52)."""

MAX_OPTIONAL_DATA = 64 << 20
"""xl mallocs the whole optional data; a larger length is corruption, not a config."""

_BYTEORDER_SWAPPED = int.from_bytes(BYTEORDER_VALUE.to_bytes(4, "little"), "big")


@dataclass(frozen=True)
class XlHeader:
    """A parsed xl header; ``to_bytes()`` reproduces the original bytes exactly.

    ``config`` is the config slot as stored (JSON plus its NUL), or None when the
    optional data is empty. ``extra_optional_data`` is whatever follows the config.
    """

    mandatory_flags: int
    optional_flags: int
    config: bytes | None
    extra_optional_data: bytes = b""
    byteorder: int = BYTEORDER_VALUE

    def __post_init__(self) -> None:
        if self.config is None and self.extra_optional_data:
            # xl would read the first four bytes of extra data as a config length.
            raise ValueError("extra optional data needs a config slot (use config=b'')")

    @property
    def optional_data(self) -> bytes:
        """The optional data exactly as it goes on the wire."""
        if self.config is None:
            return b""
        length = struct.pack(CONFIG_LEN_FORMAT, len(self.config))
        return length + self.config + self.extra_optional_data

    @property
    def size(self) -> int:
        """Length of the serialized header, i.e. where the libxl stream starts."""
        return FIXED_SIZE + len(self.optional_data)

    def to_bytes(self) -> bytes:
        """Serialize in the native byte order, as xl writes it."""
        optional = self.optional_data
        fixed = struct.pack(
            HEADER_FORMAT, self.byteorder, self.mandatory_flags, self.optional_flags,
            len(optional),
        )
        return MAGIC + fixed + optional

    def with_extra_optional_data(self, extra: bytes) -> XlHeader:
        """Replace the data after the config; an empty config slot is added if needed."""
        config = b"" if self.config is None else self.config
        return replace(self, config=config, extra_optional_data=extra)

    def config_json(self) -> dict[str, Any] | None:
        """The libxl domain config as a dict, or None if the image carries none."""
        if not self.config:
            return None
        text = self.config[:-1] if self.config.endswith(b"\0") else self.config
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd nesting
            raise ImageError(f"domain config is not valid JSON: {exc}",
                             offset=CONFIG_OFFSET) from exc
        if not isinstance(value, dict):
            raise ImageError("domain config is not a JSON object", offset=CONFIG_OFFSET)
        return value


def read_header(src: Readable) -> tuple[XlHeader, bytes]:
    """Read exactly the xl header from ``src`` and return it with its raw bytes.

    Nothing past the header is consumed, so a filter can rewrite the header and then
    copy the rest of the same file object byte for byte.
    """
    reader = StreamReader(src)
    magic = reader.read_exact(len(MAGIC), "xl header magic")
    if magic != MAGIC:
        raise ImageError(f"not an xl save image: bad magic {magic!r}", offset=0)
    fixed = reader.read_exact(struct.calcsize(HEADER_FORMAT), "xl header")
    byteorder, mandatory, optional_flags, optional_len = struct.unpack(HEADER_FORMAT, fixed)
    if byteorder != BYTEORDER_VALUE:
        why = ("written on a host of the other byte order" if byteorder == _BYTEORDER_SWAPPED
               else "corrupt")
        raise ImageError(f"bad byte order marker 0x{byteorder:08x} ({why})",
                         offset=len(MAGIC))
    unknown = mandatory & ~MANDATORY_FLAGS_KNOWN
    if unknown:
        raise ImageError(f"unknown mandatory flags 0x{unknown:x} (xl would refuse)",
                         offset=len(MAGIC) + 4)
    if optional_len > MAX_OPTIONAL_DATA:
        raise ImageError(f"optional data length {optional_len} exceeds "
                         f"{MAX_OPTIONAL_DATA}", offset=len(MAGIC) + 12)
    optional = reader.read_exact(optional_len, "xl optional data")
    header = XlHeader(mandatory, optional_flags, *_split_optional_data(optional),
                      byteorder=byteorder)
    return header, magic + fixed + optional


def _split_optional_data(optional: bytes) -> tuple[bytes | None, bytes]:
    """Split optional data into (config slot, extra data) the way xl reads it."""
    if not optional:
        return None, b""
    size = struct.calcsize(CONFIG_LEN_FORMAT)
    if len(optional) < size:
        raise ImageError(f"optional data of {len(optional)} bytes cannot hold the config "
                         "length", offset=FIXED_SIZE)
    (config_len,) = struct.unpack_from(CONFIG_LEN_FORMAT, optional)
    if config_len > len(optional) - size:
        raise ImageError(f"config length {config_len} runs past the "
                         f"{len(optional) - size} bytes of optional data left",
                         offset=FIXED_SIZE)
    return optional[size:size + config_len], optional[size + config_len:]
