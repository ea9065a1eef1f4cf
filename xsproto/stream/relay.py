"""Relay an image or migration stream from one byte source to one sink, checking it on the way.

Save, restore and both ends of a migration do the same thing: read the xl header (and
act on it: add the record, or hold the stream until the new domain's limit is raised),
then pass every later byte through unchanged. The bytes after the header are walked
record by record while they pass, so a truncated or corrupt stream fails here with the
byte offset of the damage instead of as an opaque error from xl or libxc. Whatever
follows the libxl END record (xl's migration handshake) is copied without parsing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from xsproto import logs
from xsproto.errors import ImageError
from xsproto.grant import Grant
from xsproto.stream import copy_stream, libxl
from xsproto.stream.image_record import record_for_config
from xsproto.stream.reader import Readable, StreamReader, Writable, write_all
from xsproto.stream.walk import read_head, rewrite_header_with_record
from xsproto.stream.xl_header import FIXED_SIZE

log = logging.getLogger("xsproto.relay")

RELAY_CHUNK = 1 << 20
"""Bytes per read while relaying page data: few enough calls that the interpreter's
overhead per read vanishes next to the copy, even on the lab's emulated CPU."""
PROGRESS_INTERVAL = 2.0
"""Seconds between progress lines on stderr."""


class _Tee:
    """A Readable that forwards every byte it returns (or reads into) to ``dst`` at once."""

    def __init__(self, src: Readable, dst: Writable, progress: Callable[[int], None]) -> None:
        self._src = src
        self._readinto: Callable[[memoryview], int | None] | None = getattr(
            src, "readinto", None)
        self._dst = dst
        self._progress = progress
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        if data:
            write_all(self._dst, data)
            self.count += len(data)
            self._progress(self.count)
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        readinto = self._readinto
        if readinto is None:
            data = self._src.read(len(buffer))
            got = len(data)
            buffer[:got] = data
        else:
            got = readinto(buffer) or 0
        if got:
            write_all(self._dst, buffer[:got])
            self.count += got
            self._progress(self.count)
        return got


@dataclass(frozen=True)
class Relayed:
    """Byte counts of a relayed body: the v2 stream up to libxl END, and what followed."""

    stream_bytes: int
    trailing_bytes: int


def relay_body(src: Readable, dst: Writable, *, offset: int, what: str = "image",
               total: int | None = None) -> Relayed:
    """Pass the libxl stream after the xl header (``offset`` bytes in) through to ``dst``.

    Raises ImageError at the first malformed or missing byte: the sink then holds a
    prefix of the stream, and the caller must discard it (or let xl fail on it).
    """
    started = time.monotonic()
    last = started

    def progress(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL:
            last = now
            logs.event(log, "relay-progress", what=what, bytes=offset + done, total=total,
                       seconds=f"{now - started:.1f}")

    tee = _Tee(src, dst, progress)
    reader = StreamReader(tee, offset=offset, chunk=RELAY_CHUNK)
    libxl.read_header(reader)
    for _ in libxl.walk_records(reader):
        pass
    trailing = copy_stream(src, dst)
    return Relayed(stream_bytes=tee.count, trailing_bytes=trailing)


def add_grant(src: Readable, dst: Writable, grant: Grant | None, *,
                source_domid: int) -> int:
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
    body = relay_body(src, dst, offset=len(head.raw), what="save")
    return len(out) + body.stream_bytes + body.trailing_bytes
