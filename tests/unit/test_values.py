"""The value parsers: exact grammar, ranges, and errors that name the path."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xsproto.errors import ProtocolError
from xsproto.values import (
    DECISION_REASON_MAX_BYTES,
    DOMID_MAX,
    PAGES_MAX,
    REASON_MAX_BYTES,
    REQUEST_ID_MAX,
    U64_MAX,
    format_decimal,
    parse_choice,
    parse_decimal,
    parse_domid,
    parse_pages,
    parse_request_id,
    parse_text,
    show,
)

P = "/x/pages"
CANONICAL = re.compile(rb"0|[1-9][0-9]{0,19}")


@given(st.integers(min_value=0, max_value=U64_MAX))
def test_decimal_round_trips(n: int) -> None:
    assert parse_decimal(format_decimal(n), path=P) == n


@given(st.binary(max_size=40))
def test_any_non_canonical_bytes_are_rejected(raw: bytes) -> None:
    if CANONICAL.fullmatch(raw) and int(raw) <= U64_MAX:
        assert parse_decimal(raw, path=P) == int(raw)
    else:
        with pytest.raises(ProtocolError):
            parse_decimal(raw, path=P)


@given(st.text(max_size=25))
def test_any_text_that_int_might_accept_is_still_rejected(text: str) -> None:
    raw = text.encode("utf-8")
    if CANONICAL.fullmatch(raw) and int(raw) <= U64_MAX:
        return
    with pytest.raises(ProtocolError):
        parse_decimal(raw, path=P)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"-1",
        b"+1",
        b"-0",
        b" 1",
        b"1 ",
        b"\t1",
        b"1\n",
        b"01",
        b"00",
        b"0x10",
        b"1_0",
        b"1.0",
        b"1e3",
        b"1\x00",
        b"\x001",
        "١٢".encode(),
        "\uff11".encode(),
        "\U0001d7d7".encode(),
        b"\xff",
        b"18446744073709551616",
        b"99999999999999999999",
        b"1" * 21,
        b"0" * 21,
    ],
)
def test_malformed_decimals(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_decimal(raw, path=P)
    assert err.value.path == P
    assert str(err.value).startswith(f"{P}: ")


def test_int_alone_would_have_accepted_these() -> None:
    for raw in (b" 12 ", b"1_0", b"+5", "١٢".encode()):
        int(raw.decode())  # the hazard the grammar exists for
        with pytest.raises(ProtocolError):
            parse_decimal(raw, path=P)


def test_u64_edges() -> None:
    assert parse_decimal(b"18446744073709551615", path=P) == U64_MAX
    assert parse_decimal(b"0", path=P) == 0


def test_non_bytes_rejected() -> None:
    with pytest.raises(ProtocolError, match="expected bytes"):
        parse_decimal("12", path=P)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="expected bytes"):
        parse_text("ok", path=P)  # type: ignore[arg-type]


def test_error_shows_value_escaped() -> None:
    with pytest.raises(ProtocolError) as err:
        parse_decimal(b"1\x00\n", path=P)
    assert "b'1\\x00\\n'" in str(err.value)
    assert str(err.value).isprintable()


@pytest.mark.parametrize(
    ("parse", "lo", "hi"),
    [
        (parse_domid, 0, DOMID_MAX),
        (parse_pages, 0, PAGES_MAX),
        (parse_request_id, 1, REQUEST_ID_MAX),
    ],
)
def test_ranges(parse: Callable[..., int], lo: int, hi: int) -> None:
    assert parse(str(lo).encode(), path=P) == lo
    assert parse(str(hi).encode(), path=P) == hi
    with pytest.raises(ProtocolError, match="outside"):
        parse(str(hi + 1).encode(), path=P)
    if lo:
        with pytest.raises(ProtocolError, match="outside"):
            parse(str(lo - 1).encode(), path=P)


def test_request_id_zero_only_for_decisions() -> None:
    assert parse_request_id(b"0", path=P, allow_zero=True) == 0
    with pytest.raises(ProtocolError):
        parse_request_id(b"0", path=P)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=128))
def test_text_round_trips(text: str) -> None:
    assert parse_text(text.encode("ascii"), path=P) == text


@given(st.binary(max_size=200))
def test_text_rejects_anything_unprintable_or_long(raw: bytes) -> None:
    ok = len(raw) <= REASON_MAX_BYTES and all(0x20 <= b <= 0x7E for b in raw)
    if ok:
        assert parse_text(raw, path=P) == raw.decode("ascii")
    else:
        with pytest.raises(ProtocolError):
            parse_text(raw, path=P)


def test_text_limits() -> None:
    assert parse_text(b"", path=P) == ""
    assert parse_text(b"a" * 128, path=P) == "a" * 128
    with pytest.raises(ProtocolError, match="longer than 128"):
        parse_text(b"a" * 129, path=P)
    big = b"a" * DECISION_REASON_MAX_BYTES
    assert parse_text(big, path=P, max_bytes=DECISION_REASON_MAX_BYTES) == big.decode()
    for raw in (b"\x7f", b"a\nb", b"\x00", "é".encode(), b"\t"):
        with pytest.raises(ProtocolError, match="printable"):
            parse_text(raw, path=P)


class Colour(StrEnum):
    RED = "red"
    DARK_RED = "dark-red"


def test_choice() -> None:
    assert parse_choice(b"red", Colour, path=P) is Colour.RED
    assert parse_choice(b"dark-red", Colour, path=P) is Colour.DARK_RED
    for raw in (b"RED", b"red ", b"", b"red\x00", b"DARK_RED"):
        with pytest.raises(ProtocolError, match="not one of: red, dark-red"):
            parse_choice(raw, Colour, path=P)


@given(st.binary(max_size=100))
def test_show_is_short_and_printable(raw: bytes) -> None:
    shown = show(raw)
    assert shown.isprintable() and shown.isascii()
    assert len(shown) <= 4 * 24 + 6


def test_format_decimal_rejects_non_u64() -> None:
    for bad in (-1, U64_MAX + 1, True):
        with pytest.raises(ValueError):
            format_decimal(bad)
