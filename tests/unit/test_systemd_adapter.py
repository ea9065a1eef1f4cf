"""systemd's two datagram protocols, spoken to real unix sockets (no systemd here)."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest

from xsproto import logs
from xsproto.adapters import systemd


def test_notify_reaches_the_socket_systemd_names(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1")
        assert listener.recv(100) == b"READY=1"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")


def test_journal_entry_format() -> None:
    assert systemd.journal_entry({"A": "x=1", "B": "two\nlines"}) == (
        b"A=x=1\n" + b"B\n" + struct.pack("<Q", 9) + b"two\nlines\n")


def test_an_event_travels_with_its_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        handler = systemd.JournalHandler(path)
        logger = logging.getLogger("xsproto.test-journal")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            logs.event(logger, "audit", level=logging.WARNING, domid=5,
                       path="/libxl/5/extra-pages", reason="ROMs \x1b")
        finally:
            logger.removeHandler(handler)
            handler.close()
        entry = journal.recv(4096).decode()
    fields = dict(line.split("=", 1) for line in entry.splitlines())
    assert fields["PRIORITY"] == "4" and fields["XSPROTO_EVENT"] == "audit"
    assert fields["XSPROTO_DOMID"] == "5"
    assert fields["XSPROTO_PATH"] == "/libxl/5/extra-pages"
    assert fields["MESSAGE"].startswith("audit domid=5 path=/libxl/5/extra-pages")


def test_stderr_is_not_the_journal_unless_systemd_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not systemd.under_journald()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not systemd.under_journald()
