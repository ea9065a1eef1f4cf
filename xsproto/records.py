"""The protocol's xenstore records as pydantic models.

``from_nodes`` takes a directory's children (key -> raw bytes) and parses each value
strictly with xsproto.values before pydantic sees it, so pydantic only ever checks
cross-field invariants. ``to_nodes`` gives the inverse, in write order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xsproto import paths
from xsproto.errors import ProtocolError
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


Pages = Annotated[int, Field(ge=0, le=PAGES_MAX)]
_PRINTABLE = r"^[\x20-\x7e]*$"
_CONFIG = ConfigDict(strict=True, frozen=True, extra="forbid", populate_by_name=True)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


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


def _validate(model: type[M], fields: dict[str, object], where: str) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise ProtocolError(f"inconsistent record: {first['msg']}", path=where) from None


class Request(BaseModel):
    """A device model's declarative ask: D should have ``pages`` extra pages in total."""

    model_config = _CONFIG

    version: Literal[1] = PROTOCOL_VERSION
    pages: Pages
    reason: Annotated[str, Field(max_length=REASON_MAX_BYTES, pattern=_PRINTABLE)] = ""
    request_id: Annotated[int, Field(alias="request-id", ge=1, le=REQUEST_ID_MAX)]

    @classmethod
    def from_nodes(cls, nodes: Mapping[str, bytes], *, where: str = "") -> Request:
        """Parse a request directory; unknown keys are ignored (compatible extensions)."""
        _check_version(nodes, where)
        fields: dict[str, object] = {
            "pages": _read(nodes, where, paths.PAGES, parse_pages),
            "reason": _read(nodes, where, paths.REASON, parse_text),
            "request_id": _read(nodes, where, paths.REQUEST_ID, parse_request_id),
        }
        return _validate(cls, fields, where)

    def to_nodes(self) -> dict[str, bytes]:
        """Children to write, request-id last (it is what the watcher acts on)."""
        return {
            paths.VERSION: _VERSION_BYTES,
            paths.PAGES: format_decimal(self.pages),
            paths.REASON: self.reason.encode("ascii"),
            paths.REQUEST_ID: format_decimal(self.request_id),
        }


class DecisionRecord(BaseModel):
    """The toolstack's answer and the state it must be able to recover from."""

    model_config = _CONFIG

    version: Literal[1] = PROTOCOL_VERSION
    state: DecisionState
    origin: Origin = Origin.REQUEST
    request_id: Annotated[int, Field(alias="request-id", ge=0, le=REQUEST_ID_MAX)]
    base_pages: Annotated[int, Field(alias="base-pages", ge=0, le=PAGES_MAX)]
    granted_pages: Annotated[int, Field(alias="granted-pages", ge=0, le=PAGES_MAX)]
    max_pages: Annotated[int, Field(alias="max-pages", ge=0, le=PAGES_MAX)]
    reason: Annotated[str, Field(max_length=DECISION_REASON_MAX_BYTES, pattern=_PRINTABLE)] = ""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.state is not DecisionState.REJECTED:
            if self.base_pages + self.granted_pages != self.max_pages:
                raise ValueError("max-pages must equal base-pages + granted-pages")
            if self.reason:
                raise ValueError(f"reason must be empty when state is {self.state}")
        elif self.rejection is None:
            raise ValueError("a rejection's reason must be '<code>: <detail>'")
        if self.origin is Origin.RESTORE and (
            self.request_id != 0 or self.state is not DecisionState.GRANTED
        ):
            raise ValueError("a restore origin needs request-id 0 and state granted")
        return self

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

        fields: dict[str, object] = {
            "state": _read(nodes, where, paths.STATE, choice(DecisionState)),
            "origin": _read(nodes, where, paths.ORIGIN, choice(Origin)),
            "request_id": _read(nodes, where, paths.REQUEST_ID, request_id),
            "base_pages": _read(nodes, where, paths.BASE_PAGES, parse_pages),
            "granted_pages": _read(nodes, where, paths.GRANTED_PAGES, parse_pages),
            "max_pages": _read(nodes, where, paths.MAX_PAGES, parse_pages),
            "reason": _read(nodes, where, paths.REASON, text),
        }
        return _validate(cls, fields, where)

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
