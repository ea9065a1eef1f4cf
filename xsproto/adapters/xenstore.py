"""The xenstore adapter: pyxs at the edge, typed errors and safe retries for the rest.

Transactions are retried when xenstored answers EAGAIN (a conflicting commit, or
oxenstored's fault injection) or the operation was merely interrupted; a refusal
(EACCES, EINVAL, ENOENT, E2BIG, ...) is never retried: it becomes XenstoreError.

Only pyxs's public API is used (its documented ``Client``, ``Router``, connections and
``Monitor``), except in the functions marked "pyxs private" below, each of which
tests/unit/test_xenstore_adapter.py pins down. Checked on pyxs 0.4.1 (the last release)
and its unreleased master (0.4.2-dev, 2017).
"""

from __future__ import annotations

import contextlib
import errno
import queue
import random
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pyxs
from pyxs._internal import NUL, Packet, next_rq_id
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import PyXSError, UnexpectedPacket
from pyxs.helpers import check_path, error

from xsproto.errors import ProtocolError, TransactionConflict, XenstoreError

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.EBUSY})
BATCH_MAX = 4096
"""Distinct events in one batch at most: a peer flooding its area cannot grow one."""
TRANSACTION_ATTEMPTS = 20
BACKOFF_FIRST = 0.002  # seconds: the upper bound of the first wait, doubled after each conflict
BACKOFF_MAX = 0.2

# XS_WRITE in Xen's xen/include/public/io/xs_wire.h: the wire protocol, fixed for good.
XS_WRITE = 11
XS_ERROR = 16
PAYLOAD_MAX = 4096
"""XENSTORE_PAYLOAD_MAX (xs_wire.h): the largest message body."""
_HEADER = struct.Struct("<IIII")  # type, request id, transaction id, length


class _Retry(Exception):
    """Internal: the transaction must start over."""


def _errno(err: PyXSError) -> int | None:
    code = err.args[0] if err.args else None
    return code if isinstance(code, int) else None


def _text(path: str | bytes) -> str:
    return path.decode(errors="replace") if isinstance(path, bytes) else path


def _b(path: str) -> bytes:
    return path.encode("ascii")


def backoff_delay(conflicts: int) -> float:
    """How long to wait after the ``conflicts``-th conflict (1, 2, ...): random ("full
    jitter", so that conflicting writers spread out) below an exponential cap."""
    return random.uniform(0.0, min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (conflicts - 1)))


def _write(client: Any, path: bytes, value: bytes) -> None:
    """Set ``path``'s value to ``value``, whatever its bytes (creating it if needed).
    pyxs private, on 0.4.x.

    pyxs's public ``write`` (through ``Client.ack`` and ``execute_command``) refuses a
    value with any byte outside 0x00 and 0x20-0x7f (each part of the payload must match
    its ``_re_7bit_ascii``, and 0.4.0 and 0.4.1 also want one byte or more): a record's
    value is lines ended by line feeds (protocol version 2), and b"" is a value too. So
    the request is made as ``execute_command`` makes it, less that check: a
    ``pyxs._internal.Packet`` of XS_WRITE whose payload is "path\\0value", with the
    client's transaction id and the next request id, sent through the client's
    ``router``; the answer is "OK", or xenstored's error as pyxs raises it
    (``pyxs.helpers.error``). Checked on pyxs 0.4.1; test_pyxs_private_write pins it.
    """
    check_path(path)
    packet = client.router.send(Packet(XS_WRITE, path + NUL + value, rq_id=next_rq_id(),
                                       tx_id=client.tx_id)).get()
    if packet.op == XS_ERROR:
        raise error(packet.payload[:-1])
    if packet.op != XS_WRITE or packet.tx_id != client.tx_id:
        raise UnexpectedPacket(packet)
    if packet.payload.rstrip(NUL) != b"OK":
        raise PyXSError(packet.payload)


def _next_watch_event(monitor: Any, timeout: float | None) -> tuple[bytes, bytes] | None:
    """The next watch event queued for ``monitor``; None when ``timeout`` passes first.
    pyxs private.

    pyxs's only public way to receive events, ``Monitor.wait()``, blocks with no timeout,
    and its router thread owns the connection, so there is no descriptor to select on.
    Its router puts each event, an ``Event(path, token)`` namedtuple, on the monitor's
    ``events`` attribute, a ``queue.Queue`` (``wait()`` itself reads it); read it here.
    Unlike ``wait()`` this does not drop events for paths no longer watched.
    Checked on pyxs 0.4.1 and master 0.4.2-dev; test_pyxs_private_monitor_events pins it.
    """
    events: queue.Queue[tuple[bytes, bytes]] = monitor.events
    try:
        return events.get(timeout=timeout)
    except queue.Empty:
        return None


