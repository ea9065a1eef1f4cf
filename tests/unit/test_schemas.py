"""The generated JSON Schemas: in sync with the models, and they mean what they say."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel

from xsproto import schemas
from xsproto.negotiation import restored
from xsproto.policy import Policy
from xsproto.records import DecisionRecord, DecisionState, Request


def test_committed_schemas_match_the_models() -> None:
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


def test_appending_one_entry_adds_a_schema() -> None:
    class Extra(BaseModel):
        n: int

    rendered = schemas.render([*schemas.SCHEMA_MODELS, ("extra", Extra)])
    assert json.loads(rendered["extra.schema.json"])["title"] == "Extra"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schemas.render()[f"{name}.schema.json"]))


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("request", Request(pages=2048, request_id=3, reason="ROMs")),
        ("decision", restored(1000, 24)),
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
    ],
)
def test_dumped_models_validate(name: str, model: BaseModel) -> None:
    validator(name).validate(model.model_dump(mode="json", by_alias=True))


@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("request", {"pages": -1, "request-id": 1}),
        ("request", {"pages": 1, "request-id": 0}),
        ("request", {"pages": 1, "request-id": 1, "reason": "tab\t"}),
        ("request", {"pages": 1, "request-id": 1, "version": 2}),
        ("request", {"pages": 1, "request-id": 1, "colour": "red"}),
        ("request", {"pages": "1", "request-id": 1}),
        (
            "decision",
            {"state": "done", "request-id": 1, "base-pages": 1, "granted-pages": 0, "max-pages": 1},
        ),
        ("policy", {"domain_cap_pages": 2**32}),
        ("policy", {"by_domid": {"07": {}}}),
    ],
)
def test_schemas_reject_invalid_instances(name: str, instance: object) -> None:
    assert not validator(name).is_valid(instance)


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "drifted" in capsys.readouterr().err
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "request.schema.json").write_text("{}")
    assert schemas.drifted(tmp_path) == ["request.schema.json"]
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
