"""The libxl migration stream v2 (docs/specs/libxl-migration-stream.pandoc).

It follows the xl header and wraps the libxc stream: a LIBXC_CONTEXT record is followed
directly by the whole libxc stream, after whose END the libxl records resume until the
libxl END. Constants mirror Xen's ``xen.migration.libxl``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from xsproto.errors import ImageError
from xsproto.stream import libxc
from xsproto.stream.framing import Record, read_record_header, require_empty, skip_record_body
from xsproto.stream.reader import StreamReader

HDR_FORMAT = "!QII"
HDR_SIZE = struct.calcsize(HDR_FORMAT)
HDR_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
HDR_VERSION = 2
HDR_OPT_BE = 1 << 0
HDR_OPT_LEGACY = 1 << 1
HDR_OPT_RESZ_MASK = 0xFFFC

REC_TYPE_END = 0x00000000
REC_TYPE_LIBXC_CONTEXT = 0x00000001
REC_TYPE_EMULATOR_XENSTORE_DATA = 0x00000002
REC_TYPE_EMULATOR_CONTEXT = 0x00000003
REC_TYPE_CHECKPOINT_END = 0x00000004
REC_TYPE_CHECKPOINT_STATE = 0x00000005

REC_TYPE_NAMES = {
    REC_TYPE_END: "END",
    REC_TYPE_LIBXC_CONTEXT: "LIBXC_CONTEXT",
    REC_TYPE_EMULATOR_XENSTORE_DATA: "EMULATOR_XENSTORE_DATA",
    REC_TYPE_EMULATOR_CONTEXT: "EMULATOR_CONTEXT",
    REC_TYPE_CHECKPOINT_END: "CHECKPOINT_END",
    REC_TYPE_CHECKPOINT_STATE: "CHECKPOINT_STATE",
}


@dataclass(frozen=True)
class LibxlHeader:
    """The libxl stream header."""

    offset: int
    version: int
    options: int

    @property
    def legacy(self) -> bool:
        """True when libxl converted a legacy (pre-v2) stream on the fly."""
        return bool(self.options & HDR_OPT_LEGACY)

    @property
    def size(self) -> int:
        return HDR_SIZE


def read_header(reader: StreamReader) -> LibxlHeader:
    """Read and check the libxl stream header."""
    offset = reader.offset
    ident, version, options = struct.unpack(
        HDR_FORMAT, reader.read_exact(HDR_SIZE, "libxl stream header"))
    if ident != HDR_IDENT:
        raise ImageError(f"bad libxl stream ident 0x{ident:016x} (expected 'LibxlFmt')",
                         offset=offset)
    if version != HDR_VERSION:
        raise ImageError(f"unknown libxl stream version {version}", offset=offset + 8)
    if options & HDR_OPT_RESZ_MASK:
        raise ImageError(f"reserved libxl stream options 0x{options:x}", offset=offset + 12)
    if options & HDR_OPT_BE:
        raise ImageError("big-endian libxl stream is not supported", offset=offset + 12)
    return LibxlHeader(offset, version, options)


def walk_records(reader: StreamReader) -> Iterator[libxc.LibxcHeader | Record]:
    """Yield the records after the libxl header, descending into libxc streams.

    Stops after the libxl END record: in a live migration xl's own handshake follows,
    which is none of this walker's business.
    """
    while True:
        offset, rtype, length = read_record_header(reader, "libxl")
        name = REC_TYPE_NAMES.get(rtype)
        if name is None:
            raise ImageError(f"unknown libxl record type 0x{rtype:08x}", offset=offset)
        record = Record("libxl", offset, rtype, name, length)
        if rtype in (REC_TYPE_END, REC_TYPE_LIBXC_CONTEXT):
            require_empty(record)
        else:
            skip_record_body(reader, record)
        yield record
        if rtype == REC_TYPE_END:
            return
        if rtype == REC_TYPE_LIBXC_CONTEXT:
            yield from libxc.walk(reader)
