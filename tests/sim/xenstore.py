"""An in-memory xenstored, in the two flavours xsproto meets: C xenstored and oxenstored.

``Store`` is the daemon; each ``Connection`` is one client (a process opens its own) and
implements ``xsproto.io.XenstoreIO`` exactly as ``xsproto.adapters.xenstore.Xenstore``
does on the wire: the same request per call (a
transaction is a start, its requests and an end), ENOENT read as absence, any other
refusal raised as ``XenstoreError``, EAGAIN retried. So its request counter counts what
the real adapter would send.

What each flavour does is taken from Xen 4.17's tools/xenstore (C) and
tools/ocaml/xenstored, and every rule is shown of the real daemons by
tests/lab/test_sim_semantics.py; README.md lists the rules. Not modelled: watch events
are not filtered by the watcher's read permission (every watcher here is dom0, and a
stubdom device model may read its own decision), watch and transaction quotas, and
oxenstored's transaction history limits.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from tests.sim.faults import Crash, FaultPoint, Plan
from xsproto.adapters.xenstore import BATCH_MAX, TRANSACTION_ATTEMPTS
from xsproto.errors import ProtocolError, TransactionConflict, XenstoreError
from xsproto.io import XenstoreIO

T = TypeVar("T")

Perm = tuple[str, int]
"""One permission entry: its letter (n none, r read, w write, b both) and domain id."""
_RIGHTS = {"n": "", "r": "r", "w": "w", "b": "rw"}
_PATH = re.compile(r"/|(/[A-Za-z0-9_@-]+)+")
PATH_MAX = 3072
"""XENSTORE_ABS_PATH_MAX."""
ENTRIES_PER_DOMAIN = 1000
"""Nodes an unprivileged domain may own (both daemons' default)."""
VALUE_MAX = 2048
"""Both daemons' default node size quota, in bytes."""
PAYLOAD_MAX = 4096
"""XENSTORE_PAYLOAD_MAX: a directory whose names (each NUL-terminated) are longer is not
listed, it is answered E2BIG. Seen in the lab with oxenstored and a guest's junk: the guest
gets E2BIG; dom0's socket gets the whole listing in one reply, which the real adapter
reads as E2BIG. C xenstored's node quota stops a guest's directory at half that size."""
C_NODE_HEADER = 24
"""C xenstored counts a node's stored record against the quota: a 24-byte header, 8
bytes per permission, the value and the children's names, each NUL-terminated."""
RELEASE_DOMAIN = "@releaseDomain"
INTRODUCE_DOMAIN = "@introduceDomain"


class Flavour(StrEnum):
    C = "c"
    """xenstored 4.17: a transaction reads each node live at its first access and fails
    if any node it accessed changed by its commit; an unprivileged domain owns the nodes
    it creates; a missing node under one it may not read is EACCES."""
    OCAML = "ocaml"
    """oxenstored 4.17: a transaction works on a snapshot; a read-only one always ends
    well; one that wrote commits if the subtrees at the common prefixes of what it read
    and of what it wrote are unchanged, else its requests are replayed on the current
    store and it commits if every answer is the same (process.ml's
    ``transaction_replay``); a created node inherits its parent's permissions, owner
    included; a missing node is ENOENT."""


class Refused(Exception):
    """xenstored answers the request with this error (``ENOENT``, ``EACCES``, ...)."""


def parse_perms(perms: Iterable[str]) -> tuple[Perm, ...]:
    parsed = []
    for p in perms:
        if len(p) < 2 or p[0] not in _RIGHTS or not p[1:].isdigit():
            raise Refused("EINVAL")
        parsed.append((p[0], int(p[1:])))
    if not parsed:
        raise Refused("EINVAL")
    return tuple(parsed)


def show_perms(perms: Sequence[Perm]) -> list[str]:
    return [f"{letter}{domid}" for letter, domid in perms]


def make_dir(xs: XenstoreIO, path: str, perms: Sequence[str]) -> None:
    """What libxl does for a directory: the node, then its permissions (children made
    after it inherit them)."""
    xs.write(path, b"")
    xs.set_perms(path, perms)


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def is_under(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it."""
    return top == "/" or path == top or path.startswith(top + "/")


def _common(a: str | None, b: str) -> str:
    if a is None:
        return b
    parts = []
    for x, y in zip(a.split("/")[1:], b.split("/")[1:], strict=False):
        if x != y:
            break
        parts.append(x)
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0][1]

    def c_size(self) -> int:
        """What C xenstored charges against the node size quota."""
        names = sum(len(c) + 1 for c in self.children)
        return C_NODE_HEADER + 8 * len(self.perms) + len(self.value) + names


@dataclass(frozen=True)
class Change:
    """One node a commit changed (or removed)."""

    path: str
    perms_changed: bool


class Store:
    """The daemon: the nodes, the connections and their watches, domain events."""

    def __init__(self, flavour: Flavour = Flavour.C, *,
                 eagain: Callable[[], bool] | None = None) -> None:
        """``eagain``: oxenstored's ``test-eagain`` fault injection; a commit for which it
        returns True fails with EAGAIN whatever it touched."""
        self.flavour = flavour
        self.eagain = eagain
        self.nodes: dict[str, Node] = {"/": Node(b"", (("n", 0),))}
        self.generation = 0
        self.owned: Counter[int] = Counter({0: 1})
        self.connections: list[Connection] = []
        self.targets: dict[int, int] = {}
        """A stubdom's domain id -> the guest it serves (XS_SET_TARGET)."""
        self.observers: list[Callable[[Connection, Sequence[str]], None]] = []
        """Called after every commit with the committing connection and the paths it
        changed."""
        self.on_connect: list[Callable[[Connection], None]] = []
        self._history: list[tuple[int, list[Change]]] = []
        self._open: set[_Txn] = set()

    def connect(self, domid: int, *, name: str = "", plan: Plan | None = None) -> Connection:
        conn = Connection(self, domid, name=name or f"dom{domid}", plan=plan or Plan())
        self.connections.append(conn)
        for hook in self.on_connect:
            hook(conn)
        return conn

    def set_target(self, domid: int, target: int) -> None:
        """What libxl does for a stubdom: ``domid`` acts for ``target`` in permissions."""
        self.targets[domid] = target

    def fire_special(self, name: str) -> None:
        """``@releaseDomain`` or ``@introduceDomain``: to every privileged watcher of it."""
        for conn in self.connections:
            if conn.domid == 0:
                conn.deliver(name, exact=True)

    # The test's eyes: reading without a connection, no request counted.

    def peek(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def value(self, path: str) -> bytes | None:
        node = self.nodes.get(path)
        return None if node is None else node.value

    def paths_under(self, top: str) -> list[str]:
        return sorted(p for p in self.nodes if is_under(p, top))

    # Commits.

    def injects_eagain(self) -> bool:
        return self.eagain is not None and self.eagain()

    def _commit(self, txn: _Txn) -> None:
        if not txn.changed:
            return
        self.generation += 1
        changes = []
        for path, perms_changed in txn.changed.items():
            node = txn.view[path]
            if node is None:
                self.nodes.pop(path, None)
            else:
                self.nodes[path] = replace(node, generation=self.generation)
            changes.append(Change(path, perms_changed))
        self.owned.update(txn.owned)
        if self._open:
            self._history.append((self.generation, changes))
        for path, exact in txn.fired():
            for conn in self.connections:
                conn.deliver(path, exact=exact)
        for observe in self.observers:
            observe(txn.conn, [c.path for c in changes])

    def _changed_since(self, generation: int) -> Iterator[Change]:
        for gen, changes in self._history:
            if gen > generation:
                yield from changes

    def _end(self, txn: _Txn) -> None:
        self._open.discard(txn)
        if not self._open:
            self._history.clear()


_EXACT = True
Answer = tuple[bool, object]
"""A request's answer as oxenstored compares it on replay: (refused, error or value)."""
REPLAYED = frozenset({"read", "directory", "get_perms", "write", "set_perms", "rm"})
"""The requests a transaction records (watches are not part of it)."""


def _answer(op: Callable[[_Txn, str], object], txn: _Txn, path: str) -> Answer:
    try:
        return False, op(txn, path)
    except Refused as e:
        return True, str(e)


@dataclass(eq=False)
class _Txn:
    """A transaction's view of the store, and what it did; outside a transaction, one
    request's, committed at once."""

    store: Store
    conn: Connection
    snapshot: bool
    start: int = 0
    base: Mapping[str, Node] = field(default_factory=dict)
    view: dict[str, Node | None] = field(default_factory=dict)
    """Every node accessed, as this transaction sees it now, in order of first access."""
    first: dict[str, int | None] = field(default_factory=dict)
    """Each accessed node's generation at its first access (None: absent)."""
    changed: dict[str, bool] = field(default_factory=dict)
    """Paths written or removed, in order: whether their permissions changed."""
    events: list[tuple[str, bool]] = field(default_factory=list)
    low_read: str | None = None
    low_write: str | None = None
    owned: Counter[int] = field(default_factory=Counter)
    requests: list[tuple[Callable[[_Txn, str], object], str, Answer]] = field(
        default_factory=list)
    """oxenstored's record of the transaction: each request and its answer, to replay."""

    def __post_init__(self) -> None:
        self.start = self.store.generation
        self.base = dict(self.store.nodes) if self.snapshot else self.store.nodes

    # The view.

    def get(self, path: str) -> Node | None:
        if path not in self.view:
            node = self.base.get(path)
            self.view[path] = node
            self.first[path] = None if node is None else node.generation
        return self.view[path]

    def put(self, path: str, node: Node | None) -> None:
        old = self.get(path)
        if old is not None:
            self.owned[old.owner] -= 1
        if node is not None:
            self.owned[node.owner] += 1
            self._check_size(node)
        self.view[path] = node
        perms_changed = (old is None or node is None or old.perms != node.perms)
        self.changed[path] = self.changed.get(path, False) or perms_changed

    def count(self, domid: int) -> int:
        return self.store.owned[domid] + self.owned[domid]

    def fired(self) -> list[tuple[str, bool]]:
        """The watch events of a commit: C xenstored fires once per node, in the order the
        transaction first accessed them; oxenstored once per operation, in order."""
        if self.store.flavour is Flavour.OCAML:
            return self.events
        exact = dict(self.events)
        return [(path, exact[path]) for path in self.view if path in exact]

    def resolve(self) -> _Txn | None:
        """What the commit applies: this transaction, or on oxenstored its replay on the
        current store; None when the commit answers EAGAIN."""
        store = self.store
        if store.flavour is Flavour.C:
            return None if self.stale() else self
        if not self.changed:
            return self  # oxenstored ends a read-only transaction without a commit
        if not store.injects_eagain() and not self.stale():
            return self
        replay = _Txn(store, self.conn, snapshot=True)
        if any(_answer(op, replay, path) != answer for op, path, answer in self.requests):
            return None
        return None if store.injects_eagain() else replay

    def stale(self) -> bool:
        """Whether a commit since this transaction began touched what it depends on: for
        C xenstored any node it accessed; for oxenstored (coalescing) the subtree at the
        common prefix of what it read or of what it wrote."""
        if self.store.flavour is Flavour.C:
            live = self.store.nodes
            return any((None if (n := live.get(p)) is None else n.generation) != gen
                       for p, gen in self.first.items())
        return any(self._subtree_changed(low) for low in (self.low_read, self.low_write)
                   if low is not None)

    def _subtree_changed(self, low: str) -> bool:
        """oxenstored's coalescing test: the node at ``low`` is not the one the snapshot
        had (something at or below it changed), or an ancestor's permissions changed."""
        return any(is_under(c.path, low) or (c.perms_changed and is_under(low, c.path))
                   for c in self.store._changed_since(self.start))

    # Access rights.

    def rights(self, node: Node) -> str:
        """perm_for_conn: dom0 and the owner (or its target's owner) may do anything;
        else the entry naming the domain (or its target), else the owner entry's letter."""
        conn = self.conn
        me = {conn.domid} | ({t} if (t := self.store.targets.get(conn.domid)) is not None
                             else set())
        if conn.privileged or node.owner in me:
            return "rwo"
        for letter, domid in node.perms[1:]:
            if domid in me:
                return _RIGHTS[letter]
        return _RIGHTS[node.perms[0][0]]

    def _closest(self, path: str) -> tuple[str, Node]:
        while path != "/":
            path = parent_of(path)
            if (node := self.get(path)) is not None:
                return path, node
        raise AssertionError("the root always exists")

    def _missing(self, path: str, right: str) -> Refused:
        """The error for a missing node: C xenstored answers EACCES unless the closest
        existing ancestor grants the right (it must not reveal what exists)."""
        if self.store.flavour is Flavour.OCAML:
            return Refused("ENOENT")
        _, ancestor = self._closest(path)
        return Refused("ENOENT" if right in self.rights(ancestor) else "EACCES")

    def _check_size(self, node: Node) -> None:
        if self.store.flavour is Flavour.C:
            if not self.conn.privileged and node.c_size() >= VALUE_MAX:
                raise Refused("ENOSPC")
        elif len(node.value) > VALUE_MAX:  # oxenstored: every domain, dom0 included
            raise Refused("E2BIG")

    # Requests.

    def readable(self, path: str) -> Node:
        self.low_read = _common(self.low_read, path)
        node = self.get(path)
        if node is None:
            raise self._missing(path, "r")
        if "r" not in self.rights(node):
            raise Refused("EACCES")
        return node

    def children(self, node: Node) -> list[str]:
        names = list(node.children)
        if sum(len(name) + 1 for name in names) > PAYLOAD_MAX:
            raise Refused("E2BIG")
        if self.store.flavour is Flavour.OCAML:
            return sorted(names, reverse=True)
        return names

    def write(self, path: str, value: bytes) -> None:
        node = self.get(path)
        if node is None:
            node = self._create(path)
        elif "w" not in self.rights(node):
            raise Refused("EACCES")
        else:
            self.low_write = _common(self.low_write, path)
        self.put(path, replace(node, value=value))
        self.events.append((path, not _EXACT))

    def _create(self, path: str) -> Node:
        """Create ``path`` and any missing parent, each inheriting its parent's
        permissions; not yet stored (the caller puts it)."""
        top, parent = self._closest(path)
        if "w" not in self.rights(parent):
            raise Refused("EACCES")
        names = path[len(top):].strip("/").split("/")
        where = top
        for i, name in enumerate(names):
            here = f"{where.rstrip('/')}/{name}"
            node = Node(b"", self._inherited(parent))
            self.low_write = _common(self.low_write, where)
            self.put(where, replace(parent, children=(*parent.children, name)))
            if i == len(names) - 1:
                return node
            self.put(here, node)
            where, parent = here, node
        raise AssertionError("a path has a last name")

    def _inherited(self, parent: Node) -> tuple[Perm, ...]:
        perms = parent.perms
        conn = self.conn
        if self.store.flavour is Flavour.C:
            if not conn.privileged:  # "unpriv domains own what they create"
                if self.count(conn.domid) >= ENTRIES_PER_DOMAIN:
                    raise Refused("ENOSPC")
                perms = ((perms[0][0], conn.domid), *perms[1:])
        elif not conn.privileged and parent.owner > 0 and (
                self.count(parent.owner) >= ENTRIES_PER_DOMAIN):
            raise Refused("EQUOTA")
        return perms

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        node = self.get(path)
        if node is None:
            raise self._missing(path, "w")
        rights = self.rights(node)
        if "o" not in rights or "w" not in rights:
            raise Refused("EACCES")
        if not self.conn.privileged and perms[0][1] != node.owner:
            raise Refused("EPERM" if self.store.flavour is Flavour.C else "EACCES")
        self.low_write = _common(self.low_write, path)
        self.put(path, replace(node, perms=perms))
        self.events.append((path, not _EXACT))

    def remove(self, path: str) -> None:
        node = self.get(path)
        if node is None:
            if self.get(parent_of(path)) is None:
                raise Refused("ENOENT")
            return
        if path == "/":
            raise Refused("EINVAL")
        if "w" not in self.rights(node):
            raise Refused("EACCES")
        self.low_write = _common(self.low_write, parent_of(path))
        doomed = [path]
        for here in doomed:  # grows as it goes: every node below, top-down
            below = self.get(here)
            assert below is not None
            doomed += [f"{here.rstrip('/')}/{c}" for c in below.children]
        for i, here in enumerate(doomed):
            self.put(here, None)
            self.events.append((here, i > 0))  # watchers of a node below see it go
        parent = self.get(parent_of(path))
        assert parent is not None
        name = path.rsplit("/", 1)[1]
        self.put(parent_of(path),
                 replace(parent, children=tuple(c for c in parent.children if c != name)))


class Connection:
    """One client of the store, as ``xsproto.adapters.xenstore.Xenstore`` is one of
    xenstored (``xsproto.io.XenstoreIO``)."""

    def __init__(self, store: Store, domid: int, *, name: str, plan: Plan) -> None:
        self.store, self.domid, self.name, self.plan = store, domid, name, plan
        self.requests: Counter[str] = Counter()
        """Requests sent, by wire message (``read``, ``write``, ``transaction_start``...)."""
        self.on_request: list[Callable[[str, str], None]] = []
        """Called with (message, path) before each request."""
        self.waiting: Callable[[Connection, float | None], None] | None = None
        """Called when ``next_batch`` finds no event queued: the simulation lets time pass
        and other agents run (it may raise to end the caller's loop)."""
        self.events: deque[tuple[str, str]] = deque()
        self.watches: list[tuple[str, str]] = []
        self.abandoned: list[tuple[str, frozenset[str]]] = []
        """Transactions that ended uncommitted through no choice of the caller, with the
        paths they accessed: ``conflicts`` (its last attempt conflicted too), ``torn`` (its
        function raised on a view another commit had torn: C's transactions are no
        snapshot, and the commit would have failed)."""
        self.closed = False
        self._txn: _Txn | None = None

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def close(self) -> None:
        """The process is gone: its watches and open transaction with it."""
        self.closed = True
        if self._txn is not None:
            self.store._end(self._txn)
            self._txn = None
        if self in self.store.connections:
            self.store.connections.remove(self)

    def deliver(self, path: str, *, exact: bool) -> None:
        for wpath, token in self.watches:
            if wpath == path or (not exact and not path.startswith("@")
                                 and is_under(path, wpath)):
                self.events.append((path, token))

    # The wire.

    def _abs(self, path: str) -> str:
        if not path.startswith(("/", "@")):
            path = f"/local/domain/{self.domid}/{path}"
        if len(path) > PATH_MAX or not (_PATH.fullmatch(path) or path in (
                RELEASE_DOMAIN, INTRODUCE_DOMAIN)):
            raise Refused("EINVAL")
        return path

    def _send(self, message: str, path: str) -> None:
        if self.closed:
            raise XenstoreError("connection closed", path=path)
        self.plan.reach(FaultPoint.REQUEST)
        self.requests[message] += 1
        for hook in self.on_request:
            hook(message, path)

    def _wire(self, message: str, path: str, op: Callable[[_Txn, str], T]) -> T:
        """Send one request; a refusal is raised as xenstored's error (``Refused``)."""
        self._send(message, path)
        txn = self._txn or _Txn(self.store, self, snapshot=False)
        where = self._abs(path)
        try:
            result = op(txn, where)
        except Refused as e:
            if txn is self._txn and message in REPLAYED:
                txn.requests.append((op, where, (True, str(e))))
            if txn is not self._txn and self.store.flavour is Flavour.OCAML:
                self.store._commit(txn)  # oxenstored keeps what a failing request did
            raise
        if txn is not self._txn:
            self.store._commit(txn)
        elif message in REPLAYED:
            txn.requests.append((op, where, (False, result)))
        return result

    def _request(self, message: str, path: str, op: Callable[[_Txn, str], T]) -> T | None:
        """``_wire`` as the adapter reads it: ENOENT is None, any other refusal is
        XenstoreError."""
        try:
            return self._wire(message, path, op)
        except Refused as e:
            if str(e) == "ENOENT":
                return None
            raise XenstoreError(str(e), path=path) from e

    def ask(self, message: str, path: str, *args: str) -> str:
        """One raw request, answered as a guest's raw client sees it: ``OK [value]`` or
        ``ERR <error>`` (``message``: read, write, set_perms)."""
        ops: dict[str, Callable[[_Txn, str], object]] = {
            "read": lambda t, p: t.readable(p).value.decode(),
            "write": lambda t, p: t.write(p, args[0].encode()),
            "set_perms": lambda t, p: t.set_perms(p, parse_perms(args)),
        }
        try:
            value = self._wire(message, path, ops[message])
        except Refused as e:
            return f"ERR {e}"
        return "OK" if value is None else f"OK {value}"

    # xsproto.io.XenstoreIO

    def read(self, path: str) -> bytes | None:
        return self._request("read", path, lambda t, p: t.readable(p).value)

    def children(self, path: str) -> list[str]:
        return self._request("directory", path, lambda t, p: t.children(t.readable(p))) or []

    def perms(self, path: str) -> list[str] | None:
        return self._request("get_perms", path, lambda t, p: show_perms(t.readable(p).perms))

    def owner(self, path: str) -> int | None:
        perms = self.perms(path)
        return int(perms[0][1:]) if perms else None

    def write(self, path: str, value: bytes) -> None:
        self._request("write", path, lambda t, p: t.write(p, value))

    def set_perms(self, path: str, perms: Iterable[str]) -> None:
        wanted = list(perms)
        self._request("set_perms", path, lambda t, p: t.set_perms(p, parse_perms(wanted)))

    def remove(self, path: str) -> None:
        self._request("rm", path, lambda t, p: t.remove(p))

    def transact(self, fn: Callable[[Connection], T], *,
                 attempts: int = TRANSACTION_ATTEMPTS) -> T:
        """Run ``fn(self)`` in a transaction, again while the commit says EAGAIN."""
        if self._txn is not None:
            raise XenstoreError("already in a transaction: transact() does not nest")
        for _ in range(attempts):
            self._send("transaction_start", "")
            txn = self._txn = _Txn(self.store, self, snapshot=self.store.flavour
                                   is Flavour.OCAML)
            self.store._open.add(txn)
            try:
                result = fn(self)
                self.plan.reach(FaultPoint.BEFORE_COMMIT)
            except Crash:
                raise  # the process died: it sends nothing more (close() ends the txn)
            except ProtocolError:
                # As the adapter: a read-only transaction whose view did not hold together
                # may be a torn view; its commit tells (conflict: run it again).
                if txn.changed:
                    self._end_txn(txn)
                    self._send("transaction_end", "")
                    raise
                conflict = txn.resolve() is None
                self._send("transaction_end", "")
                self._end_txn(txn)
                if conflict:
                    self.abandoned.append(("torn", frozenset(txn.view)))
                    continue
                raise
            except BaseException:
                if txn.stale():
                    self.abandoned.append(("torn", frozenset(txn.view)))
                self._end_txn(txn)
                self._send("transaction_end", "")  # the adapter's rollback
                raise
            self._send("transaction_end", "")
            applied = txn.resolve()
            if applied is not None:
                self.store._commit(applied)
            self._end_txn(txn)
            if applied is not None:
                self.plan.reach(FaultPoint.AFTER_COMMIT)
                return result
        self.abandoned.append(("conflicts", frozenset(txn.view)))
        raise TransactionConflict(f"transaction still conflicting after {attempts} attempts")

    def _end_txn(self, txn: _Txn) -> None:
        self._txn = None
        self.store._end(txn)

    def watch(self, path: str, token: str) -> None:
        """Register; xenstored fires the watch once at once, and refuses one this
        connection already has (EEXIST)."""
        def register(t: _Txn, p: str) -> None:
            if (p, token) in self.watches:
                raise Refused("EEXIST")
            self.watches.append((p, token))
            self.events.append((p, token))

        self._request("watch", path, register)

    def unwatch(self, path: str, token: str) -> None:
        """Events already queued stay queued (the adapter reads them all)."""
        def unregister(t: _Txn, p: str) -> None:
            if (p, token) in self.watches:
                self.watches.remove((p, token))

        self._request("unwatch", path, unregister)

    def next_batch(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """The queued events, each distinct one once (see the adapter's ``next_batch``);
        with none queued, ``waiting`` decides what happens meanwhile."""
        if not self.events and self.waiting is not None:
            self.waiting(self, timeout)
        batch: dict[tuple[str, str], None] = {}
        while self.events and len(batch) < BATCH_MAX:
            batch[self.events.popleft()] = None
        return list(batch)

    def event_batches(self) -> Iterator[list[tuple[str, str]]]:
        while batch := self.next_batch():
            yield batch
