"""The protocol's xenstore records as frozen dataclasses.

``from_nodes`` takes a directory's children (key -> raw bytes) and parses each value
strictly with xsproto.values before construction, so construction only ever refuses
cross-field invariants. ``to_nodes`` gives the inverse, in write order. The fields'
rules (xsproto.fields) also give the records' JSON form and published schemas.
"""

from __future__ import annotations

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
    parse_pages,
    parse_request_id,
    parse_text,
    show,
)

PROTOCOL_VERSION: Final = 1
_VERSION_BYTES: Final = str(PROTOCOL_VERSION).encode("ascii")


class RejectCode(StrEnum):
    """Why the toolstack refused a request, in the order the checks run."""

    BAD_VERSION = "bad-version"
    BAD_VALUE = "bad-value"
    WRONG_WRITER = "wrong-writer"
    NO_SUCH_DOMAIN = "no-such-domain"
    DYING = "dying"
    PRIVILEGED = "privileged"
    OVER_DOMAIN_CAP = "over-domain-cap"
    OVER_HOST_BUDGET = "over-host-budget"
    RATE_LIMITED = "rate-limited"


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
"""Printable ASCII, the grammar of xsproto.values.parse_text."""

T = TypeVar("T")


def _read(nodes: Mapping[str, bytes], where: str, key: str, parse: Callable[..., T]) -> T:
    path = f"{where}/{key}"
    raw = nodes.get(key)
    if raw is None:
        raise ProtocolError("missing", path=path)
    return parse(raw, path=path)


def _check_version(nodes: Mapping[str, bytes], where: str) -> None:
    raw = nodes.get(paths.VERSION)
    if raw != _VERSION_BYTES:
        got = "missing" if raw is None else show(raw)
        raise UnsupportedVersion(
            f"version {got}, expected {PROTOCOL_VERSION}", path=f"{where}/{paths.VERSION}"
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
    request_id: Annotated[int, Int(1, REQUEST_ID_MAX), Key(paths.REQUEST_ID)]

    def __post_init__(self) -> None:
        fields.check(self)

    @classmethod
    def from_nodes(cls, nodes: Mapping[str, bytes], *, where: str = "") -> Request:
        """Parse a request directory; unknown keys are ignored (compatible extensions)."""
        _check_version(nodes, where)
        values: dict[str, object] = {
            "pages": _read(nodes, where, paths.PAGES, parse_pages),
            "reason": _read(nodes, where, paths.REASON, parse_text),
            "request_id": _read(nodes, where, paths.REQUEST_ID, parse_request_id),
        }
        return _build(cls, values, where)

    def to_nodes(self) -> dict[str, bytes]:
        """Children to write, request-id last (it is what the watcher acts on)."""
        return {
            paths.VERSION: _VERSION_BYTES,
            paths.PAGES: format_decimal(self.pages),
            paths.REASON: self.reason.encode("ascii"),
            paths.REQUEST_ID: format_decimal(self.request_id),
        }


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """The toolstack's answer and the state it must be able to recover from."""

    version: Version = PROTOCOL_VERSION
    state: Annotated[DecisionState, Choice(DecisionState)]
    origin: Annotated[Origin, Choice(Origin)] = Origin.REQUEST
    request_id: Annotated[int, Int(0, REQUEST_ID_MAX), Key(paths.REQUEST_ID)]
    base_pages: Annotated[Pages, Key(paths.BASE_PAGES)]
    granted_pages: Annotated[Pages, Key(paths.GRANTED_PAGES)]
    max_pages: Annotated[Pages, Key(paths.MAX_PAGES)]
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
    def rejection(self) -> tuple[RejectCode, str] | None:
        """(code, detail) parsed from ``reason`` when rejected."""
        code, sep, detail = self.reason.partition(": ")
        if self.state is not DecisionState.REJECTED or not sep:
            return None
        try:
            return RejectCode(code), detail
        except ValueError:
            return None

    @classmethod
    def from_nodes(cls, nodes: Mapping[str, bytes], *, where: str = "") -> DecisionRecord:
        _check_version(nodes, where)

        def text(raw: bytes, *, path: str) -> str:
            return parse_text(raw, path=path, max_bytes=DECISION_REASON_MAX_BYTES)

        def request_id(raw: bytes, *, path: str) -> int:
            return parse_request_id(raw, path=path, allow_zero=True)

        def choice(kind: type[StrEnum]) -> Callable[..., StrEnum]:
            return lambda raw, *, path: parse_choice(raw, kind, path=path)

        values: dict[str, object] = {
            "state": _read(nodes, where, paths.STATE, choice(DecisionState)),
            "origin": _read(nodes, where, paths.ORIGIN, choice(Origin)),
            "request_id": _read(nodes, where, paths.REQUEST_ID, request_id),
            "base_pages": _read(nodes, where, paths.BASE_PAGES, parse_pages),
            "granted_pages": _read(nodes, where, paths.GRANTED_PAGES, parse_pages),
            "max_pages": _read(nodes, where, paths.MAX_PAGES, parse_pages),
            "reason": _read(nodes, where, paths.REASON, text),
        }
        return _build(cls, values, where)

    def to_nodes(self) -> dict[str, bytes]:
        return {
            paths.VERSION: _VERSION_BYTES,
            paths.STATE: self.state.value.encode("ascii"),
            paths.ORIGIN: self.origin.value.encode("ascii"),
            paths.REQUEST_ID: format_decimal(self.request_id),
            paths.BASE_PAGES: format_decimal(self.base_pages),
            paths.GRANTED_PAGES: format_decimal(self.granted_pages),
            paths.MAX_PAGES: format_decimal(self.max_pages),
            paths.REASON: self.reason.encode("ascii"),
        }
