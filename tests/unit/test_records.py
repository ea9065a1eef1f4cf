"""Records: one node's value of key=value lines, parsed strictly, encoded in field order,
cross-field invariants."""

from __future__ import annotations

import contextlib
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
GOOD = {"version": b"2", "pages": b"2048", "reason": b"option ROMs", "request-id": b"3"}
REQUEST_KEYS = ("version", "pages", "reason", "request-id")
DECISION_KEYS = ("version", "state", "origin", "request-id", "base-pages", "granted-pages",
                 "max-pages", "reason")


def lines(keys: dict[str, bytes]) -> bytes:
    """A record node's value holding ``keys``, in their order."""
    return b"".join(k.encode() + b"=" + v + b"\n" for k, v in keys.items())


def at(node: str, key: str) -> str:
    return f"{node}: {key}"


def decision_nodes(**changes: bytes) -> dict[str, bytes]:
    nodes = {
        "version": b"2",
        "state": b"granted",
        "origin": b"request",
        "request-id": b"3",
        "base-pages": b"33024",
        "granted-pages": b"2048",
        "max-pages": b"35072",
        "reason": b"",
    }
    return nodes | changes


def test_request_parse() -> None:
    req = Request.parse(lines(GOOD), where=W)
    assert (req.pages, req.reason, req.request_id, req.version) == (2048, "option ROMs", 3, 2)
    assert req.encode() == lines(GOOD)
    assert req.encode() == b"version=2\npages=2048\nreason=option ROMs\nrequest-id=3\n"
    assert tuple(spec.key for spec in fields.specs(Request)) == REQUEST_KEYS


def test_request_ignores_unknown_keys_in_any_order() -> None:
    keys = {"future": b"\x00\xff=", **dict(reversed(GOOD.items()))}
    assert Request.parse(lines(keys), where=W).pages == 2048


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (lines(GOOD)[:-1], "not ended by a line feed"),
        (b"", "not ended by a line feed"),
        (lines(GOOD) + b"\n", "line 5 is not key=value"),
        (b"\n" + lines(GOOD), "line 1 is not key=value"),
        (lines(GOOD) + b"pages\n", "line 5 is not key=value"),
        (lines(GOOD) + b"Pages=1\n", "line 5 is not key=value"),
        (lines(GOOD) + b"pa_ges=1\n", "line 5 is not key=value"),
        (lines(GOOD) + b"-x=1\n", "line 5 is not key=value"),
        (lines(GOOD) + b" pages=1\n", "line 5 is not key=value"),
        (lines(GOOD) + b"x=" + b"y" * 1024 + b"\n", "longer than 1024 bytes"),
    ],
)
def test_request_framing(raw: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as err:
        Request.parse(raw, where=W)
    assert err.value.path is not None and err.value.path.startswith(W)
    assert not isinstance(err.value, UnsupportedVersion)


@pytest.mark.parametrize("key", ["version", "pages", "reason", "request-id", "x"])
def test_a_key_given_twice_is_refused(key: str) -> None:
    with pytest.raises(ProtocolError, match="given twice") as err:
        Request.parse(lines(GOOD | {"x": b"1"}) + key.encode() + b"=1\n", where=W)
    assert err.value.path == at(W, key)


def test_the_bound_is_on_the_whole_value() -> None:
    pad = lines(GOOD) + b"x="
    at_bound = pad + b"y" * (records.RECORD_MAX_BYTES - len(pad) - 1) + b"\n"
    assert len(at_bound) == records.RECORD_MAX_BYTES
    assert Request.parse(at_bound, where=W).pages == 2048
    with pytest.raises(ProtocolError, match="longer than"):
        Request.parse(at_bound[:-1] + b"y\n", where=W)


def test_the_longest_records_fit_the_bound() -> None:
    req = Request(pages=2**32 - 1, reason="r" * 128, request_id=2**63 - 1)
    rec = DecisionRecord(state=DecisionState.REJECTED, request_id=2**63 - 1,
                         base_pages=2**32 - 1, granted_pages=2**32 - 1, max_pages=2**32 - 1,
                         reason="over-domain-cap: " + "x" * 239)
    assert len(req.encode()) == 194
    assert len(rec.encode()) == 403
    assert records.RECORD_MAX_BYTES > 403


@pytest.mark.parametrize("key", ["pages", "reason", "request-id"])
def test_request_missing_key(key: str) -> None:
    nodes = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(ProtocolError, match="missing") as err:
        Request.parse(lines(nodes), where=W)
    assert err.value.path == at(W, key)
    assert not isinstance(err.value, UnsupportedVersion)


@pytest.mark.parametrize("version", [None, b"", b"1", b"02", b"2 ", b"2\x00", b"v2"])
def test_request_bad_version_is_checked_first(version: bytes | None) -> None:
    nodes = {k: v for k, v in GOOD.items() if k != "version"} | {"pages": b"junk"}
    if version is not None:
        nodes["version"] = version
    with pytest.raises(UnsupportedVersion) as err:
        Request.parse(lines(nodes), where=W)
    assert err.value.path == at(W, "version")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pages", b"-1"),
        ("pages", b"4294967296"),
        ("pages", b" 1"),
        ("pages", b"1 "),
        ("pages", b"01"),
        ("pages", b""),
        ("pages", b"1\r"),
        ("pages", b"\xd9\xa5"),
        ("pages", b"1" * 21),
        ("request-id", b"0"),
        ("request-id", b"9223372036854775808"),
        ("request-id", b"0x1"),
        ("request-id", b"+1"),
        ("reason", b"a" * 129),
        ("reason", b"tab\there"),
        ("reason", b"nul\x00"),
        ("reason", "é".encode()),
    ],
)
def test_request_bad_values(key: str, value: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        Request.parse(lines(GOOD | {key: value}), where=W)
    assert err.value.path == at(W, key)
    assert not isinstance(err.value, UnsupportedVersion)


def test_a_reason_may_hold_an_equals_sign() -> None:
    assert Request.parse(lines(GOOD | {"reason": b"a=b=c"}), where=W).reason == "a=b=c"


def test_request_id_in_is_a_quick_look() -> None:
    assert records.request_id_in(lines(GOOD | {"pages": b"junk"}), where=W) == 3
    assert records.request_id_in(lines(decision_nodes(**{"request-id": b"0"})), where=D) == 0
    for raw in (None, b"", lines(GOOD)[:-1], lines({"pages": b"1"}),
                lines(GOOD | {"request-id": b"03"}), lines(GOOD) + b"request-id=4\n"):
        assert records.request_id_in(raw, where=W) is None


requests = st.builds(
    Request,
    pages=st.integers(0, 2**32 - 1),
    reason=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=128),
    request_id=st.integers(1, 2**63 - 1),
)


