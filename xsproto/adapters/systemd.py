"""The systemd adapter: readiness notification and the journal, spoken directly (two
datagram protocols of a few lines each), so a service needs no systemd library.

Under systemd (``JOURNAL_STREAM`` names our stderr) every log line goes to the journal
with its structured fields (``XSPROTO_DOMID=5``, ``XSPROTO_PATH=...``) beside the text;
anywhere else it goes to stderr as one logfmt line.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "xsproto"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``RELOADING=1``, ``STATUS=...``) when it asked
    to be told (``Type=notify``: ``NOTIFY_SOCKET`` is set); False when nobody listens."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return False
    address = "\0" + where[1:] if where.startswith("@") else where
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True


def journal_entry(fields: Mapping[str, str]) -> bytes:
    """One entry in the journal's native datagram format (values with a newline are sent
    length-prefixed, as the protocol wants)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_fields(record: logging.LogRecord, message: str) -> dict[str, str]:
    """The journal fields of a log record: the text, its priority, and each structured
    field of an ``xsproto.logs.event`` as ``XSPROTO_<NAME>``."""
    fields = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
              "SYSLOG_IDENTIFIER": IDENTIFIER, "XSPROTO_LOGGER": record.name}
    event = getattr(record, "xsproto_event", None)
    if event is not None:
        fields["XSPROTO_EVENT"] = str(event)
    for key, value in getattr(record, "xsproto_fields", {}).items():
        if value is not None:
            fields[f"XSPROTO_{key.upper()}"] = str(value)
    return fields


class JournalHandler(logging.Handler):
    """Sends each record to journald with its fields; falls back to stderr if it cannot."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(journal_entry(journal_fields(record, self.format(record))),
                             self.path)
        except OSError:
            print(self.format(record), file=sys.stderr)

    def close(self) -> None:
        self.sock.close()
        super().close()


def under_journald() -> bool:
    """Whether our stderr is the journal's stream (systemd sets ``JOURNAL_STREAM`` to its
    device and inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return device.isdigit() and inode.isdigit() and (st.st_dev, st.st_ino) == (
        int(device), int(inode))


def configure_logging(level: str = "INFO") -> None:
    """The journal under systemd, else stderr with a time stamp."""
    if under_journald() and os.path.exists(JOURNAL_SOCKET):
        handler: logging.Handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
