"""The terminal adapter: the progress of a long image job, drawn on stderr.

Only a terminal gets the line redrawn in place (``xsproto.progress`` makes it): in a pipe,
a log file or the journal, carriage returns and erase codes would be litter, so there the
progress is a structured log event every ``LOG_INTERVAL`` seconds instead (none at all
for a command that does not log). ``-q`` hides both, as it hides every INFO line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from xsproto.progress import Meter, Progress, no_progress

if TYPE_CHECKING:
    import logging

LOG_INTERVAL = 2.0
"""Seconds between two progress events in a log."""
ERASE = "\x1b[K"
"""Erase to the end of the line (ECMA-48 EL): a shorter line leaves nothing behind."""


def file_size(fd: int) -> int | None:
    """The size of what ``fd`` reads, for percent and ETA, when it is a regular file (a
    pipe's is unknown)."""
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class ProgressLine:
    """One line on a terminal, redrawn when the meter says, erased when the job ends (the
    command's own output follows)."""

    def __init__(self, meter: Meter, stream: TextIO, clock: Callable[[], float]) -> None:
        self.meter, self.stream, self.clock = meter, stream, clock
        self.drawn = False

    def __call__(self, done: int) -> None:
        now = self.clock()
        if self.meter.due(done, now):
            self.stream.write(f"\r{self.meter.line(done, now)}{ERASE}")
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write(f"\r{ERASE}")
            self.stream.flush()


@contextlib.contextmanager
def progress(what: str, total: int | None, *, log: logging.Logger | None,
             shown: bool = True, stream: TextIO | None = None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """A progress callback for a job of ``total`` bytes (None: unknown) while the block
    runs: a line on stderr when it is a terminal (and ``shown``: not under ``--json`` or
    ``-q``; nor when ``log`` is quieter than INFO), else events in ``log``."""
    stream = sys.stderr if stream is None else stream
    if log is not None:  # only then: logging costs inspect-image's start-up a tenth
        import logging

        from xsproto import logs
    loud = log is None or log.isEnabledFor(logging.INFO)
    if shown and loud and stream.isatty():
        line = ProgressLine(Meter(what, total), stream, clock)
        try:
            yield line
        finally:
            line.close()
        return
    if log is None:
        yield no_progress
        return
    meter = Meter(what, total, interval=LOG_INTERVAL)

    def logged(done: int) -> None:
        now = clock()
        if meter.due(done, now):
            logs.event(log, "progress", what=what, bytes=done, total=total,
                       seconds=f"{meter.seconds(now):.1f}")

    yield logged