@given(requests)
def test_request_round_trip(req: Request) -> None:
    assert Request.parse(req.encode()) == req


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
    assert fields.dump(req) == {"version": 2, "pages": 1, "reason": "", "request-id": 1}


def test_record_invariants_are_value_errors() -> None:
    with pytest.raises(ValueError, match="max-pages must equal"):
        DecisionRecord(state=DecisionState.GRANTED, request_id=1, base_pages=1,
                       granted_pages=1, max_pages=3)
    with pytest.raises(ValueError, match=r"DecisionRecord\.state: 'granted' is not one of"):
        DecisionRecord(state="granted", request_id=1, base_pages=1,  # type: ignore[arg-type]
                       granted_pages=1, max_pages=2)


def test_decision_parse() -> None:
    rec = DecisionRecord.parse(lines(decision_nodes()), where=D)
    assert rec.state is DecisionState.GRANTED and rec.origin is Origin.REQUEST
    assert (rec.base_pages, rec.granted_pages, rec.max_pages) == (33024, 2048, 35072)
    assert rec.rejection is None
    assert rec.encode() == lines(decision_nodes())
    assert tuple(spec.key for spec in fields.specs(DecisionRecord)) == DECISION_KEYS


@pytest.mark.parametrize("key", [k for k in DECISION_KEYS if k != "version"])
def test_decision_missing_key(key: str) -> None:
    nodes = decision_nodes()
    del nodes[key]
    with pytest.raises(ProtocolError, match="missing") as err:
        DecisionRecord.parse(lines(nodes), where=D)
    assert err.value.path == at(D, key)


def test_decision_version() -> None:
    with pytest.raises(UnsupportedVersion):
        DecisionRecord.parse(lines(decision_nodes(version=b"1")), where=D)


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"state": b"Granted"}, at(D, "state")),
        ({"state": b"applied"}, at(D, "state")),
        ({"origin": b"restored"}, at(D, "origin")),
        ({"request-id": b"-1"}, at(D, "request-id")),
        ({"base-pages": b"1.5"}, at(D, "base-pages")),
        ({"reason": b"x" * 257}, at(D, "reason")),
        # cross-field invariants name the node
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
        DecisionRecord.parse(lines(decision_nodes(**changes)), where=D)
    assert err.value.path == path


def test_rejected_record_may_disagree_with_xen() -> None:
    nodes = decision_nodes(
        state=b"rejected", reason=b"over-domain-cap: pages: 9000 > cap 8192", **{"max-pages": b"1"}
    )
    rec = DecisionRecord.parse(lines(nodes), where=D)
    assert rec.rejection == (RejectCode.OVER_DOMAIN_CAP, "pages: 9000 > cap 8192")


def test_a_code_this_version_does_not_know_is_still_a_rejection() -> None:
    """Newer watchers may add codes: a device model reports them, never chokes."""
    nodes = decision_nodes(state=b"rejected", reason=b"over-moon: too far", **{"max-pages": b"1"})
    assert DecisionRecord.parse(lines(nodes), where=D).rejection == ("over-moon", "too far")


def test_restore_record() -> None:
    rec = DecisionRecord.parse(
        lines(decision_nodes(origin=b"restore", **{"request-id": b"0"})), where=D
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
    assert DecisionRecord.parse(rec.encode(), where=D) == rec


@given(st.dictionaries(st.sampled_from([*DECISION_KEYS, "x"]), st.binary(max_size=12)))
def test_decision_fuzz_only_protocol_errors(nodes: dict[str, bytes]) -> None:
    try:
        rec = DecisionRecord.parse(lines(nodes), where=D)
    except ProtocolError:
        return
    assert DecisionRecord.parse(rec.encode(), where=D) == rec


@given(st.dictionaries(st.sampled_from([*REQUEST_KEYS, "x"]), st.binary(max_size=12)))
def test_request_fuzz_only_protocol_errors(nodes: dict[str, bytes]) -> None:
    try:
        req = Request.parse(lines(nodes), where=W)
    except ProtocolError:
        return
    assert Request.parse(req.encode()) == req


@given(st.binary(max_size=64))
def test_any_bytes_give_only_protocol_errors(raw: bytes) -> None:
    for parse in (Request.parse, DecisionRecord.parse):
        with contextlib.suppress(ProtocolError):
            parse(raw, where=W)