class _Bounded:
    """A pyxs transport that turns a reply longer than a message may be into xenstored's
    E2BIG for the request that asked. pyxs private (its connections' transports).

    pyxs 0.4.1 refuses such a reply by raising in its router thread, which then closes the
    connection: every later request of the process waits for ever. oxenstored sends one
    when asked to list a directory whose names pass 4096 bytes, and a guest can make one
    in its own area (seen in the lab: the watcher stopped answering every domain); C
    xenstored answers E2BIG instead. pyxs reads a header (16 bytes), then its body: the
    body of an oversize reply is read here, whole (the stream stays in step), and pyxs is
    given an XS_ERROR header and ``E2BIG``. Checked on pyxs 0.4.1;
    test_an_oversize_reply_is_e2big pins it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._body_due = False  # the next read is a body, not a header
        self._error: bytes | None = None

    def fileno(self) -> int:
        fd: int = self.inner.fileno()
        return fd

    def send(self, data: bytes) -> None:
        self.inner.send(data)

    def close(self) -> None:
        self.inner.close()

    def recv(self, size: int) -> bytes:
        if self._error is not None:
            error, self._error, self._body_due = self._error, None, False
            return error
        data: bytes = self.inner.recv(size)
        if self._body_due:
            self._body_due = False
            return data
        _, rq_id, tx_id, length = _HEADER.unpack(data)
        self._body_due = length > 0
        if length <= PAYLOAD_MAX:
            return data
        self.inner.recv(length)
        self._error = b"E2BIG\0"
        return _HEADER.pack(XS_ERROR, rq_id, tx_id, len(self._error))


class _UnixSocket(UnixSocketConnection):  # type: ignore[misc]
    def create_transport(self) -> _Bounded:
        return _Bounded(super().create_transport())


class _XenBus(XenBusConnection):  # type: ignore[misc]
    def create_transport(self) -> _Bounded:
        return _Bounded(super().create_transport())


class Xenstore:
    """One connection to xenstored (unix socket, or /dev/xen/xenbus from a guest).

    Not thread-safe: give each thread its own. Use as a context manager.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is not None and path.startswith(("/dev/", "/proc/")):
            connection: Any = _XenBus(path)
        else:
            connection = _UnixSocket(path)
        # One router (pyxs's thread that owns the connection) shared by the client and by
        # each transaction's own client: pyxs's documented way to multiplex transactions.
        self._router = pyxs.Router(connection)
        self._client: Any = pyxs.Client(router=self._router)
        self._tx: Any = None  # the open transaction's client, while ``transact`` runs
        self._tx_wrote = False  # whether it wrote anything (then an error rolls it back)
        self._monitor: Any = None
        self.where = path or "default xenstored socket"

    def __enter__(self) -> Xenstore:
        try:
            self._client.connect()
        except (PyXSError, OSError) as e:
            raise XenstoreError(f"cannot connect to xenstored: {e}", path=self.where) from e
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def _active(self) -> Any:
        """The client operations go through: the transaction's while one is open."""
        return self._client if self._tx is None else self._tx

    def _call(self, path: str, fn: Callable[[], T]) -> T | None:
        """Run one pyxs operation; None when the node does not exist (ENOENT)."""
        try:
            return fn()
        except PyXSError as e:
            code = _errno(e)
            if code == errno.ENOENT:
                return None
            if code in TRANSIENT_ERRNOS and self._tx is not None:
                raise _Retry from e
            raise XenstoreError(str(e), path=path) from e

    # Reads and writes: inside ``transact`` they belong to its transaction.

    def read(self, path: str) -> bytes | None:
        client = self._active
        value: bytes | None = self._call(path, lambda: client.read(_b(path)))
        return value

    def children(self, path: str) -> list[str]:
        client = self._active
        names: list[bytes] = self._call(path, lambda: client.list(_b(path))) or []
        return [n.decode("ascii", errors="replace") for n in names]

    def perms(self, path: str) -> list[str] | None:
        """The node's permissions (``n0``, ``r3``, ...; the first names the owner); None
        if absent."""
        client = self._active
        perms: list[bytes] | None = self._call(path, lambda: client.get_perms(_b(path)))
        return None if perms is None else [p.decode("ascii", "replace") for p in perms]

    def owner(self, path: str) -> int | None:
        """The owner domid in the node's permissions (their first entry); None if absent."""
        perms = self.perms(path)
        return int(perms[0][1:]) if perms else None

    def write(self, path: str, value: bytes) -> None:
        client = self._active
        self._tx_wrote = True
        self._call(path, lambda: _write(client, _b(path), value))

    def set_perms(self, path: str, perms: Iterable[str]) -> None:
        client = self._active
        self._tx_wrote = True
        encoded = [_b(p) for p in perms]
        self._call(path, lambda: client.set_perms(_b(path), encoded))

    def remove(self, path: str) -> None:
        """Remove ``path`` and everything below it; absent is fine."""
        client = self._active
        self._tx_wrote = True
        self._call(path, lambda: client.delete(_b(path)))

    # Transactions.

    def transact(self, fn: Callable[[Xenstore], T], *,
                 attempts: int = TRANSACTION_ATTEMPTS) -> T:
        """Run ``fn(self)`` in a transaction, all over again while xenstored says EAGAIN
        (at most ``attempts`` times, with a jittered exponential backoff)."""
        if self._tx is not None:
            raise XenstoreError("already in a transaction: transact() does not nest")
        conflict: _Retry | None = None
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(fn)
            except _Retry as e:
                conflict = e
            if attempt < attempts:
                time.sleep(backoff_delay(attempt))
        raise TransactionConflict(f"transaction still conflicting after {attempts} "
                            "attempts") from conflict

    def _attempt(self, fn: Callable[[Xenstore], T]) -> T:
        # A fresh client per transaction (pyxs keeps the transaction id in its client): a
        # transaction that ends badly cannot leave its id behind for what comes next.
        tx = pyxs.Client(router=self._router)
        self._call("(transaction start)", tx.transaction)
        self._tx, self._tx_wrote = tx, False
        try:
            result = fn(self)
        except ProtocolError:
            self._tx = None
            if self._tx_wrote:
                with contextlib.suppress(PyXSError):
                    tx.rollback()
                raise
            # What fn found wrong may be a torn view (C xenstored reads live: a commit
            # between two reads shows half of it); a read-only transaction's commit
            # tells: a conflict means run it again, success means the error stands.
            if not self._commit(tx):
                raise _Retry from None
            raise
        except BaseException:
            self._tx = None
            # If this fails, the transaction is gone already (or the connection is); the
            # client that held its id is dropped either way.
            with contextlib.suppress(PyXSError):
                tx.rollback()
            raise
        self._tx = None
        if not self._commit(tx):
            raise _Retry
        return result

    @staticmethod
    def _commit(tx: Any) -> bool:
        """End a transaction; False when xenstored says it conflicted (EAGAIN)."""
        try:
            committed: bool = tx.commit()
        except PyXSError as e:
            raise XenstoreError(f"transaction commit failed: {e}") from e
        return committed

    # Watches.

    def watch(self, path: str, token: str) -> None:
        try:
            if self._monitor is None:
                self._monitor = self._client.monitor()
            self._monitor.watch(_b(path), _b(token))
        except PyXSError as e:
            raise XenstoreError(f"cannot watch: {e}", path=path) from e

    def unwatch(self, path: str, token: str) -> None:
        monitor = self._monitor
        if monitor is not None:
            self._call(path, lambda: monitor.unwatch(_b(path), _b(token)))

    def next_event(self, timeout: float | None = None) -> tuple[str, str] | None:
        """The next watch event as (path, token); None when ``timeout`` passes first."""
        if self._monitor is None:
            raise XenstoreError("no watch registered: call watch() first")
        event = _next_watch_event(self._monitor, timeout)
        if event is None:
            return None
        path, token = event
        return _text(path), _text(token)

    def next_batch(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """The next watch event and all already queued behind it, each distinct event once;
        empty when ``timeout`` passes first. A commit fires one event per node it wrote: a
        reader that acts once per batch does not redo its work for every node."""
        first = self.next_event(timeout)
        if first is None:
            return []
        batch = {first: None}
        while len(batch) < BATCH_MAX and (more := self.next_event(timeout=0)) is not None:
            batch[more] = None
        return list(batch)

    def event_batches(self) -> Iterator[list[tuple[str, str]]]:
        """Batches of watch events (see ``next_batch``), forever."""
        while batch := self.next_batch():
            yield batch
