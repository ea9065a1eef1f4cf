"""The simulated xenstored as a stand-in for the real one: it implements the Protocols,
sends the requests the real adapter sends, and stays out of the product.

(Its rules as xenstored's are tests/unit/test_sim_semantics.py.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.faults import Crash, FaultPoint, Plan, crash
from tests.sim.xen import Hypercalls, Xen
from tests.sim.xenstore import Connection, Flavour, Store, make_dir
from tests.unit.test_xenstore_adapter import FakeXenstored
from xsproto.adapters import xenstore_records
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import XenstoreError
from xsproto.io import HypervisorIO, XenstoreIO

PACKAGE = Path(__file__).resolve().parents[2] / "xsproto"
WIRE_NAMES = {1: "directory", 2: "read", 3: "get_perms", 4: "watch", 5: "unwatch",
              6: "transaction_start", 7: "transaction_end", 11: "write", 13: "rm",
              14: "set_perms"}
"""xs_wire.h's message types, by the names the simulator counts them under."""


def test_the_simulator_implements_the_protocols() -> None:
    """Checked by mypy: the simulator stands where the adapters stand."""
    store = Store()
    xs: XenstoreIO = store.connect(0)
    hv: HypervisorIO = Hypercalls(Xen(store, free_pages=0), "test")
    assert xs and hv


def test_no_product_module_imports_the_tests() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "tests" or n.startswith("tests.") for n in names), path


def calls(xs: XenstoreIO) -> None:
    """A bit of every call of ``XenstoreIO`` that sends requests."""
    xs.write("/a/b", b"1")
    xs.write("/a/d", b"x=1\n")
    xs.set_perms("/a/d", ["n0", "r3"])
    xs.read("/a/b")
    xs.read("/a/none")
    xs.children("/a")
    xenstore_records.read_request(xs, 0, 5)
    xs.owner("/a/d")
    xs.set_perms("/a/b", ["n0"])
    xs.transact(lambda t: t.write("/a/t", t.read("/a/b") or b""))
    with pytest.raises(ValueError):
        xs.transact(lambda t: _fail(t.read("/a/b")))
    xs.watch("/a", "tok")
    xs.unwatch("/a", "tok")
    xs.remove("/a")


def _fail(_: object) -> None:
    raise ValueError


@pytest.fixture
def fake_xenstored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeXenstored]:
    server = FakeXenstored(str(tmp_path_factory.mktemp("xsd") / "s"))
    yield server
    server.close()


def test_each_call_sends_the_requests_the_adapter_sends(
        fake_xenstored: FakeXenstored) -> None:
    with Xenstore(fake_xenstored.path) as real:
        calls(real)
    sent: list[str] = []
    sim = Store().connect(0)
    sim.on_request.append(lambda message, path: sent.append(message))
    calls(sim)
    assert sent == [WIRE_NAMES[op] for op, _, _ in fake_xenstored.requests]
    assert sum(sim.requests.values()) == len(sent)


def test_a_transaction_is_retried_while_it_conflicts() -> None:
    store = Store()
    a, b = store.connect(0), store.connect(0)
    a.write("/x", b"0")
    runs = []

    def step(t: Connection) -> None:
        runs.append(t.read("/x"))
        if len(runs) < 3:
            b.write("/x", str(len(runs)).encode())
        t.write("/y", b"done")

    a.transact(step)
    assert runs == [b"0", b"1", b"2"]
    assert a.requests["transaction_start"] == a.requests["transaction_end"] == 3
    with pytest.raises(XenstoreError, match="after 2 attempts"):
        a.transact(lambda t: b.write("/x", t.read("/x") or b""), attempts=2)


def test_eagain_injection_fails_commits() -> None:
    """oxenstored's test-eagain fails a commit and then its replay's (two verdicts)."""
    verdicts = iter([True, True, False])
    store = Store(Flavour.OCAML, eagain=lambda: next(verdicts))
    conn = store.connect(0)
    conn.transact(lambda t: t.write("/x", b"1"))
    assert conn.requests["transaction_start"] == 2
    assert store.value("/x") == b"1"


@pytest.mark.parametrize("point", [FaultPoint.REQUEST, FaultPoint.BEFORE_COMMIT])
def test_a_crash_in_a_transaction_loses_it(point: FaultPoint) -> None:
    store = Store()
    plan = Plan()
    conn = store.connect(0, plan=plan)
    plan.at(point, 2 if point is FaultPoint.REQUEST else 1, crash)
    with pytest.raises(Crash):
        conn.transact(lambda t: t.write("/x", b"1"))
    conn.close()
    assert store.value("/x") is None
    assert not store._open


def test_a_plan_runs_others_first_at_the_nth_point() -> None:
    store = Store()
    plan = Plan()
    a, b = store.connect(0, plan=plan), store.connect(0)
    a.write("/x", b"0")
    plan.at(FaultPoint.BEFORE_COMMIT, 1, lambda: b.write("/x", b"b"))
    attempts: list[bytes | None] = []

    def step(t: Connection) -> None:
        attempts.append(t.read("/x"))
        t.write("/x", b"a")

    a.transact(step)
    assert attempts == [b"0", b"b"]  # overtaken once, then committed
    assert store.value("/x") == b"a"
    assert plan.reached[FaultPoint.AFTER_COMMIT] == 1
    assert not list(plan.pending)


def test_a_batch_holds_each_distinct_event_once_and_waiting_fills_it() -> None:
    store = Store()
    watcher, writer = store.connect(0), store.connect(0)
    watcher.watch("/w", "t")
    writer.write("/w", b"1")
    writer.write("/w", b"2")
    assert watcher.next_batch() == [("/w", "t")]
    waits: list[float | None] = []

    def meanwhile(conn: Connection, timeout: float | None) -> None:
        waits.append(timeout)
        writer.write("/w/x", b"3")

    watcher.waiting = meanwhile
    assert watcher.next_batch(timeout=5.0) == [("/w/x", "t")]
    assert waits == [5.0]


def test_relative_paths_are_below_the_connections_home() -> None:
    store = Store()
    make_dir(store.connect(0), "/local/domain/7", ["n0", "r7"])
    store.connect(0).write("/local/domain/7/domid", b"7")
    assert store.connect(7).read("domid") == b"7"


def test_a_closed_connection_drops_its_watches() -> None:
    store = Store()
    conn: Connection = store.connect(0)
    conn.watch("/w", "t")
    conn.close()
    store.connect(0).write("/w", b"1")
    assert list(conn.events) == [("/w", "t")]  # the registration's, nothing after
    with pytest.raises(XenstoreError):
        conn.read("/w")
