"""Relay an image or migration stream from one byte source to one sink, checking it on the way.

Save, restore and both ends of a migration do the same thing: read the xl header (and
act on it: add the record, or hold the stream until the new domain's limit is raised),
then pass every later byte through unchanged. The bytes after the header are walked
record by record while they pass, so a truncated or corrupt stream fails here with the
byte offset of the damage instead of as an opaque error from xl or libxc. Whatever
follows the libxl END record (xl's migration handshake) is copied without parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

from xsproto.errors import ImageError
from xsproto.grant import Grant
from xsproto.progress import Progress, no_progress
from xsproto.stream import copy_stream, libxl
from xsproto.stream.image_record import record_for_config
from xsproto.stream.reader import Counted, Readable, StreamReader, Writable, write_all
from xsproto.stream.walk import read_head, rewrite_header_with_record
from xsproto.stream.xl_header import FIXED_SIZE

RELAY_CHUNK = 1 << 20
"""Bytes per read while relaying page data: few enough calls that the interpreter's
overhead per read vanishes next to the copy, even on the lab's emulated CPU."""

@dataclass(frozen=True)
class Relayed:
    """Byte counts of a relayed body: the v2 stream up to libxl END, and what followed."""

    stream_bytes: int
    trailing_bytes: int


def relay_body(src: Readable, dst: Writable, *, offset: int,
               progress: Progress = no_progress) -> Relayed:
    """Pass the libxl stream after the xl header (``offset`` bytes in) through to ``dst``.

    Raises ImageError at the first malformed or missing byte: the sink then holds a
    prefix of the stream, and the caller must discard it (or let xl fail on it).
    """
    tee = Counted(src, dst=dst, start=offset, progress=progress)
    reader = StreamReader(tee, offset=offset, chunk=RELAY_CHUNK)
    libxl.read_header(reader)
    for _ in libxl.walk_records(reader):
        pass
    trailing = copy_stream(src, dst)
    return Relayed(stream_bytes=tee.count, trailing_bytes=trailing)


def add_grant(src: Readable, dst: Writable, grant: Grant | None, *, source_domid: int,
              progress: Progress = no_progress) -> int:
    """Copy an image of domain ``source_domid`` from ``src`` to ``dst``, adding ``grant``
    to the xl header.

    Returns the number of bytes written. Without a grant the image passes unchanged.
    """
    head = read_head(src)
    out = head.raw
    if grant is not None:
        config = head.header.config_json()
        if config is None:
            raise ImageError("no domain config in the xl header to tie the record to",
                             offset=FIXED_SIZE)
        record = record_for_config(config, source_domid=source_domid, grant=grant)
        out = rewrite_header_with_record(head.header, record)
    write_all(dst, out)
    body = relay_body(src, dst, offset=len(head.raw), progress=progress)
    return len(out) + body.stream_bytes + body.trailing_bytes
