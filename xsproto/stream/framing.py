"""Record framing shared by the libxl and libxc v2 streams.

Both specs use the same record shape: native-endian u32 type, u32 body length, the
body, then zero padding to the next multiple of 8 bytes. Bodies are skipped, not kept:
a PAGE_DATA record is megabytes of guest memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from xsproto.errors import ImageError
from xsproto.stream.reader import StreamReader

RH_FORMAT = "=II"
RH_SIZE = struct.calcsize(RH_FORMAT)
ALIGNMENT = 8

Layer = Literal["libxl", "libxc"]


def padded(length: int) -> int:
    """Body length rounded up to the 8-byte record alignment."""
    return (length + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


@dataclass(frozen=True)
class Record:
    """One record of either stream, as found while walking an image.

    ``pfn_count`` is the number of pfns a libxc PAGE_DATA record carries (None for
    every other record): it is what the restore side populates.
    """

    layer: Layer
    offset: int
    type: int
    name: str
    length: int
    pfn_count: int | None = None

    @property
    def size(self) -> int:
        """Bytes the record occupies in the stream: header, body and padding."""
        return RH_SIZE + padded(self.length)


def read_record_header(reader: StreamReader, layer: Layer) -> tuple[int, int, int]:
    """Read a record header; return (offset, type, length)."""
    offset = reader.offset
    rtype, length = struct.unpack(RH_FORMAT, reader.read_exact(RH_SIZE, f"{layer} record header"))
    return offset, rtype, length


def skip_padding(reader: StreamReader, record: Record) -> None:
    """Consume the record's padding, which the specs require to be zero."""
    size = padded(record.length) - record.length
    if size:
        where = reader.offset
        pad = reader.read_exact(size, f"{record.layer} {record.name} padding")
        if pad.count(0) != size:
            raise ImageError(f"non-zero padding after {record.layer} {record.name} record "
                             f"at byte {record.offset}", offset=where)


def skip_record_body(reader: StreamReader, record: Record, consumed: int = 0) -> None:
    """Skip the rest of a record's body (after ``consumed`` bytes) and its padding."""
    reader.skip(record.length - consumed,
                f"{record.layer} {record.name} record body (record at byte {record.offset})")
    skip_padding(reader, record)


def require_empty(record: Record) -> None:
    """END-like records carry no body; a length means the stream is corrupt."""
    if record.length:
        raise ImageError(f"{record.layer} {record.name} record must be empty, has length "
                         f"{record.length}", offset=record.offset)
