"""What the command line prints with ``--json``: versioned documents for scripts.

Each is a frozen dataclass declared with ``xsproto.fields`` rules, so the JSON a command
prints (``fields.dump``) and the schema published in schemas/ (``python -m
xsproto.schemas``) come from one declaration. ``format`` is the version of the document:
additions keep it, changes bump it. Numbers are JSON numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from xsproto import fields
from xsproto.fields import Bool, Choice, Const, Int, Items, Model, Nullable, Number, Table, Text
from xsproto.records import DecisionState, Origin
from xsproto.stream.image_record import ImageRecord
from xsproto.values import DOMID_MAX, PAGES_MAX, REQUEST_ID_MAX, U64_MAX

FORMAT: Final = 1
Format = Annotated[Literal[1], Const(FORMAT)]
Domid = Annotated[int, Int(0, DOMID_MAX)]
Pages = Annotated[int | None, Nullable(Int(0, PAGES_MAX))]
Count = Annotated[int, Int(0, U64_MAX)]
Words = Annotated[str | None, Nullable(Text())]
RequestId = Annotated[int | None, Nullable(Int(0, REQUEST_ID_MAX))]


class _Checked:
    def __post_init__(self) -> None:
        fields.check(self)  # type: ignore[arg-type]  # every subclass is a dataclass


@dataclass(frozen=True, kw_only=True)
class WatcherSeen(_Checked):
    """The watcher's heartbeat: its pid, when it last wrote, whether that is recent."""

    pid: Annotated[int, Int(1, 2**31 - 1)]
    last_seen: Annotated[int, Int(0, U64_MAX)]
    """Unix seconds."""
    alive: Annotated[bool, Bool()]


@dataclass(frozen=True, kw_only=True)
class DomainStatus(_Checked):
    """One domain: its request, its recorded decision, and Xen's live limit beside it."""

    domid: Domid
    name: Words
    dm_domid: Domid
    requested_pages: Pages
    request_id: RequestId
    pending: Annotated[bool, Bool()]
    """A request newer than the recorded decision waits for the watcher."""
    state: Annotated[DecisionState | None, Nullable(Choice(DecisionState))]
    origin: Annotated[Origin | None, Nullable(Choice(Origin))]
    base_pages: Pages
    granted_pages: Pages
    recorded_max_pages: Pages
    xen_max_pages: Pages
    xen_tot_pages: Pages
    drift: Annotated[bool, Bool()]
    """Xen's limit is not the recorded base + granted (``xsproto reconcile``)."""
    problem: Words


@dataclass(frozen=True, kw_only=True)
class StatusOutput(_Checked):
    """``xsproto status --json``."""

    format: Format = FORMAT
    watcher: Annotated[WatcherSeen | None, Nullable(Model(WatcherSeen))]
    domains: Annotated[tuple[DomainStatus, ...], Items(Model(DomainStatus))]


class Outcome(StrEnum):
    GRANTED = "granted"
    REJECTED = "rejected"
    TIMED_OUT = "timed-out"


@dataclass(frozen=True, kw_only=True)
class RequestOutput(_Checked):
    """``xsproto request|withdraw --json``: the decision, or why there is none."""

    format: Format = FORMAT
    domid: Domid
    outcome: Annotated[Outcome, Choice(Outcome)]
    request_id: RequestId = None
    base_pages: Pages = None
    granted_pages: Pages = None
    max_pages: Pages = None
    code: Words = None
    detail: Words = None


class FollowKind(StrEnum):
    REQUEST = "request"
    DECISION = "decision"
    REMOVED = "removed"


@dataclass(frozen=True, kw_only=True)
class FollowEvent(_Checked):
    """``xsproto status --follow --json``: one line per protocol event."""

    format: Format = FORMAT
    time: Annotated[float, Number(gt=0, le=2**63)]
    """Unix seconds."""
    kind: Annotated[FollowKind, Choice(FollowKind)]
    domid: Domid
    dm_domid: Annotated[int | None, Nullable(Int(0, DOMID_MAX))] = None
    request_id: RequestId = None
    pages: Pages = None
    reason: Words = None
    state: Annotated[DecisionState | None, Nullable(Choice(DecisionState))] = None
    granted_pages: Pages = None
    max_pages: Pages = None
    code: Words = None
    detail: Words = None
    problem: Words = None


@dataclass(frozen=True, kw_only=True)
class XlHeaderSummary(_Checked):
    mandatory_flags: Count
    flags: Annotated[tuple[str, ...], Items(Text())]
    optional_flags: Count
    optional_data_bytes: Count
    size: Count


@dataclass(frozen=True, kw_only=True)
class ConfigSummary(_Checked):
    name: Words
    uuid: Words
    type: Words
    target_memkb: Annotated[int | None, Nullable(Int(0, U64_MAX))]
    max_memkb: Annotated[int | None, Nullable(Int(0, U64_MAX))]


@dataclass(frozen=True, kw_only=True)
class LibxlHeaderSummary(_Checked):
    offset: Count
    version: Count
    legacy: Annotated[bool, Bool()]


@dataclass(frozen=True, kw_only=True)
class LibxcHeaderSummary(_Checked):
    offset: Count
    version: Count
    domain_type: Annotated[str, Text()]
    xen: Annotated[str, Text()]


@dataclass(frozen=True, kw_only=True)
class RecordSummary(_Checked):
    offset: Count
    layer: Annotated[str, Text()]
    type: Annotated[str, Text()]
    length: Count
    size: Count
    pfns: Annotated[int | None, Nullable(Int(0, U64_MAX))]


@dataclass(frozen=True, kw_only=True)
class ImageOutput(_Checked):
    """``xsproto inspect-image --json``."""

    format: Format = FORMAT
    xl_header: Annotated[XlHeaderSummary, Model(XlHeaderSummary)]
    config: Annotated[ConfigSummary | None, Nullable(Model(ConfigSummary))]
    record: Annotated[ImageRecord | None, Nullable(Model(ImageRecord))]
    libxl_header: Annotated[LibxlHeaderSummary, Model(LibxlHeaderSummary)]
    libxc_headers: Annotated[tuple[LibxcHeaderSummary, ...], Items(Model(LibxcHeaderSummary))]
    records: Annotated[tuple[RecordSummary, ...], Items(Model(RecordSummary))]
    record_counts: Annotated[dict[str, int], Table(Int(0, U64_MAX))]
    pfns: Count
    end_offset: Count
    trailing_bytes: Count
