"""libxl and libxc record walking: nesting, padding, bounded reads, broken streams."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsproto.errors import ImageError
from xsproto.stream import libxc, libxl, synthetic
from xsproto.stream.framing import Record
from xsproto.stream.reader import StreamReader


class Trickle:
    """A pipe-like source: short reads, no seek, and a record of the largest read."""

    def __init__(self, data: bytes, step: int = 5) -> None:
        self._src = io.BytesIO(data)
        self._step = step
        self.largest = 0

    def read(self, size: int = -1, /) -> bytes:
        self.largest = max(self.largest, size)
        return self._src.read(min(size, self._step) if size >= 0 else self._step)


def _walk(stream: bytes, chunk: int = 1 << 20) -> list[libxl.LibxlHeader | libxc.LibxcHeader
                                                    | Record]:
    reader = StreamReader(io.BytesIO(stream), chunk=chunk)
    return [libxl.read_header(reader), *libxl.walk_records(reader)]


def _names(items: list[libxl.LibxlHeader | libxc.LibxcHeader | Record]) -> list[str]:
    return [f"{i.layer} {i.name}" if isinstance(i, Record) else type(i).__name__
            for i in items]


def _libxl_with(*records: bytes) -> bytes:
    head = struct.pack(libxl.HDR_FORMAT, libxl.HDR_IDENT, 2, 0)
    return head + b"".join(records)


def test_walk_descends_into_libxc_and_resumes_libxl() -> None:
    items = _walk(synthetic.libxl_stream(page_batches=(2, 1)))
    assert _names(items) == [
        "LibxlHeader", "libxl LIBXC_CONTEXT", "LibxcHeader",
        "libxc X86_CPUID_POLICY", "libxc X86_MSR_POLICY", "libxc STATIC_DATA_END",
        "libxc PAGE_DATA", "libxc PAGE_DATA", "libxc X86_TSC_INFO", "libxc HVM_CONTEXT",
        "libxc HVM_PARAMS", "libxc END", "libxl EMULATOR_CONTEXT", "libxl END",
    ]
    libxc_header = items[2]
    assert isinstance(libxc_header, libxc.LibxcHeader)
    assert (libxc_header.version, libxc_header.domain_type_name) == (3, "x86 HVM")
    assert (libxc_header.xen_major, libxc_header.xen_minor) == (4, 17)
    pages = [i for i in items if isinstance(i, Record) and i.name == "PAGE_DATA"]
    assert [p.pfn_count for p in pages] == [2, 1]
    assert pages[0].length == 8 + 2 * 8 + 2 * 4096


def test_offsets_and_sizes_tile_the_stream() -> None:
    stream = synthetic.libxl_stream()
    items = _walk(stream)
    position = 0
    for item in items:
        assert item.offset == position
        position += item.size
    assert position == len(stream)


def test_walk_stops_at_libxl_end_leaving_the_rest_unread() -> None:
    src = io.BytesIO(synthetic.libxl_stream() + b"migration handshake")
    reader = StreamReader(src)
    libxl.read_header(reader)
    list(libxl.walk_records(reader))
    assert src.read() == b"migration handshake"


def test_page_data_is_read_in_bounded_chunks_from_a_pipe_like_source() -> None:
    src = Trickle(synthetic.libxl_stream(page_batches=(8,)), step=1000)
    reader = StreamReader(src, chunk=256)
    libxl.read_header(reader)
    records = [i for i in libxl.walk_records(reader) if isinstance(i, Record)]
    assert records[-1].name == "END"
    assert src.largest <= 256


def test_optional_libxc_records_are_skipped_like_libxc_does() -> None:
    stream = bytearray(synthetic.libxl_stream())
    optional = synthetic.record(libxc.REC_TYPE_OPTIONAL | 0x42, b"future")
    items = _walk(bytes(stream))
    end = next(i for i in items if isinstance(i, Record) and i.layer == "libxc"
               and i.name == "END")
    stream[end.offset:end.offset] = optional
    names = _names(_walk(bytes(stream)))
    assert "libxc OPTIONAL_0x80000042" in names


def _libxc_record_offset(stream: bytes, name: str) -> int:
    return next(i.offset for i in _walk(stream) if isinstance(i, Record) and i.name == name
                and i.layer == "libxc")


@pytest.mark.parametrize(
    ("mutate", "offset", "message"),
    [
        (lambda s: s[:8] + b"\0\0\0\3" + s[12:], 8, "unknown libxl stream version 3"),
        (lambda s: b"LibxlFmX" + s[8:], 0, "bad libxl stream ident"),
        (lambda s: s[:12] + b"\0\0\0\4" + s[16:], 12, "reserved libxl stream options"),
        (lambda s: s[:12] + b"\0\0\0\1" + s[16:], 12, "big-endian libxl"),
        (lambda s: s[:16] + struct.pack("=II", 9, 0) + s[24:], 16,
         "unknown libxl record type 0x00000009"),
        (lambda s: s[:16] + struct.pack("=II", 1, 8) + s[24:], 16,
         "LIBXC_CONTEXT record must be empty"),
        (lambda s: s[:24] + b"\0" * 8 + s[32:], 24, "bad libxc image header marker"),
        (lambda s: s[:36] + b"\0\0\0\4" + s[40:], 36, "unknown libxc stream version 4"),
        (lambda s: s[:40] + b"\0\2" + s[42:], 40, "reserved bits set in libxc image header"),
        (lambda s: s[:40] + b"\0\1" + s[42:], 40, "big-endian libxc"),
        (lambda s: s[:48] + struct.pack("=I", 3) + s[52:], 48, "unknown libxc domain type 0x3"),
        (lambda s: s[:52] + struct.pack("=H", 16) + s[54:], 52, "page shift 16"),
        (lambda s: s[:64] + struct.pack("=I", 0x77) + s[68:], 64,
         "unknown libxc record type 0x00000077"),
    ],
)
def test_bad_streams(mutate: Callable[[bytes], bytes], offset: int, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        _walk(mutate(synthetic.libxl_stream()))
    assert info.value.offset == offset


def test_bad_page_data_header() -> None:
    stream = bytearray(synthetic.libxl_stream(page_batches=(1,)))
    at = _libxc_record_offset(bytes(stream), "PAGE_DATA")
    stream[at + 8:at + 12] = struct.pack("=I", 600)  # more pfns than the record holds
    with pytest.raises(ImageError, match="cannot hold 600 pfns") as info:
        _walk(bytes(stream))
    assert info.value.offset == at


def test_page_data_shorter_than_its_header() -> None:
    stream = _libxl_with(synthetic.record(libxl.REC_TYPE_LIBXC_CONTEXT),
                         synthetic.libxc_stream()[:40],
                         synthetic.record(libxc.REC_TYPE_PAGE_DATA, b"\0\0\0\0"))
    with pytest.raises(ImageError, match="shorter than its header") as info:
        _walk(stream)
    assert info.value.offset == 16 + 8 + 40


def test_non_zero_padding_is_refused() -> None:
    stream = bytearray(synthetic.libxl_stream())
    at = _libxc_record_offset(bytes(stream), "HVM_CONTEXT")
    stream[at + 8 + 11] = 1  # first padding byte after the 11-byte body
    with pytest.raises(ImageError, match="non-zero padding after libxc HVM_CONTEXT") as info:
        _walk(bytes(stream))
    assert info.value.offset == at + 8 + 11


def test_non_empty_end_is_refused() -> None:
    stream = synthetic.libxl_stream()
    with pytest.raises(ImageError, match="libxl END record must be empty"):
        _walk(stream[:-8] + struct.pack("=II", 0, 8) + bytes(8))


def test_truncation_at_every_interesting_offset() -> None:
    stream = synthetic.libxl_stream(page_batches=(1, 1))
    cuts = set(range(0, _libxc_record_offset(stream, "PAGE_DATA") + 24))
    for item in _walk(stream):
        cuts |= {item.offset + d for d in (1, 4, 7, 8, 9, 15, 16, item.size - 1)}
    for cut in sorted(c for c in cuts if c < len(stream)):
        with pytest.raises(ImageError, match="truncated"):
            _walk(stream[:cut])


def test_truncated_page_data_names_the_record() -> None:
    stream = synthetic.libxl_stream(page_batches=(2,))
    at = _libxc_record_offset(stream, "PAGE_DATA")
    with pytest.raises(ImageError, match=f"PAGE_DATA record body \\(record at byte {at}\\)"):
        _walk(stream[:at + 3000])


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_the_libxl_header_raise_only_image_error(data: bytes) -> None:
    with contextlib.suppress(ImageError):
        _walk(_libxl_with(data), chunk=64)


@settings(max_examples=200)
@given(st.integers(0, 2000), st.integers(0, 255))
def test_single_byte_corruption_raises_only_image_error(position: int, value: int) -> None:
    stream = bytearray(synthetic.libxl_stream(page_batches=(0,)))
    stream[position % len(stream)] = value
    with contextlib.suppress(ImageError):
        _walk(bytes(stream))
