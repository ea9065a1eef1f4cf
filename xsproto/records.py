"""The protocol's xenstore records as frozen dataclasses, each held in one node.

A record's node holds ``key=value`` lines, each ended by a line feed, its keys in field
order (protocol version 2). ``parse`` takes the node's value, checks the lines' framing
(``split``), then parses each of the record's keys strictly with xsproto.values before
construction, so construction only ever refuses cross-field invariants. ``encode`` gives
the inverse. The fields' rules (xsproto.fields) give the keys, their grammar, their order
and also the records' JSON form and published schemas: a new key is one field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal, TypeVar

from xsproto import fields
from xsproto.errors import ProtocolError
from xsproto.fields import Choice, Const, Int, Key, Text
from xsproto.grant import Grant
from xsproto.values import (
    DECISION_REASON_MAX_BYTES,
    PAGES_MAX,
    REASON_MAX_BYTES,
    REQUEST_ID_MAX,
    format_decimal,
    parse_choice,
    parse_decimal,
    parse_text,
    show,
)

VERSION: Final = "version"
PAGES: Final = "pages"
REASON: Final = "reason"
REQUEST_ID: Final = "request-id"
STATE: Final = "state"
ORIGIN: Final = "origin"
BASE_PAGES: Final = "base-pages"
GRANTED_PAGES: Final = "granted-pages"
MAX_PAGES: Final = "max-pages"
"""The keys other modules name; a record's keys are its fields' (``fields.Key``)."""

PROTOCOL_VERSION: Final = 2
_VERSION_BYTES: Final = str(PROTOCOL_VERSION).encode("ascii")
RECORD_MAX_BYTES: Final = 1024
"""The longest value a record's node may hold. A decision is at most 403 bytes (its
longest values: state ``applying``, origin ``request``, a 19-digit request-id, 10-digit
pages, a 256-byte reason), a request 194: the rest is room for compatible extensions,
well inside xenstored's node quota (2048 bytes)."""
_KEY: Final = re.compile(rb"[a-z][a-z-]*")


class DecisionState(StrEnum):
    APPLYING = "applying"
    GRANTED = "granted"
    REJECTED = "rejected"


class Origin(StrEnum):
    """Whether a decision answers a request or republishes pages carried by a restore."""

    REQUEST = "request"
    RESTORE = "restore"


class UnsupportedVersion(ProtocolError):
    """The record is of another protocol version (rejection code bad-version)."""


Version = Annotated[Literal[2], Const(PROTOCOL_VERSION)]
Pages = Annotated[int, Int(0, PAGES_MAX)]
_PRINTABLE: Final = r"^[\x20-\x7e]*$"
_CODE: Final = re.compile(r"[a-z][a-z-]*")
"""Printable ASCII, the grammar of xsproto.values.parse_text."""

T = TypeVar("T")


def key_path(node: str, key: str) -> str:
    """How an error names one key of the record held at ``node``."""
    return f"{node}: {key}"


def split(raw: bytes, *, where: str) -> dict[str, bytes]:
    """A record node's value as key -> raw value: at most RECORD_MAX_BYTES, every line
    ``key=value`` ended by a line feed, each key ``^[a-z][a-z-]*$`` and given once. The
    values are not looked at (each record parses its own keys; other keys are ignored)."""
    if len(raw) > RECORD_MAX_BYTES:
        raise ProtocolError(f"longer than {RECORD_MAX_BYTES} bytes: {show(raw)}", path=where)
    if not raw.endswith(b"\n"):
        raise ProtocolError(f"not ended by a line feed: {show(raw)}", path=where)
    out: dict[str, bytes] = {}
    for number, line in enumerate(raw[:-1].split(b"\n"), start=1):
        key, sep, value = line.partition(b"=")
        if not sep or _KEY.fullmatch(key) is None:
            raise ProtocolError(f"line {number} is not key=value: {show(line)}", path=where)
        name = key.decode("ascii")
        if name in out:
            raise ProtocolError("given twice", path=key_path(where, name))
        out[name] = value
    return out


def request_id_in(raw: bytes | None, *, where: str) -> int | None:
    """The request-id a record's value names (0 included), None when the value is empty,
    does not frame, or has no readable request-id: a quick look, the rest unchecked."""
    try:
        value = split(raw, where=where).get(REQUEST_ID) if raw else None
        if value is None:
            return None
        return parse_decimal(value, path=key_path(where, REQUEST_ID), hi=REQUEST_ID_MAX)
    except ProtocolError:
        return None


def _read(lines: Mapping[str, bytes], where: str, key: str, parse: Callable[..., T]) -> T:
    path = key_path(where, key)
    raw = lines.get(key)
    if raw is None:
        raise ProtocolError("missing", path=path)
    return parse(raw, path=path)


def _check_version(lines: Mapping[str, bytes], where: str) -> None:
    raw = lines.get(VERSION)
    if raw != _VERSION_BYTES:
        got = "missing" if raw is None else show(raw)
        raise UnsupportedVersion(
            f"version {got}, expected {PROTOCOL_VERSION}", path=key_path(where, VERSION)
        )


