"""The xenstore adapter: pyxs at the edge, typed errors and safe retries for the rest.

Transactions are retried with tenacity when xenstored answers EAGAIN (a conflicting
commit, or oxenstored's fault injection) or the operation was merely interrupted; a
refusal (EACCES, EINVAL, ENOENT, E2BIG, ...) is never retried: it becomes XenstoreError.
"""

from __future__ import annotations

import errno
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import pyxs
from pyxs._internal import Op
from pyxs.exceptions import PyXSError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from xsproto.errors import XenstoreError

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.EBUSY})
TRANSACTION_ATTEMPTS = 20


class _Retry(Exception):
    """Internal: the transaction must start over."""


def _errno(err: PyXSError) -> int | None:
    code = err.args[0] if err.args else None
    return code if isinstance(code, int) else None


def _text(path: str | bytes) -> str:
    return path.decode(errors="replace") if isinstance(path, bytes) else path


def _b(path: str) -> bytes:
    return path.encode("ascii")


class Xenstore:
    """One connection to xenstored (unix socket, or /dev/xen/xenbus from a guest).

    Not thread-safe: give each thread its own. Use as a context manager.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is not None and path.startswith(("/dev/", "/proc/")):
            self._client = pyxs.Client(xen_bus_path=path)
        else:
            self._client = pyxs.Client(unix_socket_path=path)
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

    def _call(self, path: str, fn: Callable[[], T]) -> T | None:
        """Run one pyxs operation; None when the node does not exist (ENOENT)."""
        try:
            return fn()
        except PyXSError as e:
            code = _errno(e)
            if code == errno.ENOENT:
                return None
            if code in TRANSIENT_ERRNOS and self._client.tx_id:
                raise _Retry from e
            raise XenstoreError(str(e), path=path) from e

    # Reads and writes: inside ``transact`` they belong to its transaction.

    def read(self, path: str) -> bytes | None:
        value: bytes | None = self._call(path, lambda: self._client.read(_b(path)))
        return value

    def children(self, path: str) -> list[str]:
        names: list[bytes] = self._call(path, lambda: self._client.list(_b(path))) or []
        return [n.decode("ascii", errors="replace") for n in names]

    def read_dir(self, path: str) -> dict[str, bytes]:
        """The values of ``path``'s children (missing children are left out)."""
        out = {}
        for name in self.children(path):
            value = self.read(f"{path}/{name}")
            if value is not None:
                out[name] = value
        return out

    def owner(self, path: str) -> int | None:
        """The owner domid in the node's permissions (their first entry); None if absent."""
        perms: list[bytes] = self._call(path, lambda: self._client.get_perms(_b(path))) or []
        return int(perms[0][1:]) if perms else None

    def write(self, path: str, value: bytes) -> None:
        # pyxs refuses an empty value (its argument check wants one byte or more), yet the
        # wire format is just "path\0value": send the empty value as that.
        args = (_b(path) + b"\0", value) if value else (_b(path) + b"\0",)
        self._call(path, lambda: self._client.ack(Op.WRITE, *args))

    def set_perms(self, path: str, perms: Iterable[str]) -> None:
        encoded = [_b(p) for p in perms]
        self._call(path, lambda: self._client.set_perms(_b(path), encoded))

    def remove(self, path: str) -> None:
        """Remove ``path`` and everything below it; absent is fine."""
        self._call(path, lambda: self._client.delete(_b(path)))

    def write_dir(self, path: str, nodes: Mapping[str, bytes],
                  perms: Iterable[str] | None = None) -> None:
        """Write children of ``path`` in order; ``perms`` go on the directory first, and
        children created after it inherit them (xenstored copies a parent's perms)."""
        if perms is not None:
            self.write(path, b"")
            self.set_perms(path, perms)
        for key, value in nodes.items():
            self.write(f"{path}/{key}", value)

    # Transactions.

    def transact(self, fn: Callable[[Xenstore], T]) -> T:
        """Run ``fn(self)`` in a transaction, all over again while xenstored says EAGAIN."""

        @retry(retry=retry_if_exception_type(_Retry), stop=stop_after_attempt(TRANSACTION_ATTEMPTS),
               wait=wait_random_exponential(multiplier=0.002, max=0.2), reraise=True)
        def attempt() -> T:
            self._call("(transaction start)", self._client.transaction)
            try:
                result = fn(self)
            except BaseException:
                if self._client.tx_id:
                    try:
                        self._client.rollback()
                    except PyXSError:
                        self._client.tx_id = 0
                raise
            try:
                committed = self._client.commit()
            except PyXSError as e:
                raise XenstoreError(f"transaction commit failed: {e}") from e
            if not committed:
                raise _Retry
            return result

        try:
            return attempt()
        except _Retry as e:
            raise XenstoreError(f"transaction still conflicting after {TRANSACTION_ATTEMPTS} "
                                "attempts") from e

    # Watches.

    def watch(self, path: str, token: str) -> None:
        if self._monitor is None:
            self._monitor = self._client.monitor()
        try:
            self._monitor.watch(_b(path), _b(token))
        except PyXSError as e:
            raise XenstoreError(f"cannot watch: {e}", path=path) from e

    def unwatch(self, path: str, token: str) -> None:
        if self._monitor is not None:
            self._call(path, lambda: self._monitor.unwatch(_b(path), _b(token)))

    def next_event(self, timeout: float | None = None) -> tuple[str, str] | None:
        """The next watch event as (path, token); None when ``timeout`` passes first."""
        if self._monitor is None:
            raise XenstoreError("no watch registered: call watch() first")
        try:
            path, token = self._monitor.events.get(timeout=timeout)
        except queue.Empty:
            return None
        return _text(path), _text(token)

    def next_batch(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """The next watch event and all already queued behind it, each distinct event once;
        empty when ``timeout`` passes first. A commit fires one event per node it wrote: a
        reader that acts once per batch does not redo its work for every node."""
        first = self.next_event(timeout)
        if first is None:
            return []
        batch = {first: None}
        while (more := self.next_event(timeout=0)) is not None:
            batch[more] = None
        return list(batch)

    def event_batches(self) -> Iterator[list[tuple[str, str]]]:
        """Batches of watch events (see ``next_batch``), forever."""
        while batch := self.next_batch():
            yield batch
