"""Whole-image helpers: summarize an image record by record, and filter a stream.

``summarize`` backs ``inspect-image``. The filter helpers serve the save and restore
hooks: they read only the xl header, rewrite or act on it, then copy everything after
it byte for byte (in a live migration xl's handshake follows the libxl stream on the
same pipe, so a filter must not parse or buffer past the header).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from xsproto.errors import ImageError
from xsproto.progress import Progress, no_progress
from xsproto.stream import libxl
from xsproto.stream.framing import Record
from xsproto.stream.image_record import (
    ImageRecord,
    check_record_matches_config,
    encode_record,
    find_record,
    foreign_optional_data,
)
from xsproto.stream.libxc import LibxcHeader
from xsproto.stream.reader import (
    CHUNK_SIZE,
    Counted,
    Readable,
    StreamReader,
    Writable,
    write_all,
)
from xsproto.stream.xl_header import (
    MANDATORY_FLAG_STREAMV2,
    MANDATORY_FLAGS_OFFSET,
    XlHeader,
    read_header,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class ConfigSummary:
    """The few fields of the libxl domain config that matter for page limits."""

    name: str | None
    uuid: str | None
    type: str | None
    max_memkb: int | None
    target_memkb: int | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConfigSummary:
        c_info = _mapping(config.get("c_info"))
        b_info = _mapping(config.get("b_info"))
        return cls(
            name=_typed(c_info.get("name"), str),
            uuid=_typed(c_info.get("uuid"), str),
            type=_typed(c_info.get("type"), str),
            max_memkb=_typed(b_info.get("max_memkb"), int),
            target_memkb=_typed(b_info.get("target_memkb"), int),
        )


@dataclass(frozen=True)
class ImageHead:
    """An image's xl header, its raw bytes and its xsproto record (None if stock)."""

    header: XlHeader
    raw: bytes
    record: ImageRecord | None

    @property
    def name(self) -> str | None:
        """The domain name in the saved config."""
        config = self.header.config_json()
        return ConfigSummary.from_config(config).name if config is not None else None


def read_head(src: Readable) -> ImageHead:
    """Read the xl header only, refusing what no reader of ours can pass on safely: a
    legacy stream, or a record written for another domain than the config's."""
    header, raw = read_header(src)
    if not header.mandatory_flags & MANDATORY_FLAG_STREAMV2:
        raise ImageError("legacy (pre-v2) migration stream is not supported",
                         offset=MANDATORY_FLAGS_OFFSET)
    record = find_record(header)
    config = header.config_json()
    if record is not None and config is not None:
        check_record_matches_config(record, config)
    return ImageHead(header, raw, record)


@dataclass(frozen=True)
class ImageSummary:
    """Everything ``inspect-image`` reports; page contents are never kept."""

    header: XlHeader
    config: ConfigSummary | None
    record: ImageRecord | None
    libxl_header: libxl.LibxlHeader
    libxc_headers: tuple[LibxcHeader, ...]
    records: tuple[Record, ...]
    end_offset: int
    """Byte just past the libxl END record: the length of a well-formed image."""
    trailing_bytes: int

    @property
    def record_counts(self) -> Counter[str]:
        """Number of records per ``"layer NAME"``, e.g. ``"libxc PAGE_DATA"``."""
        return Counter(f"{r.layer} {r.name}" for r in self.records)

    @property
    def pfn_count(self) -> int:
        """PFNs carried by all PAGE_DATA records: what the restore side populates."""
        return sum(r.pfn_count or 0 for r in self.records)


def summarize(src: Readable, *, chunk: int = CHUNK_SIZE,
              progress: Progress = no_progress) -> ImageSummary:
    """Walk a whole image from a forward-only source, in bounded memory, telling
    ``progress`` how many bytes were read."""
    src = Counted(src, progress=progress)
    head = read_head(src)
    config = head.header.config_json()
    reader = StreamReader(src, offset=len(head.raw), chunk=chunk)
    libxl_header = libxl.read_header(reader)
    libxc_headers: list[LibxcHeader] = []
    records: list[Record] = []
    for item in libxl.walk_records(reader):
        if isinstance(item, Record):
            records.append(item)
        else:
            libxc_headers.append(item)
    end_offset = reader.offset
    return ImageSummary(
        header=head.header,
        config=ConfigSummary.from_config(config) if config is not None else None,
        record=head.record,
        libxl_header=libxl_header,
        libxc_headers=tuple(libxc_headers),
        records=tuple(records),
        end_offset=end_offset,
        trailing_bytes=reader.drain(),
    )


def rewrite_header_with_record(header: XlHeader, record: ImageRecord) -> bytes:
    """The header's bytes carrying ``record`` (replacing any earlier xsproto record).

    Other optional data is kept and the mandatory flags are left alone, so stock xl
    still reads the image; only optional_data_len changes.
    """
    config = header.config_json()
    if config is not None:
        check_record_matches_config(record, config)
    extra = foreign_optional_data(header) + encode_record(record)
    return header.with_extra_optional_data(extra).to_bytes()


def copy_stream(src: Readable, dst: Writable, *, chunk: int = CHUNK_SIZE) -> int:
    """Copy ``src`` to ``dst`` until EOF, forwarding each piece as soon as it arrives.

    Uses ``read1`` where the source has it, and flushes after every write: in a live
    migration the peer waits for a reply after its last bytes, so waiting to fill a
    chunk or a buffer would deadlock. Returns the number of bytes copied.
    """
    read: Callable[[int], bytes] = getattr(src, "read1", src.read)
    total = 0
    while data := read(chunk):
        write_all(dst, data)
        total += len(data)
    return total


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _typed(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None
