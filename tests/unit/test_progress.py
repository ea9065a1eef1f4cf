"""Progress of long image work: the pure figures, and when a terminal gets a line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from xsproto import cli, progress
from xsproto.adapters import terminal
from xsproto.progress import Meter
from xsproto.stream import summarize, synthetic

MiB = 1 << 20


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536 * 1024, "1.5 MiB"),
    (int(2.6 * (1 << 30)), "2.6 GiB"), (1000 * MiB, "1000 MiB"), (123.456 * MiB, "123 MiB"),
    (1 << 60, "1024 PiB"),
])
def test_sizes_in_binary_units(count: float, text: str) -> None:
    assert progress.size(count) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00"), (0.2, "0:01"), (59.5, "1:00"), (65, "1:05"), (3725, "1:02:05")])
def test_durations_round_up(seconds: float, text: str) -> None:
    assert progress.duration(seconds) == text


@pytest.mark.parametrize(("done", "total", "rate", "text"), [
    (512 * MiB, 1024 * MiB, 128 * MiB, "restore   50%  512 MiB of 1 GiB  128 MiB/s  ETA 0:04"),
    (0, 1024 * MiB, None, "restore    0%  0 B of 1 GiB"),
    (1024 * MiB, 1024 * MiB, 128 * MiB, "restore  100%  1 GiB of 1 GiB  128 MiB/s"),
    (512 * MiB, None, 128 * MiB, "restore  512 MiB  128 MiB/s"),
    (2048 * MiB, 1024 * MiB, 2048 * MiB, "restore  100%  2 GiB of 1 GiB  2 GiB/s"),
], ids=["half", "no-rate-yet", "done", "size-unknown", "past-the-size"])
def test_a_line_has_percent_rate_and_eta_when_the_size_is_known(
        done: int, total: int | None, rate: float | None, text: str) -> None:
    assert progress.line("restore", done, total, rate) == text


def test_the_meter_starts_at_the_first_report_and_draws_once_per_interval() -> None:
    """The first report is the baseline: a restore's hold (xl making the domain) before
    any byte flows is not transfer time."""
    meter = Meter("inspect", 1000, interval=0.5)
    reports = [(10.0, 100), (10.3, 200), (10.5, 300), (10.7, 400), (11.0, 600)]
    assert [meter.due(done, now) for now, done in reports] == [False, False, True, False,
                                                               True]
    assert meter.line(600, 11.0) == "inspect   60%  600 B of 1000 B  500 B/s  ETA 0:01"
    assert meter.seconds(11.0) == 1.0
    assert Meter("inspect", None).line(0, 1.0) == "inspect  0 B"


class Tty(io.StringIO):
    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(stream: Tty, *, step: float = 0.3, **kw: object) -> None:
    """A 1000-byte job told of every tenth, ``step`` seconds apart."""
    clock = Clock()
    with terminal.progress("restore", 1000, stream=stream, clock=clock,
                           **kw) as tell:  # type: ignore[arg-type]
        for tenth in range(1, 11):
            clock.now += step
            tell(tenth * 100)


def test_a_terminal_gets_one_line_redrawn_in_place_then_erased() -> None:
    stream = Tty()
    _run(stream, log=None)
    assert stream.getvalue() == (  # the first report, at 100 B, is the baseline
        "\rrestore   30%  300 B of 1000 B  333 B/s  ETA 0:03\x1b[K"
        "\rrestore   50%  500 B of 1000 B  333 B/s  ETA 0:02\x1b[K"
        "\rrestore   70%  700 B of 1000 B  333 B/s  ETA 0:01\x1b[K"
        "\rrestore   90%  900 B of 1000 B  333 B/s  ETA 0:01\x1b[K"
        "\r\x1b[K")


@pytest.mark.parametrize(("tty", "shown"), [(False, True), (True, False)],
                         ids=["piped", "json"])
def test_no_line_when_piped_or_under_json_but_log_events(
        caplog: pytest.LogCaptureFixture, tty: bool, shown: bool) -> None:
    """A pipe, a log file or the journal gets a log event every LOG_INTERVAL seconds."""
    stream = Tty(tty)
    log = logging.getLogger("xsproto.test-progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        _run(stream, step=1.0, log=log, shown=shown)
    assert stream.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == [
        f"progress what=restore bytes={done} total=1000 seconds={seconds}"
        for done, seconds in ((300, "2.0"), (500, "4.0"), (700, "6.0"), (900, "8.0"))]


def test_quiet_hides_the_line_and_the_events(caplog: pytest.LogCaptureFixture) -> None:
    stream = Tty()
    log = logging.getLogger("xsproto.test-progress")
    with caplog.at_level(logging.WARNING, logger=log.name):
        _run(stream, step=1.0, log=log)
    assert stream.getvalue() == "" and caplog.records == []


def test_a_job_done_within_the_interval_draws_nothing() -> None:
    stream = Tty()
    with terminal.progress("inspect", 10, log=None, stream=stream, clock=Clock()) as tell:
        tell(10)
    assert stream.getvalue() == ""


def test_the_walk_reports_every_byte_it_reads() -> None:
    image = synthetic.build_image(page_batches=(3, 2)) + b"trailing"
    seen: list[int] = []
    summarize(io.BytesIO(image), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == len(image)


def test_inspect_image_draws_neither_under_json_nor_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "img"
    path.write_bytes(synthetic.build_image())
    stream = Tty()
    monkeypatch.setattr("sys.stderr", stream)
    drawn: list[tuple[str, int | None, bool]] = []
    real = terminal.progress

    def spy(what: str, total: int | None, **kw: bool) -> object:
        drawn.append((what, total, kw["shown"]))
        return real(what, total, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(terminal, "progress", spy)
    size = len(path.read_bytes())
    assert cli.main(["inspect-image", "--json", str(path)]) == 0
    assert cli.main(["inspect-image", str(path)]) == 0
    assert cli.main(["-q", "inspect-image", str(path)]) == 0
    assert drawn == [("inspect", size, False), ("inspect", size, True),
                     ("inspect", size, False)]
    assert stream.getvalue() == ""  # a job done within the interval draws nothing
