"""Structured logs: one line per event, ``event key=value ...`` (logfmt), values quoted
when needed, so every line names the domain, the path and the value it is about."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable

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
    """Log one structured line; its fields also travel with the record (the journal
    stores them as fields of their own)."""
    logger.log(level, fmt(name, **fields),
               extra={"xsproto_event": name, "xsproto_fields": fields})


class Throttle:
    """At most one line per key per ``interval`` seconds, so a peer that fails on purpose
    cannot flood the log; the next line that passes says how many were held back."""

    def __init__(self, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def event(self, logger: logging.Logger, name: str, *, key: Hashable,
              level: int = logging.INFO, **fields: object) -> None:
        """Log like ``event`` unless a line for ``key`` passed less than ``interval`` ago."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        event(logger, name, level=level, **fields, suppressed=self._held.pop(key, None))
