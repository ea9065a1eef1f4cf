"""The pyxs adapter against a small in-process xenstored (real pyxs, real socket, real wire
format), and the pyxs internals the adapter still leans on, pinned so that a pyxs upgrade
which moves them fails here rather than in the lab.

pyxs ships no usable test server (``pyxs/_server.py`` monkey-patches everything with gevent
and answers only READ), hence ``FakeXenstored`` below.
"""

from __future__ import annotations

import errno
import os
import queue
import shutil
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pyxs

from xsproto.adapters import xenstore as adapter
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import XenstoreError

# Message types of Xen's xen/include/public/io/xs_wire.h (xsd_sockmsg_type).
DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH = 1, 2, 3, 4, 5
TRANSACTION_START, TRANSACTION_END = 6, 7
WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR = 11, 12, 13, 14, 15, 16
HEADER = struct.Struct("=IIII")  # type, req_id, tx_id, len: host order, like xenstored

Node = tuple[bytes, tuple[str, ...]]  # value, perms
Send = Callable[[int, int, int, bytes], None]


class Refused(Exception):
    """The fake xenstored answers the request with this errno name."""


class FakeXenstored:
    """Just enough of xenstored for the adapter, on a unix socket: nodes with values and
    perms (a new node inherits its parent's), transactions on a snapshot (a commit after
    any other change answers EAGAIN), watches (with the initial event) and injected errors.
    Every request is recorded as (type, tx_id, payload)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {"/": (b"", ("n0",))}
        self.generation = 0
        self.transactions: dict[int, tuple[int, dict[str, Node], list[str]]] = {}
        self.last_tx = 0
        self.watches: list[tuple[str, str, Send]] = []
        self.requests: list[tuple[int, int, bytes]] = []
        self.faults: list[tuple[int, str]] = []  # (type, errno name): each answers once
        self.refused: dict[str, str] = {}  # path: errno name, for every request on it
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake.serve(self.request)

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, op: int, name: str, times: int = 1) -> None:
        self.faults.extend([(op, name)] * times)

    def ops(self, op: int) -> list[tuple[int, bytes]]:
        """The (tx_id, payload) of each request of type ``op`` so far."""
        return [(tx, payload) for o, tx, payload in self.requests if o == op]

    # The connection.

    def serve(self, sock: Any) -> None:
        send_lock = threading.Lock()

        def send(op: int, rq_id: int, tx_id: int, payload: bytes) -> None:
            with send_lock:
                sock.sendall(HEADER.pack(op, rq_id, tx_id, len(payload)) + payload)

        try:
            while (header := _recv(sock, HEADER.size)) is not None:
                op, rq_id, tx_id, size = HEADER.unpack(header)
                payload = (_recv(sock, size) or b"") if size else b""
                with self.lock:
                    self.requests.append((op, tx_id, payload))
                    try:
                        answer, changed = self.handle(op, tx_id, payload, send)
                    except Refused as e:
                        send(ERROR, rq_id, tx_id, str(e).encode() + b"\0")
                        continue
                    self.fire(changed)  # before the answer: queued once the caller has it
                    send(op, rq_id, tx_id, answer)
        finally:
            with self.lock:
                self.watches = [w for w in self.watches if w[2] is not send]

    def fire(self, changed: list[str]) -> None:
        for path in changed:
            for wpath, token, send in self.watches:
                if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
                    send(WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode())

    # The requests.

    def handle(self, op: int, tx_id: int, payload: bytes, send: Send
               ) -> tuple[bytes, list[str]]:
        for i, (fop, name) in enumerate(self.faults):
            if fop == op:
                del self.faults[i]
                raise Refused(name)
        args = payload.split(b"\0")
        path = args[0].decode()
        if path in self.refused:
            raise Refused(self.refused[path])
        if op == TRANSACTION_START:
            self.last_tx += 1
            self.transactions[self.last_tx] = (self.generation, dict(self.nodes), [])
            return f"{self.last_tx}\0".encode(), []
        if op == TRANSACTION_END:
            if tx_id not in self.transactions:
                raise Refused("ENOENT")
            start, nodes, changed = self.transactions.pop(tx_id)
            if path != "T":
                return b"OK\0", []
            if start != self.generation:
                raise Refused("EAGAIN")
            self.nodes = nodes
            self.generation += 1
            return b"OK\0", changed
        if op == WATCH:
            if (path, args[1].decode(), send) in self.watches:
                raise Refused("EEXIST")
            self.watches.append((path, args[1].decode(), send))
            return b"OK\0", [path]  # xenstored fires a new watch once, right away
        if op == UNWATCH:
            before = len(self.watches)
            self.watches = [w for w in self.watches
                            if (w[0], w[1], w[2]) != (path, args[1].decode(), send)]
            if len(self.watches) == before:
                raise Refused("ENOENT")
            return b"OK\0", []

        if tx_id:
            if tx_id not in self.transactions:
                raise Refused("ENOENT")
            nodes, changed = self.transactions[tx_id][1], self.transactions[tx_id][2]
        else:
            nodes, changed = self.nodes, []
        answer = self.node_op(nodes, op, path, payload[len(args[0]) + 1:], args[1:-1])
        if op in (WRITE, MKDIR, RM, SET_PERMS):
            changed.append(path)
            if not tx_id:
                self.generation += 1
                return answer, changed
        return answer, []

    @staticmethod
    def node_op(nodes: dict[str, Node], op: int, path: str, rest: bytes,
                perms: list[bytes]) -> bytes:
        parent = path.rsplit("/", 1)[0] or "/"
        if op == WRITE:
            missing = []
            p = path
            while p not in nodes:
                missing.append(p)
                p = p.rsplit("/", 1)[0] or "/"
            for p in reversed(missing):
                nodes[p] = (b"", nodes[p.rsplit("/", 1)[0] or "/"][1])
            nodes[path] = (rest, nodes[path][1])
            return b"OK\0"
        if op == RM:
            if path not in nodes and parent not in nodes:
                raise Refused("ENOENT")
            for p in [p for p in nodes if p == path or p.startswith(path + "/")]:
                del nodes[p]
            return b"OK\0"
        if path not in nodes:
            raise Refused("ENOENT")
        if op == READ:
            return nodes[path][0]
        if op == DIRECTORY:
            prefix = path.rstrip("/") + "/"
            names = [p[len(prefix):] for p in nodes
                     if p.startswith(prefix) and "/" not in p[len(prefix):]]
            return b"".join(n.encode() + b"\0" for n in names)
        if op == GET_PERMS:
            return b"".join(p.encode() + b"\0" for p in nodes[path][1])
        if op == SET_PERMS:
            nodes[path] = (nodes[path][0], tuple(p.decode() for p in perms))
            return b"OK\0"
        raise Refused("ENOSYS")


def _recv(sock: Any, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def xsd() -> Iterator[FakeXenstored]:
    where = tempfile.mkdtemp(prefix="xsd")  # short: a unix socket path has 108 bytes
    server = FakeXenstored(os.path.join(where, "socket"))
    yield server
    server.close()
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def xs(xsd: FakeXenstored) -> Iterator[Xenstore]:
    with Xenstore(xsd.path) as conn:
        yield conn


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    waits: list[int] = []

    def record(conflicts: int) -> float:
        waits.append(conflicts)
        return 0.0

    monkeypatch.setattr(adapter, "backoff_delay", record)
    return waits


# Reads and writes.

def test_read_write_children_remove(xs: Xenstore, xsd: FakeXenstored) -> None:
    xs.write("/a/b/c", b"1")
    xs.write("/a/b/d", b"two")
    assert xs.read("/a/b/c") == b"1"
    assert xs.read("/a/b/d") == b"two"
    assert xs.children("/a/b") == ["c", "d"]
    xs.remove("/a/b")
    assert xs.read("/a/b/c") is None
    assert xs.children("/a/b") == []
    xs.remove("/a/b")  # absent is fine
    assert all(tx == 0 for _, tx, _ in xsd.requests)


def test_a_missing_node_reads_as_none(xs: Xenstore) -> None:
    assert xs.read("/nowhere") is None
    assert xs.owner("/nowhere") is None
    assert xs.children("/nowhere") == []


def test_an_empty_value_is_written_as_such(xs: Xenstore, xsd: FakeXenstored) -> None:
    xs.write("/a/b", b"something")
    xs.write("/a/b", b"")
    xs.write("/a/new", b"")
    assert xs.read("/a/b") == b""
    assert xs.read("/a/new") == b""
    assert xsd.ops(WRITE)[1:] == [(0, b"/a/b\0"), (0, b"/a/new\0")]


def test_a_refusal_is_a_xenstore_error_naming_the_path(xs: Xenstore,
                                                       xsd: FakeXenstored) -> None:
    xsd.refused["/locked"] = "EACCES"
    with pytest.raises(XenstoreError) as caught:
        xs.write("/locked", b"x")
    assert caught.value.path == "/locked"
    assert caught.value.__cause__ is not None
    assert caught.value.__cause__.args[0] == errno.EACCES
    with pytest.raises(XenstoreError):
        xs.set_perms("/locked", ["n0"])


def test_eagain_outside_a_transaction_is_not_retried(xs: Xenstore, xsd: FakeXenstored) -> None:
    xsd.fail_next(WRITE, "EAGAIN")
    with pytest.raises(XenstoreError):
        xs.write("/a", b"x")
    assert len(xsd.ops(WRITE)) == 1


def test_cannot_connect_is_a_xenstore_error(tmp_path: Any) -> None:
    with pytest.raises(XenstoreError, match="cannot connect"), Xenstore(str(tmp_path / "no")):
        pass


# Transactions.

def test_transact_commits_what_fn_wrote_and_returns_its_result(
        xs: Xenstore, xsd: FakeXenstored) -> None:
    def fn(t: Xenstore) -> str:
        t.write("/a/x", b"1")
        t.write("/a/y", b"")
        assert xsd.nodes.get("/a/x") is None  # not before the commit
        return "done"

    assert xs.transact(fn) == "done"
    assert (xs.read("/a/x"), xs.read("/a/y")) == (b"1", b"")
    assert len(xsd.ops(TRANSACTION_START)) == 1
    assert [tx for tx, _ in xsd.ops(WRITE)] == [1, 1]
    assert xsd.ops(TRANSACTION_END) == [(1, b"T\0")]
    assert xsd.ops(READ)[-1][0] == 0  # after the transaction: outside it again


def test_a_conflicting_commit_runs_fn_again(xsd: FakeXenstored, no_backoff: list[int]) -> None:
    calls = 0
    with Xenstore(xsd.path) as xs, Xenstore(xsd.path) as other:
        def fn(t: Xenstore) -> bytes | None:
            nonlocal calls
            calls += 1
            seen = t.read("/counter")
            if calls == 1:
                other.write("/counter", b"other")  # commits in between: EAGAIN
            t.write("/counter", (seen or b"") + b"+mine")
            return seen

        assert xs.transact(fn) == b"other"
        assert xs.read("/counter") == b"other+mine"
    assert calls == 2
    assert no_backoff == [1]


def test_eagain_inside_a_transaction_starts_it_over(xs: Xenstore, xsd: FakeXenstored,
                                                    no_backoff: list[int]) -> None:
    xsd.fail_next(WRITE, "EAGAIN", times=2)
    xs.transact(lambda t: t.write("/a", b"1"))
    assert xs.read("/a") == b"1"
    ends = xsd.ops(TRANSACTION_END)
    assert [p for _, p in ends] == [b"F\0", b"F\0", b"T\0"]  # each failed attempt rolled back
    assert len({tx for tx, _ in ends}) == 3
    assert no_backoff == [1, 2]


def test_a_transaction_conflicting_every_time_gives_up(
        xs: Xenstore, xsd: FakeXenstored, no_backoff: list[int]) -> None:
    xsd.fail_next(TRANSACTION_END, "EAGAIN", times=4)
    with pytest.raises(XenstoreError, match="still conflicting after 4 attempts"):
        xs.transact(lambda t: t.write("/a", b"1"), attempts=4)
    assert len(xsd.ops(TRANSACTION_START)) == 4
    assert no_backoff == [1, 2, 3]
    assert xs.read("/a") is None


@pytest.mark.parametrize("name", ["EACCES", "EINVAL", "E2BIG", "ENOSPC"])
def test_a_refusal_inside_a_transaction_is_not_retried(xs: Xenstore, xsd: FakeXenstored,
                                                       name: str) -> None:
    xsd.refused["/a"] = name
    with pytest.raises(XenstoreError) as caught:
        xs.transact(lambda t: t.write("/a", b"1"))
    assert caught.value.__cause__ is not None
    assert caught.value.__cause__.args[0] == getattr(errno, name)
    assert len(xsd.ops(TRANSACTION_START)) == 1
    assert [p for _, p in xsd.ops(TRANSACTION_END)] == [b"F\0"]


def test_a_failed_commit_other_than_eagain_is_an_error(xs: Xenstore,
                                                       xsd: FakeXenstored) -> None:
    xsd.fail_next(TRANSACTION_END, "EINVAL")
    with pytest.raises(XenstoreError, match="commit failed"):
        xs.transact(lambda t: t.write("/a", b"1"))
    assert len(xsd.ops(TRANSACTION_START)) == 1


def test_an_exception_in_fn_rolls_back_and_propagates(xs: Xenstore,
                                                      xsd: FakeXenstored) -> None:
    def fn(t: Xenstore) -> None:
        t.write("/a", b"1")
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        xs.transact(fn)
    assert xsd.ops(TRANSACTION_END) == [(1, b"F\0")]
    assert xs.read("/a") is None
    assert xsd.ops(READ)[-1][0] == 0


def test_a_failed_rollback_leaves_nothing_behind(xs: Xenstore, xsd: FakeXenstored) -> None:
    xsd.fail_next(TRANSACTION_END, "ENOENT")  # the transaction was gone already

    def fn(t: Xenstore) -> None:
        raise RuntimeError("mine")

    with pytest.raises(RuntimeError, match="mine"):
        xs.transact(fn)
    xs.write("/after", b"1")
    assert xsd.ops(WRITE)[-1][0] == 0
    assert xs.transact(lambda t: t.read("/after")) == b"1"


def test_transact_does_not_nest(xs: Xenstore, xsd: FakeXenstored) -> None:
    with pytest.raises(XenstoreError, match="does not nest"):
        xs.transact(lambda t: t.transact(lambda u: None))
    assert [p for _, p in xsd.ops(TRANSACTION_END)] == [b"F\0"]


def test_the_backoff_is_jittered_below_an_exponential_cap() -> None:
    for conflicts, cap in [(1, 0.002), (2, 0.004), (5, 0.032), (8, 0.2), (19, 0.2)]:
        delays = [adapter.backoff_delay(conflicts) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert len(set(delays)) > 1


# Watches.

def test_watch_events_arrive_and_a_timeout_gives_none(xs: Xenstore, xsd: FakeXenstored) -> None:
    xs.watch("/w", "tok")
    assert xs.next_event(timeout=5) == ("/w", "tok")  # the initial event of a new watch
    start = time.monotonic()
    assert xs.next_event(timeout=0.05) is None
    assert 0.04 <= time.monotonic() - start < 2

    def write_two(t: Xenstore) -> None:
        t.write("/w/a", b"1")
        t.write("/w/b", b"2")

    xs.transact(write_two)
    assert xs.next_batch(timeout=5) == [("/w/a", "tok"), ("/w/b", "tok")]  # one commit
    xs.unwatch("/w", "tok")
    assert xsd.watches == []


def test_next_batch_drops_repeats_and_event_batches_yields_them(
        xs: Xenstore, xsd: FakeXenstored) -> None:
    xs.watch("/w", "tok")
    assert xs.next_event(timeout=5) == ("/w", "tok")
    with Xenstore(xsd.path) as writer:
        writer.write("/w/x", b"1")
        writer.write("/w/x", b"2")
        writer.write("/w/y", b"3")
    assert xs.read("/w/y") == b"3"  # xs's own round trip: its events came ahead of the answer
    assert next(xs.event_batches()) == [("/w/x", "tok"), ("/w/y", "tok")]
    assert xs.next_batch(timeout=0) == []


def test_next_event_without_a_watch_is_an_error(xs: Xenstore) -> None:
    with pytest.raises(XenstoreError, match="no watch"):
        xs.next_event(timeout=0)


# What the adapter assumes of pyxs beyond its public API (see the adapter's "pyxs private"
# functions). Written against pyxs 0.4.1; also true of its master (0.4.2-dev).

def test_pyxs_private_write(xs: Xenstore, xsd: FakeXenstored) -> None:
    """``_write``: pyxs's public ``write`` refuses a line feed (a record's value holds
    them) and, on 0.4.0 and 0.4.1, b""; the adapter sends XS_WRITE's "path\\0value" itself
    through the client's router, the value's bytes as they are, in or out of a
    transaction."""
    from pyxs._internal import Op

    assert (Op.WRITE, Op.ERROR) == (adapter.XS_WRITE, adapter.XS_ERROR)
    with pyxs.Client(unix_socket_path=xsd.path) as client, pytest.raises(ValueError):
        client.write(b"/r", b"version=2\npages=1\n")
    value = b"version=2\nreason=a=b\nx=\x01\xff\x00\n"
    xs.write("/r", value)
    xs.transact(lambda t: t.write("/t", value))
    assert xs.read("/r") == xs.read("/t") == value
    writes = xsd.ops(WRITE)
    assert writes == [(0, b"/r\0" + value), (1, b"/t\0" + value)]


def test_pyxs_private_monitor_events(xsd: FakeXenstored) -> None:
    """``_next_watch_event``: a monitor's events wait on its ``events`` queue, as
    ``(path, token)`` pairs of bytes, put there by the client's router thread."""
    with pyxs.Client(unix_socket_path=xsd.path) as client:
        monitor = client.monitor()
        assert isinstance(monitor.events, queue.Queue)
        monitor.watch(b"/w", b"tok")
        path, token = monitor.events.get(timeout=5)
        assert (path, token) == (b"/w", b"tok")
        with pytest.raises(queue.Empty):
            monitor.events.get(timeout=0.01)


def test_importing_the_adapter_stays_cheap() -> None:
    """The CLI imports it at every start (about 1 s of tenacity/asyncio in the lab before)."""
    code = ("import sys, xsproto.adapters.xenstore; "
            "print(sorted({'tenacity', 'asyncio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "[]"


def test_an_oversize_reply_is_e2big(xs: Xenstore) -> None:
    """oxenstored lists a directory whose names pass 4096 bytes in one reply, and a guest
    can make one (tests/lab/test_attacks.py): pyxs alone raised in its router thread, which
    closed the connection, and every later request waited for ever (the lab's watcher
    stopped answering). The adapter reads it as C xenstored's answer, E2BIG; the
    connection goes on."""
    for i in range(300):  # 300 names of 20 bytes
        xs.write(f"/big/junk-{i:03}-0123456789", b"x")
    seen: dict[str, object] = {}

    def attempt() -> None:
        try:
            xs.children("/big")
        except XenstoreError as e:
            seen["error"] = str(e)
        seen["after"] = xs.read("/big/junk-000-0123456789")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert seen == {"error": f"/big: ({errno.E2BIG}, '{os.strerror(errno.E2BIG)}')", "after": b"x"}
