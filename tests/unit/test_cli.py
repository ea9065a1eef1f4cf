"""The command line as scripts meet it: exit statuses, pipes, standard input, loudness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xsproto import __version__
from xsproto.cli import build_parser
from xsproto.stream import synthetic

XSPROTO = [sys.executable, "-m", "xsproto"]


@pytest.fixture(scope="module")
def many_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose inspect-image output is far beyond a pipe's buffer."""
    path = tmp_path_factory.mktemp("img") / "many.img"
    path.write_bytes(synthetic.build_image(page_batches=(1,) * 5000))
    return path


def test_a_reader_that_stops_early_ends_nothing_in_a_traceback(many_records: Path) -> None:
    """``inspect-image ... | head -1`` ended in a BrokenPipeError traceback, exit 1."""
    xsproto = subprocess.Popen([*XSPROTO, "inspect-image", str(many_records)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert xsproto.stdout is not None and xsproto.stderr is not None
    assert xsproto.stdout.readline().startswith(b"xl header:")
    xsproto.stdout.close()
    assert xsproto.wait(timeout=60) == 0
    assert b"Traceback" not in xsproto.stderr.read()


def test_inspect_image_reads_standard_input(many_records: Path) -> None:
    done = subprocess.run([*XSPROTO, "inspect-image", "-"], input=many_records.read_bytes(),
                          capture_output=True, check=True)
    assert b"5000 pfns" in done.stdout


def test_bad_input_on_standard_input_is_a_clear_error() -> None:
    done = subprocess.run([*XSPROTO, "inspect-image", "-"], input="garbage\n",
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("xsproto: standard input: at byte 0:")
    assert "Traceback" not in done.stderr


def test_version() -> None:
    done = subprocess.run([*XSPROTO, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"xsproto {__version__}"


@pytest.mark.parametrize(("flags", "level"), [([], "INFO"), (["-v"], "DEBUG"),
                                              (["-q"], "WARNING"),
                                              (["--log-level", "ERROR"], "ERROR")])
def test_loudness(flags: list[str], level: str) -> None:
    assert build_parser().parse_args([*flags, "status"]).log_level == level


def test_loudness_flags_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as end:
        build_parser().parse_args(["-v", "-q", "status"])
    assert end.value.code == 2
