"""Progress of long image work as a person at a terminal reads it: how far, how fast, and
how long is left. Pure: callers pass the clock's readings and draw the line themselves
(``xsproto.adapters.terminal``), so every figure here is testable without a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Progress = Callable[[int], None]
"""What a long job tells, as often as it likes: the bytes done so far."""


def no_progress(done: int) -> None:
    """The Progress of a job nobody watches."""


REDRAW_INTERVAL = 0.5
"""Seconds between two lines: often enough to look alive, rarely enough to cost nothing."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(count: float) -> str:
    """A byte count (or rate) in binary units, three significant figures: ``1.50 GiB``."""
    unit = 0
    while count >= 1024 and unit < len(_UNITS) - 1:
        count /= 1024
        unit += 1
    if unit == 0:
        return f"{int(count)} B"
    return f"{count:.3g} {_UNITS[unit]}" if count < 1000 else f"{count:.0f} {_UNITS[unit]}"


def duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``, rounded up: an ETA of 0:00 should mean done."""
    whole = int(-(-seconds // 1))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def line(what: str, done: int, total: int | None, rate: float | None) -> str:
    """One progress line: ``what``, then percent and ``done of total`` when the total is
    known (else just ``done``), the rate (bytes a second), and the time left at it."""
    if total:
        parts = [what, f"{min(100, done * 100 // total):3d}%",
                 f"{size(done)} of {size(total)}"]
    else:
        parts = [what, size(done)]
    if rate:
        parts.append(f"{size(rate)}/s")
        if total and done < total:
            parts.append(f"ETA {duration((total - done) / rate)}")
    return "  ".join(parts)


@dataclass
class Meter:
    """When a line is due, and the rate it shows. The clock starts at the first report
    (``done`` then is the baseline), not when the job was set up: a restore holds its
    stream while xl makes the domain, and that wait is not transfer time. The first line
    comes one ``interval`` later (a job done sooner shows none), then at most one per
    interval."""

    what: str
    total: int | None
    interval: float = REDRAW_INTERVAL
    started: float | None = None
    base: int = 0
    last: float = 0.0

    def due(self, done: int, now: float) -> bool:
        if self.started is None:
            self.started, self.base, self.last = now, done, now
            return False
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

    def seconds(self, now: float) -> float:
        """Since the first report."""
        return 0.0 if self.started is None else now - self.started

    def line(self, done: int, now: float) -> str:
        elapsed = self.seconds(now)
        rate = (done - self.base) / elapsed if elapsed > 0 and done > self.base else None
        return line(self.what, done, self.total, rate)
