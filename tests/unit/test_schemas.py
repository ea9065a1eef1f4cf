"""The generated JSON Schemas: in sync with the records, and they mean what they say."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import jsonschema  # type: ignore[import-untyped]
import pytest

from xsproto import fields, schemas
from xsproto.carrying import restored
from xsproto.grant import Grant
from xsproto.policy import DomainOverride, OnDrift, Policy, RateLimit
from xsproto.records import DecisionRecord, DecisionState, Request
from xsproto.stream.image_record import ImageRecord

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def test_committed_schemas_match_the_records() -> None:
    for name, text in schemas.render().items():
        path = schemas.SCHEMA_DIR / name
        assert path.is_file(), f"{path} missing: run python -m xsproto.schemas"
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted"
    assert schemas.drifted() == []


def test_every_registered_model_has_a_valid_schema() -> None:
    rendered = schemas.render()
    assert sorted(rendered) == sorted(schemas.filename(n) for n, _ in schemas.SCHEMA_MODELS)
    for text in rendered.values():
        jsonschema.Draft202012Validator.check_schema(json.loads(text))


@dataclass(frozen=True, kw_only=True)
class Extra:
    """A record added later."""

    n: Annotated[int, fields.Int(0, 9)]


def test_appending_one_entry_adds_a_schema() -> None:
    rendered = schemas.render([*schemas.SCHEMA_MODELS, ("extra", Extra)])
    schema = json.loads(rendered["extra.schema.json"])
    assert (schema["title"], schema["required"]) == ("Extra", ["n"])


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schemas.render()[f"{name}.schema.json"]))


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("request", Request(pages=2048, request_id=3, reason="ROMs")),
        ("decision", restored(Grant(1000, 24))),
        (
            "decision",
            DecisionRecord(
                state=DecisionState.REJECTED,
                request_id=4,
                base_pages=1,
                granted_pages=0,
                max_pages=1,
                reason="dying: domain 4 is dying",
            ),
        ),
        ("policy", Policy()),
        (
            "policy",
            Policy(
                rate=RateLimit(burst=2, refill_seconds=0.5),
                by_domid={"7": DomainOverride(cap_pages=1, rate=RateLimit(burst=1))},
                by_name={"web 1": DomainOverride()},
            ),
        ),
        (
            "image-record",
            ImageRecord(domain_name="g", domain_uuid="5ed1b3c6-6bd1-4b8e-9b7e-0c5b0c1b2a3f",
                        source_domid=0x7FEF, base_pages=10, granted_pages=2, max_pages=12),
        ),
    ],
)
def test_dumped_records_validate_and_load_back(name: str, record: DataclassInstance) -> None:
    dumped = fields.dump(record)
    validator(name).validate(json.loads(json.dumps(dumped)))
    assert fields.load(type(record), dumped) == record


@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("request", {"pages": -1, "request-id": 1}),
        ("request", {"pages": 1, "request-id": 0}),
        ("request", {"pages": 1, "request-id": 1, "reason": "tab\t"}),
        ("request", {"pages": 1, "request-id": 1, "version": 1}),
        ("request", {"pages": 1, "request-id": 1, "version": True}),
        ("request", {"pages": 1, "request-id": 1, "colour": "red"}),
        ("request", {"pages": "1", "request-id": 1}),
        ("request", {"pages": True, "request-id": 1}),
        ("request", {"pages": 1}),
        (
            "decision",
            {"state": "done", "request-id": 1, "base-pages": 1, "granted-pages": 0, "max-pages": 1},
        ),
        (
            "decision",
            {"state": "granted", "request_id": 1, "base-pages": 1, "granted-pages": 0,
             "max-pages": 1},
        ),
        ("policy", {"domain_cap_pages": 2**32}),
        ("policy", {"by_domid": {"07": {}}}),
        ("policy", {"by_name": {"a": {"colour": 1}}}),
        ("policy", {"rate": {"refill_seconds": 0}}),
        ("policy", {"rate": None}),
        ("image-record", {"domain_name": "", "source_domid": 1, "base_pages": 1,
                          "granted_pages": 0, "max_pages": 1}),
        ("image-record", {"domain_name": "g", "domain_uuid": "nope", "source_domid": 1,
                          "base_pages": 1, "granted_pages": 0, "max_pages": 1}),
        ("image-record", {"domain_name": "g", "source_domid": 0x7FF0, "base_pages": 1,
                          "granted_pages": 0, "max_pages": 1}),
    ],
)
def test_schemas_and_records_reject_invalid_instances(name: str, instance: object) -> None:
    assert not validator(name).is_valid(instance)
    with pytest.raises(fields.FieldError):
        fields.load(dict(schemas.SCHEMA_MODELS)[name], instance)


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "drifted" in capsys.readouterr().err
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "request.schema.json").write_text("{}")
    assert schemas.drifted(tmp_path) == ["request.schema.json"]
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1


# The --json outputs (issue 9): what the commands print validates against its schema.

def _documents() -> list[tuple[str, object]]:
    import io
    import time

    from xsproto.agents import inspect_image
    from xsproto.outputs import (
        DomainStatus,
        FollowEvent,
        FollowKind,
        Outcome,
        RequestOutput,
        StatusOutput,
        WatcherSeen,
    )
    from xsproto.records import Origin
    from xsproto.stream import summarize, synthetic
    from xsproto.stream.image_record import record_for_config

    row = DomainStatus(domid=5, name="web", dm_domid=0, requested_pages=2048, request_id=3,
                       pending=True, state=DecisionState.GRANTED, origin=Origin.REQUEST,
                       base_pages=33024, granted_pages=1024, recorded_max_pages=34048,
                       xen_max_pages=34048, xen_tot_pages=32768, drift=False, problem=None)
    record = record_for_config(synthetic.domain_config(), source_domid=3,
                               grant=Grant(33024, 2048))
    image = synthetic.build_image(image_record=record)
    return [
        ("status-output", fields.dump(StatusOutput(
            watcher=WatcherSeen(pid=42, last_seen=int(time.time()), alive=True),
            domains=(row,)))),
        ("status-output", fields.dump(StatusOutput(watcher=None, domains=()))),
        ("follow-event", fields.dump(FollowEvent(time=time.time(), kind=FollowKind.REQUEST,
                                                 domid=5, dm_domid=0, request_id=3,
                                                 pages=2048, reason="ROMs"))),
        ("request-output", fields.dump(RequestOutput(domid=5, outcome=Outcome.TIMED_OUT,
                                                     detail="no decision"))),
        ("inspect-output", inspect_image.to_json(summarize(io.BytesIO(image)))),
    ]


@pytest.mark.parametrize(("name", "document"), _documents(), ids=lambda v: str(v)[:20])
def test_json_outputs_carry_a_format_and_match_their_schema(name: str, document: object) -> None:
    assert isinstance(document, dict) and document["format"] == 1
    validator(name).validate(json.loads(json.dumps(document)))


def test_an_output_with_a_string_for_a_number_fails_its_schema() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator("request-output").validate({"format": 1, "domid": "5",
                                              "outcome": "granted"})


def test_reconcile_json_names_what_it_settled_and_matches_its_schema(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """reconcile's document promised a schema that did not exist."""
    from xsproto.adapters import xenstore_records
    from xsproto.agents import reconcile

    class Watcher:
        def __init__(self, *args: object) -> None:
            pass

        def settle_drift(self, domid: int, how: OnDrift) -> str | None:
            return how.value if domid == 3 else None

        def drifted(self, domid: int) -> bool:
            return False

    monkeypatch.setattr(reconcile, "Xenstore", lambda path: contextlib.nullcontext())
    monkeypatch.setattr(reconcile, "Hypervisor", lambda: None)
    monkeypatch.setattr(reconcile, "Watcher", Watcher)
    monkeypatch.setattr(xenstore_records, "domids_under", lambda xs, path: [3, 4])
    assert reconcile.run(None, "adopt", policy_file=None, as_json=True, xenstore=None) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == {"format": 1, "action": "adopt",
                        "settled": [{"domid": 3, "action": "adopt"}]}
    validator("reconcile-output").validate(document)


def test_reconcile_exits_5_when_a_drift_is_left(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An adoption that lost its race (the record moved on) settled nothing: reconcile said
    "no drift" and exited 0 while Xen's limit still differed."""
    from xsproto.adapters import xenstore_records
    from xsproto.agents import reconcile

    class Watcher:
        def __init__(self, *args: object) -> None:
            pass

        def settle_drift(self, domid: int, how: OnDrift) -> str | None:
            return None

        def drifted(self, domid: int) -> bool:
            return True

    monkeypatch.setattr(reconcile, "Xenstore", lambda path: contextlib.nullcontext())
    monkeypatch.setattr(reconcile, "Hypervisor", lambda: None)
    monkeypatch.setattr(reconcile, "Watcher", Watcher)
    monkeypatch.setattr(xenstore_records, "domids_under", lambda xs, path: [3])
    assert reconcile.run(None, "adopt", policy_file=None, as_json=False, xenstore=None) == 5
    out, err = capsys.readouterr()
    assert "no drift" not in out
    assert "domain 3: Xen's limit still differs from the record (/libxl/3/extra-pages)" in err
