"""Structured logs: one line per event, ``event key=value ...`` (logfmt), values quoted
when needed, so every line names the domain, the path and the value it is about."""

from __future__ import annotations

import json
import logging
import sys

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+")


def _value(v: object) -> str:
    text = str(v)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text)


def fmt(event: str, **fields: object) -> str:
    return " ".join([event, *(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)])


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO,
          **fields: object) -> None:
    """Log one structured line."""
    logger.log(level, fmt(name, **fields))


def configure(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