def _build(record: Callable[..., T], values: dict[str, object], where: str) -> T:
    """Construct from parsed values; only a cross-field invariant can fail here."""
    try:
        return record(**values)
    except ValueError as err:
        raise ProtocolError(f"inconsistent record: {err}", path=where) from None


@dataclass(frozen=True, kw_only=True)
class Request:
    """A device model's declarative ask: D should have ``pages`` extra pages in total."""

    version: Version = PROTOCOL_VERSION
    pages: Pages
    reason: Annotated[str, Text(max_length=REASON_MAX_BYTES, pattern=_PRINTABLE)] = ""
    request_id: Annotated[int, Int(1, REQUEST_ID_MAX), Key(REQUEST_ID)]

    def __post_init__(self) -> None:
        fields.check(self)

    @classmethod
    def parse(cls, raw: bytes, *, where: str = "") -> Request:
        """Parse a request node's value; unknown keys are ignored (compatible extensions)."""
        return _parse(cls, raw, where)

    def encode(self) -> bytes:
        """The node's value."""
        return _encode(self)


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """The toolstack's answer and the state it must be able to recover from."""

    version: Version = PROTOCOL_VERSION
    state: Annotated[DecisionState, Choice(DecisionState)]
    origin: Annotated[Origin, Choice(Origin)] = Origin.REQUEST
    request_id: Annotated[int, Int(0, REQUEST_ID_MAX), Key(REQUEST_ID)]
    base_pages: Annotated[Pages, Key(BASE_PAGES)]
    granted_pages: Annotated[Pages, Key(GRANTED_PAGES)]
    max_pages: Annotated[Pages, Key(MAX_PAGES)]
    reason: Annotated[str, Text(max_length=DECISION_REASON_MAX_BYTES, pattern=_PRINTABLE)] = ""

    def __post_init__(self) -> None:
        fields.check(self)
        if self.state is not DecisionState.REJECTED:
            if self.grant.max_pages != self.max_pages:
                raise ValueError("max-pages must equal base-pages + granted-pages")
            if self.reason:
                raise ValueError(f"reason must be empty when state is {self.state}")
        elif self.rejection is None:
            raise ValueError("a rejection's reason must be '<code>: <detail>'")
        if self.origin is Origin.RESTORE and (
            self.request_id != 0 or self.state is not DecisionState.GRANTED
        ):
            raise ValueError("a restore origin needs request-id 0 and state granted")

    @property
    def grant(self) -> Grant:
        """The pages in force (a rejection keeps the last grant; its max-pages is Xen's
        limit when it was written)."""
        return Grant(self.base_pages, self.granted_pages)

    @property
    def rejection(self) -> tuple[str, str] | None:
        """(code, detail) parsed from ``reason`` when rejected. A code is any lower-case
        word (xsproto.negotiation.RejectCode lists this version's): a device model must
        accept codes newer watchers add."""
        code, sep, detail = self.reason.partition(": ")
        if self.state is not DecisionState.REJECTED or not sep or not _CODE.fullmatch(code):
            return None
        return code, detail

    @classmethod
    def parse(cls, raw: bytes, *, where: str = "") -> DecisionRecord:
        """Parse a decision node's value; unknown keys are ignored."""
        return _parse(cls, raw, where)

    def encode(self) -> bytes:
        return _encode(self)


def _value(rule: fields.Rule, raw: bytes, path: str) -> object:
    """One key's value, parsed by the strict grammar (xsproto.values) of its rule."""
    if isinstance(rule, Int):
        return parse_decimal(raw, path=path, lo=rule.lo, hi=rule.hi)
    if isinstance(rule, Text):
        return parse_text(raw, path=path, max_bytes=rule.max_length or REASON_MAX_BYTES)
    if isinstance(rule, Choice):
        return parse_choice(raw, rule.kind, path=path)
    raise TypeError(f"{path}: no xenstore form for {type(rule).__name__}")


def _parser(rule: fields.Rule) -> Callable[..., object]:
    return lambda raw, *, path: _value(rule, raw, path)


def _value_bytes(value: object) -> bytes:
    if isinstance(value, StrEnum):
        return value.value.encode("ascii")
    if isinstance(value, str):
        return value.encode("ascii")
    assert isinstance(value, int)  # the fields' rules allow nothing else
    return format_decimal(value)


R = TypeVar("R", Request, DecisionRecord)


def _parse(cls: type[R], raw: bytes, where: str) -> R:
    """Parse a record node's value: its framing, its version, then every key by its
    field's rule."""
    lines = split(raw, where=where)
    _check_version(lines, where)
    values: dict[str, object] = {}
    for spec in fields.specs(cls):
        if spec.key != VERSION:
            values[spec.name] = _read(lines, where, spec.key, _parser(spec.rule))
    return _build(cls, values, where)


def _encode(record: Request | DecisionRecord) -> bytes:
    """The record's lines in field order."""
    value = b"".join(spec.key.encode("ascii") + b"=" + _value_bytes(getattr(record, spec.name))
                     + b"\n" for spec in fields.specs(type(record)))
    assert len(value) <= RECORD_MAX_BYTES  # the fields' rules bound every value
    return value
