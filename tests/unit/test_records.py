"""Records: strict from_nodes, to_nodes round trips, cross-field invariants."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xsproto import fields, records
from xsproto.errors import ProtocolError
from xsproto.negotiation import RejectCode
from xsproto.records import (
    DecisionRecord,
    DecisionState,
    Origin,
    Request,
    UnsupportedVersion,
)

W = "/local/domain/0/device-model/5/extra-pages"
D = "/libxl/5/extra-pages"
GOOD = {"version": b"1", "pages": b"2048", "reason": b"option ROMs", "request-id": b"3"}


def decision_nodes(**changes: bytes) -> dict[str, bytes]:
    nodes = {
        "version": b"1",
        "state": b"granted",
        "origin": b"request",
        "request-id": b"3",
        "base-pages": b"33024",
        "granted-pages": b"2048",
        "max-pages": b"35072",
        "reason": b"",
    }
    return nodes | changes


def test_request_from_nodes() -> None:
    req = Request.from_nodes(GOOD, where=W)
    assert (req.pages, req.reason, req.request_id, req.version) == (2048, "option ROMs", 3, 1)
    assert req.to_nodes() == GOOD
    assert list(req.to_nodes()) == list(records.REQUEST_KEYS)


def test_request_ignores_unknown_keys() -> None:
    assert Request.from_nodes(GOOD | {"future": b"\x00"}, where=W).pages == 2048


@pytest.mark.parametrize("key", ["pages", "reason", "request-id"])
def test_request_missing_key(key: str) -> None:
    nodes = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(ProtocolError, match="missing") as err:
        Request.from_nodes(nodes, where=W)
    assert err.value.path == f"{W}/{key}"
    assert not isinstance(err.value, UnsupportedVersion)


@pytest.mark.parametrize("version", [None, b"", b"2", b"01", b"1 ", b"1\x00", b"v1"])
def test_request_bad_version_is_checked_first(version: bytes | None) -> None:
    nodes = {k: v for k, v in GOOD.items() if k != "version"} | {"pages": b"junk"}
    if version is not None:
        nodes["version"] = version
    with pytest.raises(UnsupportedVersion) as err:
        Request.from_nodes(nodes, where=W)
    assert err.value.path == f"{W}/version"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pages", b"-1"),
        ("pages", b"4294967296"),
        ("pages", b" 1"),
        ("request-id", b"0"),
        ("request-id", b"9223372036854775808"),
        ("request-id", b"0x1"),
        ("reason", b"a" * 129),
        ("reason", b"tab\there"),
        ("reason", "é".encode()),
    ],
)
def test_request_bad_values(key: str, value: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        Request.from_nodes(GOOD | {key: value}, where=W)
    assert err.value.path == f"{W}/{key}"
    assert not isinstance(err.value, UnsupportedVersion)


requests = st.builds(
    Request,
    pages=st.integers(0, 2**32 - 1),
    reason=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=128),
    request_id=st.integers(1, 2**63 - 1),
)


@given(requests)
def test_request_round_trip(req: Request) -> None:
    assert Request.from_nodes(req.to_nodes()) == req


def test_records_are_strict_and_frozen() -> None:
    with pytest.raises(ValueError, match=r"Request\.pages: must be an integer, not '5'"):
        Request(pages="5", request_id=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not True"):
        Request(pages=True, request_id=1)
    with pytest.raises(ValueError, match=r"Request\.request_id: 0 is outside"):
        Request(pages=1, request_id=0)
    with pytest.raises(ValueError, match="does not match"):
        Request(pages=1, request_id=1, reason="a newline at the end\n")
    with pytest.raises(TypeError):
        Request(pages=1, request_id=1, extra=1)  # type: ignore[call-arg]
    req = Request(pages=1, request_id=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.pages = 2  # type: ignore[misc]
    assert fields.load(Request, {"pages": 1, "request-id": 1}) == req
    assert fields.dump(req) == {"version": 1, "pages": 1, "reason": "", "request-id": 1}


def test_record_invariants_are_value_errors() -> None:
    with pytest.raises(ValueError, match="max-pages must equal"):
        DecisionRecord(state=DecisionState.GRANTED, request_id=1, base_pages=1,
                       granted_pages=1, max_pages=3)
    with pytest.raises(ValueError, match=r"DecisionRecord\.state: 'granted' is not one of"):
        DecisionRecord(state="granted", request_id=1, base_pages=1,  # type: ignore[arg-type]
                       granted_pages=1, max_pages=2)


def test_decision_from_nodes() -> None:
    rec = DecisionRecord.from_nodes(decision_nodes(), where=D)
    assert rec.state is DecisionState.GRANTED and rec.origin is Origin.REQUEST
    assert (rec.base_pages, rec.granted_pages, rec.max_pages) == (33024, 2048, 35072)
    assert rec.rejection is None
    assert rec.to_nodes() == decision_nodes()
    assert list(rec.to_nodes()) == list(records.DECISION_KEYS)


@pytest.mark.parametrize("key", [k for k in records.DECISION_KEYS if k != "version"])
def test_decision_missing_key(key: str) -> None:
    nodes = decision_nodes()
    del nodes[key]
    with pytest.raises(ProtocolError, match="missing") as err:
        DecisionRecord.from_nodes(nodes, where=D)
    assert err.value.path == f"{D}/{key}"


def test_decision_version() -> None:
    with pytest.raises(UnsupportedVersion):
        DecisionRecord.from_nodes(decision_nodes(version=b"2"), where=D)


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"state": b"Granted"}, f"{D}/state"),
        ({"state": b"applied"}, f"{D}/state"),
        ({"origin": b"restored"}, f"{D}/origin"),
        ({"request-id": b"-1"}, f"{D}/request-id"),
        ({"base-pages": b"1.5"}, f"{D}/base-pages"),
        ({"reason": b"x" * 257}, f"{D}/reason"),
        # cross-field invariants name the directory
        ({"max-pages": b"35073"}, D),
        ({"reason": b"why not"}, D),
        ({"state": b"rejected", "reason": b""}, D),
        ({"state": b"rejected", "reason": b"Nope!: not a code"}, D),
        ({"state": b"rejected", "reason": b"dying"}, D),
        ({"origin": b"restore"}, D),
        ({"origin": b"restore", "request-id": b"0", "state": b"applying"}, D),
    ],
)
def test_decision_invalid(changes: dict[str, bytes], path: str) -> None:
    with pytest.raises(ProtocolError) as err:
        DecisionRecord.from_nodes(decision_nodes(**changes), where=D)
    assert err.value.path == path


def test_rejected_record_may_disagree_with_xen() -> None:
    nodes = decision_nodes(
        state=b"rejected", reason=b"over-domain-cap: pages: 9000 > cap 8192", **{"max-pages": b"1"}
    )
    rec = DecisionRecord.from_nodes(nodes, where=D)
    assert rec.rejection == (RejectCode.OVER_DOMAIN_CAP, "pages: 9000 > cap 8192")


def test_a_code_this_version_does_not_know_is_still_a_rejection() -> None:
    """Newer watchers may add codes: a device model reports them, never chokes."""
    nodes = decision_nodes(state=b"rejected", reason=b"over-moon: too far", **{"max-pages": b"1"})
    assert DecisionRecord.from_nodes(nodes, where=D).rejection == ("over-moon", "too far")


def test_restore_record() -> None:
    rec = DecisionRecord.from_nodes(
        decision_nodes(origin=b"restore", **{"request-id": b"0"}), where=D
    )
    assert rec.origin is Origin.RESTORE and rec.request_id == 0


decisions = st.builds(
    lambda state, rid, base, granted, code, detail: DecisionRecord(
        state=state,
        request_id=rid,
        base_pages=base,
        granted_pages=granted,
        max_pages=base + granted if state is not DecisionState.REJECTED else base,
        reason=f"{code}: {detail}" if state is DecisionState.REJECTED else "",
    ),
    st.sampled_from(DecisionState),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**31),
    st.integers(0, 2**31 - 1),
    st.sampled_from(RejectCode),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
)


@given(decisions)
def test_decision_round_trip(rec: DecisionRecord) -> None:
    assert DecisionRecord.from_nodes(rec.to_nodes(), where=D) == rec


@given(st.dictionaries(st.sampled_from([*records.DECISION_KEYS, "x"]), st.binary(max_size=12)))
def test_decision_fuzz_only_protocol_errors(nodes: dict[str, bytes]) -> None:
    try:
        rec = DecisionRecord.from_nodes(nodes, where=D)
    except ProtocolError:
        return
    assert DecisionRecord.from_nodes(rec.to_nodes(), where=D) == rec


@given(st.dictionaries(st.sampled_from([*records.REQUEST_KEYS, "x"]), st.binary(max_size=12)))
def test_request_fuzz_only_protocol_errors(nodes: dict[str, bytes]) -> None:
    try:
        req = Request.from_nodes(nodes, where=W)
    except ProtocolError:
        return
    assert Request.from_nodes(req.to_nodes()) == req
