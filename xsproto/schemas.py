"""JSON Schemas of the protocol's records, generated from their dataclasses' field rules.

The schemas describe each record in its JSON form (numbers as integers, keys as in
xenstore). ``python -m xsproto.schemas`` rewrites schemas/; ``--check`` lists the files
that differ from the records and exits 1. To add a schema, append one entry to
SCHEMA_MODELS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xsproto import fields
from xsproto.outputs import FollowEvent, ImageOutput, RequestOutput, StatusOutput
from xsproto.policy import Policy
from xsproto.records import DecisionRecord, Request
from xsproto.stream.image_record import ImageRecord

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA_MODELS: list[tuple[str, type[DataclassInstance]]] = [
    ("request", Request),
    ("decision", DecisionRecord),
    ("policy", Policy),
    ("image-record", ImageRecord),
    ("status-output", StatusOutput),
    ("follow-event", FollowEvent),
    ("request-output", RequestOutput),
    ("inspect-output", ImageOutput),
]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def filename(name: str) -> str:
    return f"{name}.schema.json"


def render(models: list[tuple[str, type[DataclassInstance]]] = SCHEMA_MODELS) -> dict[str, str]:
    """File name -> schema text, deterministic so that files can be compared byte for byte."""
    out = {}
    for name, model in models:
        schema = {"$schema": _DIALECT, **fields.schema(model)}
        out[filename(name)] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def drifted(directory: Path = SCHEMA_DIR) -> list[str]:
    """Schema files missing from ``directory`` or differing from the records."""
    stale = []
    for name, text in render().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsproto.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if schemas/ is stale")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="schema directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted(args.dir)
        for name in stale:
            print(f"drifted: {args.dir / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
