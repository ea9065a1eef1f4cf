"""Strict parsers for single xenstore values: the front line against hostile input.

A device model may be compromised, so every byte it wrote is checked against an exact
grammar before anything is converted. Python's ``int()`` accepts signs, whitespace,
underscores and non-ASCII digits; it only ever sees bytes that already matched
``^(0|[1-9][0-9]*)$``. Every error is a ProtocolError naming the node's path and showing
the offending value escaped, so it is safe to log and to echo back in a rejection.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final, TypeVar

from xsproto.errors import ProtocolError

DECIMAL_MAX_BYTES: Final = 20
"""Longest decimal accepted before conversion: 2**64 - 1 has 20 digits."""

U64_MAX: Final = 2**64 - 1
DOMID_MAX: Final = 0x7FEF
"""Highest ordinary domain id; DOMID_FIRST_RESERVED (0x7FF0) and above are special."""

PAGES_MAX: Final = 2**32 - 1
"""Xen keeps a domain's max_pages in a 32-bit unsigned int."""

REQUEST_ID_MAX: Final = 2**63 - 1
DEFAULT_TIMEOUT: Final = 30.0
"""Seconds a device model waits for a decision unless told otherwise."""
REASON_MAX_BYTES: Final = 128
DECISION_REASON_MAX_BYTES: Final = 256

_DECIMAL: Final = re.compile(rb"0|[1-9][0-9]*")
_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]*")
_SHOW_BYTES: Final = 24

E = TypeVar("E", bound=StrEnum)


def show(raw: bytes) -> str:
    """Render an untrusted value as short printable ASCII for error messages."""
    shown = repr(bytes(raw[:_SHOW_BYTES]))
    return shown + ("..." if len(raw) > _SHOW_BYTES else "")


def escaped(text: str | bytes) -> str:
    r"""Any value for a terminal: printable ASCII as is, a backslash doubled, anything else
    (escape sequences, control characters, non-ASCII) as ``\xNN``/``\uNNNN``, so text a
    peer wrote cannot drive the terminal of the admin reading it."""
    chars = text.decode("latin-1") if isinstance(text, bytes) else text
    out = []
    for c in chars:
        if c == "\\":
            out.append("\\\\")
        elif "\x20" <= c <= "\x7e":
            out.append(c)
        else:
            out.append(ascii(c)[1:-1] if ord(c) > 0xFF else f"\\x{ord(c):02x}")
    return "".join(out)


def parse_decimal(raw: bytes, *, path: str, lo: int = 0, hi: int = U64_MAX) -> int:
    """Parse a canonical ASCII decimal in ``[lo, hi]``."""
    if not isinstance(raw, bytes):
        raise ProtocolError(f"expected bytes, got {type(raw).__name__}", path=path)
    if len(raw) > DECIMAL_MAX_BYTES:
        raise ProtocolError(f"number longer than {DECIMAL_MAX_BYTES} bytes: {show(raw)}", path=path)
    if _DECIMAL.fullmatch(raw) is None:
        raise ProtocolError(f"not a canonical decimal: {show(raw)}", path=path)
    value = int(raw)
    if not lo <= value <= hi:
        raise ProtocolError(f"{value} outside [{lo}, {hi}]", path=path)
    return value


def parse_domid(raw: bytes, *, path: str) -> int:
    return parse_decimal(raw, path=path, hi=DOMID_MAX)


def parse_pages(raw: bytes, *, path: str) -> int:
    return parse_decimal(raw, path=path, hi=PAGES_MAX)


def parse_request_id(raw: bytes, *, path: str, allow_zero: bool = False) -> int:
    """Request ids start at 1; a decision may carry 0 (restored, nothing asked)."""
    return parse_decimal(raw, path=path, lo=0 if allow_zero else 1, hi=REQUEST_ID_MAX)


def parse_text(raw: bytes, *, path: str, max_bytes: int = REASON_MAX_BYTES) -> str:
    """Printable ASCII (0x20-0x7e), at most ``max_bytes`` bytes, possibly empty."""
    if not isinstance(raw, bytes):
        raise ProtocolError(f"expected bytes, got {type(raw).__name__}", path=path)
    if len(raw) > max_bytes:
        raise ProtocolError(f"longer than {max_bytes} bytes: {show(raw)}", path=path)
    if _PRINTABLE.fullmatch(raw) is None:
        raise ProtocolError(f"not printable ASCII: {show(raw)}", path=path)
    return raw.decode("ascii")


def parse_choice(raw: bytes, choices: type[E], *, path: str) -> E:
    """One of an enumeration's exact values."""
    for choice in choices:
        if raw == choice.value.encode("ascii"):
            return choice
    allowed = ", ".join(c.value for c in choices)
    raise ProtocolError(f"{show(raw)} is not one of: {allowed}", path=path)


def format_decimal(value: int) -> bytes:
    if isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"not a u64: {value!r}")
    return str(value).encode("ascii")
