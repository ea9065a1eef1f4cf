"""The xsproto image record: the negotiated page count, carried in the xl header.

Restoring a domain that had extra pages granted fails unless its limit is raised before
the libxc stream repopulates memory, and the JSON config cannot say so (libxl derives
the limit from target_memkb alone). So the record travels in the xl header's optional
data, after the config, where stock xl 4.17 skips it and a restore filter can act on it
before any libxl byte flows.

Byte layout (little-endian, no padding)::

    0   8  magic  b"XSPROTO\\x00"
    8   4  u32 version (1)
    12  4  u32 payload length N (at most MAX_PAYLOAD)
    16  N  payload: compact JSON of ImageRecord
    16+N 4 u32 zlib.crc32 of bytes 0 .. 16+N
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from xsproto import fields
from xsproto.errors import ImageError
from xsproto.fields import Const, Int, Nullable, Text
from xsproto.grant import Grant
from xsproto.stream.xl_header import CONFIG_OFFSET, XlHeader
from xsproto.values import DOMID_MAX, PAGES_MAX

RECORD_MAGIC = b"XSPROTO\x00"
RECORD_VERSION: Final = 1
MAX_PAYLOAD = 64 << 10
"""The payload is a few hundred bytes; anything near this is corruption."""

_PREFIX = struct.Struct("<8sII")
_CRC = struct.Struct("<I")

_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
Pages = Annotated[int, Int(0, PAGES_MAX)]


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """What the restore side needs to raise the new domain's limit in time.

    ``max_pages`` is the limit to set before the libxc stream flows; it covers the
    domain's own pages (``base_pages``) and the pages granted through negotiation.
    Name and uuid tie the record to the domain config it travels with.
    """

    version: Annotated[Literal[1], Const(RECORD_VERSION)] = RECORD_VERSION
    domain_name: Annotated[str, Text(min_length=1)]
    domain_uuid: Annotated[str | None, Nullable(Text(pattern=_UUID_PATTERN))] = None
    source_domid: Annotated[int, Int(0, DOMID_MAX)]
    base_pages: Pages
    granted_pages: Pages
    max_pages: Pages

    def __post_init__(self) -> None:
        fields.check(self)
        if self.max_pages != self.grant.max_pages:
            raise ValueError(f"max_pages {self.max_pages} is not base_pages "
                             f"{self.base_pages} + granted_pages {self.granted_pages}")

    @property
    def grant(self) -> Grant:
        return Grant(self.base_pages, self.granted_pages)

    def to_json(self) -> dict[str, object]:
        """The record as a JSON object, the payload's form (data/schemas/image-record)."""
        return fields.dump(self)


def encode_record(record: ImageRecord) -> bytes:
    """Frame a record: magic, version, length, JSON payload, CRC32."""
    payload = json.dumps(record.to_json(), separators=(",", ":")).encode()
    framed = _PREFIX.pack(RECORD_MAGIC, RECORD_VERSION, len(payload)) + payload
    return framed + _CRC.pack(zlib.crc32(framed))


def decode_record(data: bytes, offset: int = 0) -> tuple[ImageRecord, int]:
    """Decode the record at the start of ``data``; return it and its framed size.

    ``offset`` is where ``data`` starts in the image, so errors point into the file.
    """
    if len(data) < _PREFIX.size:
        raise ImageError(f"truncated xsproto record: {len(data)} bytes, header needs "
                         f"{_PREFIX.size}", offset=offset)
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise ImageError(f"bad xsproto record magic {magic!r}", offset=offset)
    if version != RECORD_VERSION:
        raise ImageError(f"unknown xsproto record version {version} (this build reads "
                         f"{RECORD_VERSION})", offset=offset + 8)
    end = _PREFIX.size + length
    if length > MAX_PAYLOAD or end + _CRC.size > len(data):
        raise ImageError(f"bad xsproto record length {length}: {len(data) - _PREFIX.size} "
                         f"bytes follow the record header", offset=offset + 12)
    (stored,) = _CRC.unpack_from(data, end)
    computed = zlib.crc32(data[:end])
    if stored != computed:
        raise ImageError(f"xsproto record checksum mismatch: stored 0x{stored:08x}, "
                         f"computed 0x{computed:08x}", offset=offset + end)
    try:
        record = fields.load(ImageRecord, json.loads(data[_PREFIX.size:end]))
    except (ValueError, RecursionError) as exc:
        raise ImageError(f"invalid xsproto record payload: {exc}",
                         offset=offset + _PREFIX.size) from exc
    return record, end + _CRC.size


def _locate(header: XlHeader) -> list[tuple[int, int, ImageRecord]]:
    """(start, end, record) of each xsproto record in the extra optional data.

    Other tools may put their own data there too; only our magic starts a record, and
    a record that starts with it but does not decode is an error, not someone else's.
    """
    extra = header.extra_optional_data
    base = CONFIG_OFFSET + len(header.config or b"")
    found: list[tuple[int, int, ImageRecord]] = []
    start = extra.find(RECORD_MAGIC)
    while start >= 0:
        record, size = decode_record(extra[start:], base + start)
        found.append((start, start + size, record))
        start = extra.find(RECORD_MAGIC, start + size)
    return found


def find_record(header: XlHeader) -> ImageRecord | None:
    """The header's xsproto record, or None for an image saved without xsproto."""
    found = _locate(header)
    if len(found) > 1:
        raise ImageError(f"{len(found)} xsproto records in one xl header",
                         offset=CONFIG_OFFSET + len(header.config or b"") + found[1][0])
    return found[0][2] if found else None


def foreign_optional_data(header: XlHeader) -> bytes:
    """The header's extra optional data minus any xsproto record, kept in order."""
    extra = header.extra_optional_data
    kept: list[bytes] = []
    position = 0
    for start, end, _ in _locate(header):
        kept.append(extra[position:start])
        position = end
    kept.append(extra[position:])
    return b"".join(kept)


def _identity(config: Mapping[str, Any]) -> tuple[object, object]:
    c_info = config.get("c_info")
    if not isinstance(c_info, Mapping):
        return None, None
    return c_info.get("name"), c_info.get("uuid")


def record_for_config(config: Mapping[str, Any], *, source_domid: int,
                      grant: Grant) -> ImageRecord:
    """Build the record for the domain the config describes (name and uuid from c_info)."""
    name, uuid = _identity(config)
    if not isinstance(name, str) or not name:
        raise ImageError("domain config has no c_info.name", offset=CONFIG_OFFSET)
    return ImageRecord(domain_name=name, domain_uuid=uuid if isinstance(uuid, str) else None,
                       source_domid=source_domid, base_pages=grant.base_pages,
                       granted_pages=grant.granted_pages, max_pages=grant.max_pages)


def check_record_matches_config(record: ImageRecord, config: Mapping[str, Any]) -> None:
    """Refuse a record that was written for another domain than the config's.

    A record pasted onto the wrong image would raise some other domain's limit; the
    uuid is compared only when both sides have one.
    """
    name, uuid = _identity(config)
    same_uuid = (record.domain_uuid is None or not isinstance(uuid, str)
                 or uuid.lower() == record.domain_uuid.lower())
    if name != record.domain_name or not same_uuid:
        raise ImageError(
            f"record for a different domain: record names {record.domain_name!r} "
            f"(uuid {record.domain_uuid}), config names {name!r} (uuid {uuid})")
