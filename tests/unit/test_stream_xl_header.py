"""The xl save header: exact round trips and every way a header can be broken."""

from __future__ import annotations

import contextlib
import io
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xsproto.errors import ImageError
from xsproto.stream import synthetic
from xsproto.stream.xl_header import (
    CONFIG_OFFSET,
    FIXED_SIZE,
    MAGIC,
    MANDATORY_FLAG_JSON,
    MANDATORY_FLAG_STREAMV2,
    XlHeader,
    read_header,
)


def _fixed(byteorder: int = 0x01020304, mandatory: int = 3, optional_len: int = 0) -> bytes:
    return MAGIC + struct.pack("=IIII", byteorder, mandatory, 0, optional_len)


def test_round_trip_is_byte_exact_and_consumes_only_the_header() -> None:
    header = synthetic.xl_header(foreign=b"someone-else")
    src = io.BytesIO(header.to_bytes() + b"LibxlFmt...")
    parsed, raw = read_header(src)
    assert parsed == header
    assert raw == header.to_bytes()
    assert src.read() == b"LibxlFmt..."
    assert parsed.size == len(raw)


def test_layout_matches_what_xl_writes() -> None:
    header = synthetic.xl_header()
    raw = header.to_bytes()
    assert raw[:32] == MAGIC
    byteorder, mandatory, optional_flags, optional_len = struct.unpack_from("=IIII", raw, 32)
    assert (byteorder, mandatory, optional_flags) == (0x01020304, 3, 0)
    assert optional_len == len(raw) - FIXED_SIZE == 4 + len(header.config or b"")
    assert raw[CONFIG_OFFSET:].endswith(b"}\0")


def test_config_json_strips_the_nul() -> None:
    header = synthetic.xl_header(synthetic.domain_config("vm1"))
    config = header.config_json()
    assert config is not None
    assert config["c_info"]["name"] == "vm1"


def test_header_without_optional_data() -> None:
    parsed, _ = read_header(io.BytesIO(_fixed(mandatory=MANDATORY_FLAG_STREAMV2)))
    assert parsed.config is None
    assert parsed.config_json() is None
    assert parsed.optional_data == b""


def test_extra_data_gets_an_empty_config_slot_when_there_is_none() -> None:
    bare = XlHeader(MANDATORY_FLAG_STREAMV2, 0, None)
    with_extra = bare.with_extra_optional_data(b"xyz")
    assert with_extra.optional_data == b"\0\0\0\0xyz"
    parsed, _ = read_header(io.BytesIO(with_extra.to_bytes()))
    assert parsed == with_extra


def test_extra_data_replaces_previous_extra_data_and_keeps_flags() -> None:
    header = synthetic.xl_header(foreign=b"old")
    new = header.with_extra_optional_data(b"new")
    assert new.extra_optional_data == b"new"
    assert new.config == header.config
    assert new.mandatory_flags == MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2


def test_extra_data_without_config_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="config slot"):
        XlHeader(3, 0, None, b"x")


@pytest.mark.parametrize(
    ("raw", "offset", "message"),
    [
        (b"Xen saved domain, xl format\n \0 X" + bytes(16), 0, "bad magic"),
        (MAGIC[:10], 0, "truncated xl header magic"),
        (_fixed()[:40], 32, "truncated xl header"),
        (_fixed(byteorder=0x04030201), 32, "other byte order"),
        (_fixed(byteorder=7), 32, "corrupt"),
        (_fixed(mandatory=0x7), 36, "unknown mandatory flags 0x4"),
        (_fixed(optional_len=1 << 30), 44, "exceeds"),
        (_fixed(optional_len=10) + b"\4\0\0\0", 48, "truncated xl optional data"),
        (_fixed(optional_len=2) + b"\0\0", 48, "cannot hold the config length"),
        (_fixed(optional_len=6) + struct.pack("=I", 3) + b"{}", 48, "runs past"),
    ],
)
def test_bad_headers(raw: bytes, offset: int, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        read_header(io.BytesIO(raw))
    assert info.value.offset == offset


@pytest.mark.parametrize("config", [b"{not json\0", b"[1, 2]\0", b"\xff\xfe\0"])
def test_bad_config_json(config: bytes) -> None:
    header = XlHeader(3, 0, config)
    with pytest.raises(ImageError, match="domain config") as info:
        header.config_json()
    assert info.value.offset == CONFIG_OFFSET


def test_truncation_anywhere_in_the_header_is_an_image_error() -> None:
    raw = synthetic.xl_header(foreign=b"abc").to_bytes()
    for cut in range(len(raw)):
        with pytest.raises(ImageError, match="truncated"):
            read_header(io.BytesIO(raw[:cut]))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_image_error(data: bytes) -> None:
    with contextlib.suppress(ImageError):
        read_header(io.BytesIO(data))


@given(st.binary(max_size=120), st.integers(0, 3))
def test_arbitrary_bytes_after_the_magic_raise_only_image_error(
    data: bytes, mandatory: int
) -> None:
    raw = MAGIC + struct.pack("=II", 0x01020304, mandatory) + data
    try:
        header, consumed = read_header(io.BytesIO(raw))
    except ImageError:
        return
    assert header.to_bytes() == consumed
