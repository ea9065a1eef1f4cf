"""Offset-counting reads from a forward-only byte source.

Save images arrive on pipes as often as from files (``xl migrate`` streams them over
ssh), so nothing here seeks: bodies are skipped by reading and discarding bounded
chunks, and every error names the byte offset where the damaged item starts.
"""

from __future__ import annotations

from typing import Protocol

from xsproto.errors import ImageError

CHUNK_SIZE = 1 << 20
"""Largest single read: page data is skipped in pieces of at most this many bytes."""


class Readable(Protocol):
    """Anything with ``read(n)``: files, pipes, sockets' makefile(), BytesIO."""

    def read(self, size: int = ..., /) -> bytes: ...


class StreamReader:
    """Reads exact amounts and tracks the absolute offset, for error messages."""

    def __init__(self, src: Readable, *, offset: int = 0, chunk: int = CHUNK_SIZE) -> None:
        if chunk <= 0:
            raise ValueError(f"chunk size must be positive, got {chunk}")
        self._src = src
        self._chunk = chunk
        self.offset = offset

    def read_exact(self, size: int, what: str) -> bytes:
        """Read exactly ``size`` bytes (small items only: headers, sub-headers)."""
        start = self.offset
        parts: list[bytes] = []
        got = 0
        while got < size:
            data = self._src.read(min(size - got, self._chunk))
            if not data:
                raise ImageError(
                    f"truncated {what}: expected {size} bytes, got {got}", offset=start
                )
            parts.append(data)
            got += len(data)
            self.offset += len(data)
        return b"".join(parts)

    def skip(self, size: int, what: str) -> None:
        """Consume ``size`` bytes without keeping them, in bounded chunks."""
        start = self.offset
        left = size
        while left:
            data = self._src.read(min(left, self._chunk))
            if not data:
                raise ImageError(
                    f"truncated {what}: expected {size} bytes, got {size - left}",
                    offset=start,
                )
            left -= len(data)
            self.offset += len(data)

    def drain(self) -> int:
        """Consume everything left and return how many bytes that was."""
        total = 0
        while data := self._src.read(self._chunk):
            total += len(data)
        self.offset += total
        return total
