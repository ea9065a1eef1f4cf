"""The protocol's xenstore records as frozen dataclasses.

``from_nodes`` takes a directory's children (key -> raw bytes) and parses each value
strictly with xsproto.values before construction, so construction only ever refuses
cross-field invariants. ``to_nodes`` gives the inverse, in write order. The fields'
rules (xsproto.fields) also give the records' JSON form and published schemas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal, TypeVar

from xsproto import fields, paths
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

PROTOCOL_VERSION: Final = 1
_VERSION_BYTES: Final = str(PROTOCOL_VERSION).encode("ascii")


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


Version = Annotated[Literal[1], Const(PROTOCOL_VERSION)]
Pages = Annotated[int, Int(0, PAGES_MAX)]
_PRINTABLE: Final = r"^[\x20-\x7e]*$"
_CODE: Final = re.compile(r"[a-z][a-z-]*")
"""Printable ASCII, the grammar of xsproto.values.parse_text."""

T = TypeVar("T")


def _read(nodes: Mapping[str, bytes], where: str, key: str, parse: Callable[..., T]) -> T:
    path = f"{where}/{key}"
    raw = nodes.get(key)
    if raw is None:
        raise ProtocolError("missing", path=path)
    return parse(raw, path=path)


def _check_version(nodes: Mapping[str, bytes], where: str) -> None:
    raw = nodes.get(VERSION)
    if raw != _VERSION_BYTES:
        got = "missing" if raw is None else show(raw)
        raise UnsupportedVersion(
            f"version {got}, expected {PROTOCOL_VERSION}", path=f"{where}/{VERSION}"
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
    def from_nodes(cls, nodes: Mapping[str, bytes], *, where: str = "") -> Request:
        """Parse a request directory; unknown keys are ignored (compatible extensions)."""
        return _from_nodes(cls, nodes, where)

    def to_nodes(self) -> dict[str, bytes]:
        """Children to write, request-id last (it is what the watcher acts on)."""
        return _to_nodes(self)


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
    def from_nodes(cls, nodes: Mapping[str, bytes], *, where: str = "") -> DecisionRecord:
        return _from_nodes(cls, nodes, where)

    def to_nodes(self) -> dict[str, bytes]:
        return _to_nodes(self)


REQUEST_KEYS: Final = tuple(spec.key for spec in fields.specs(Request))
"""A request's keys in write order: request-id last."""
DECISION_KEYS: Final = tuple(spec.key for spec in fields.specs(DecisionRecord))


def parse_path(path: str | bytes) -> paths.RequestPath | paths.DecisionPath:
    """Classify a path (e.g. from a watch event) as a request's or a decision's, down to
    its key; anything else is a ProtocolError."""
    where = paths.parse(path)
    keys = REQUEST_KEYS if isinstance(where, paths.RequestPath) else DECISION_KEYS
    if where.key is not None and where.key not in keys:
        raise ProtocolError("unknown key", path=str(path))
    return where


def _node_value(rule: fields.Rule, raw: bytes, path: str) -> object:
    """One node's value, parsed by the strict grammar (xsproto.values) of its rule."""
    if isinstance(rule, Int):
        return parse_decimal(raw, path=path, lo=rule.lo, hi=rule.hi)
    if isinstance(rule, Text):
        return parse_text(raw, path=path, max_bytes=rule.max_length or REASON_MAX_BYTES)
    if isinstance(rule, Choice):
        return parse_choice(raw, rule.kind, path=path)
    raise TypeError(f"{path}: no xenstore form for {type(rule).__name__}")


def _parser(rule: fields.Rule) -> Callable[..., object]:
    return lambda raw, *, path: _node_value(rule, raw, path)


def _node_bytes(value: object) -> bytes:
    if isinstance(value, StrEnum):
        return value.value.encode("ascii")
    if isinstance(value, str):
        return value.encode("ascii")
    assert isinstance(value, int)  # the fields' rules allow nothing else
    return format_decimal(value)


R = TypeVar("R", Request, DecisionRecord)


def _from_nodes(cls: type[R], nodes: Mapping[str, bytes], where: str) -> R:
    """Parse a record's directory (key -> raw bytes), every key by its field's rule."""
    _check_version(nodes, where)
    values: dict[str, object] = {}
    for spec in fields.specs(cls):
        if spec.key != VERSION:
            values[spec.name] = _read(nodes, where, spec.key, _parser(spec.rule))
    return _build(cls, values, where)


def _to_nodes(record: Request | DecisionRecord) -> dict[str, bytes]:
    """The record's nodes in field order (the order they are written in)."""
    return {spec.key: _node_bytes(getattr(record, spec.name))
            for spec in fields.specs(type(record))}
