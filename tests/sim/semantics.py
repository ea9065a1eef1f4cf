"""The rules the simulated xenstored claims of the real ones, as data and scenarios that
run alike against the simulator (tests/unit/test_sim_semantics.py) and the real daemons
(tests/lab/test_sim_semantics.py), with the outcome each flavour gives.

``guest_probes``: raw requests of an unprivileged domain (in the lab, a PV guest's shell
speaking the wire protocol to /dev/xen/xenbus). ``DOM0_SCENARIOS``: dom0 connections,
through ``xsproto.io.XenstoreIO`` (in the lab, the real adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tests.sim.xenstore import C_NODE_HEADER, ENTRIES_PER_DOMAIN, VALUE_MAX, Flavour, make_dir
from tools.lab import initramfs
from xsproto.errors import XenstoreError
from xsproto.io import XenstoreIO

SHARED: Final = "sim-shared"
"""Made by dom0 in the guest's home before the probes, writable but not readable by the
guest (``n0 w<D>``): what the guest creates there shows who owns a created node."""
DEEP: Final = 350
"""Nodes one deep write creates: three of them take a guest past its entry quota."""
RESULTS: Final = "data/sim-results"
"""Where the guest writes its answers."""
ANY: Final = "*"
"""An expected permission list that is not checked."""


@dataclass(frozen=True)
class Probe:
    """One raw request of the guest. ``{D}`` stands for its domain id and ``{T}`` for its
    target's (the guest it serves, as a stubdom does); a relative path is below its home.
    ``answer`` is what it reads back; ``perms`` what dom0 then reads of the node's
    permissions (() for absent, ANY unchecked)."""

    name: str
    message: str
    path: str
    args: tuple[str, ...] = ()
    answer: str = "OK"
    perms: tuple[str, ...] = (ANY,)

    def at(self, domid: int, target: int) -> Probe:
        def fill(text: str) -> str:
            return text.replace("{D}", str(domid)).replace("{T}", str(target))

        return Probe(self.name, self.message, fill(self.path), tuple(map(fill, self.args)),
                     fill(self.answer), tuple(map(fill, self.perms)))


def largest_value(flavour: Flavour) -> int:
    """The largest value an unprivileged domain may write in a new node with one
    permission entry: C xenstored counts the node's whole record, oxenstored the value."""
    return VALUE_MAX - C_NODE_HEADER - 8 - 1 if flavour is Flavour.C else VALUE_MAX


def deep(name: str) -> str:
    return f"data/{name}" + "/a" * (DEEP - 1)


def guest_probes(flavour: Flavour) -> list[Probe]:
    """The guest's probes in order, with what ``flavour`` answers."""
    c = flavour is Flavour.C
    big = largest_value(flavour)
    over_quota = "ERR ENOSPC" if c else "ERR EQUOTA"
    assert 3 * DEEP > ENTRIES_PER_DOMAIN > 2 * DEEP + 100
    return [
        Probe("domid", "read", "domid", answer="OK {D}"),
        # Only dom0 writes the decision; a guest cannot write in dom0's device-model area.
        Probe("write-libxl", "write", "/libxl/{D}/extra-pages", ("granted",),
              "ERR EACCES", ()),
        Probe("write-dm-area", "write", "/local/domain/0/device-model/{D}/extra-pages",
              ("1",), "ERR EACCES", ()),
        # A missing node under one the guest may not read: C hides whether it exists.
        Probe("read-hidden", "read", "/libxl/{D}/extra-pages",
              answer="ERR EACCES" if c else "ERR ENOENT"),
        Probe("read-missing", "read", "data/sim-none", answer="ERR ENOENT"),
        # A created node inherits its parent's permissions; in C its creator owns it.
        Probe("write-own", "write", "data/sim-own", ("x",), perms=("n{D}",)),
        Probe("write-shared", "write", f"{SHARED}/x", ("x",),
              perms=("n{D}" if c else "n0", "w{D}")),
        Probe("chown", "set_perms", "data/sim-own", ("n0",),
              "ERR EPERM" if c else "ERR EACCES", ("n{D}",)),
        Probe("set-perms-unowned", "set_perms", "name", ("n{D}",), "ERR EACCES",
              ("n0", "r{D}")),
        # A stubdom (a domain with a target) acts for its guest: it reads what its guest
        # may read, but before any decision the guest's record is hidden on C.
        Probe("target-read", "read", "/local/domain/{T}/domid", answer="OK {T}"),
        Probe("target-read-hidden", "read", "/libxl/{T}/extra-pages",
              answer="ERR EACCES" if c else "ERR ENOENT"),
        Probe("target-area", "write", "/local/domain/{D}/device-model/{T}/extra-pages",
              ("1",), perms=("n{D}", "r{T}")),
        # Quotas: the size of a node, the nodes a domain owns (C undoes a refused write
        # whole; oxenstored keeps the parents it made, so the domain is at its quota).
        Probe("value-at-quota", "write", "data/sim-v1", ("x" * big,)),
        Probe("value-over-quota", "write", "data/sim-v2", ("x" * (big + 1),),
              "ERR ENOSPC" if c else "ERR E2BIG", ()),
        Probe("entries-1", "write", deep("q1"), ("x",)),
        Probe("entries-2", "write", deep("q2"), ("x",)),
        Probe("entries-3", "write", deep("q3"), ("x",), over_quota, ()),
        Probe("entries-4", "write", "data/q4", ("x",), "OK" if c else over_quota),
    ]


# dom0's scenarios: each gets a way to open connections and a fresh directory of its
# own, and returns what it observed.

Connect = Callable[[], XenstoreIO]
WAIT = 2.0
"""Seconds a real connection waits for events that should come (none should be late)."""
QUIET = 0.5
"""Seconds a real connection waits to see that no event comes."""


def _committed(conn: XenstoreIO, fn: Callable[[XenstoreIO], object]) -> str:
    """``committed``, or ``conflict`` when the commit answers EAGAIN (one attempt)."""
    try:
        conn.transact(fn, attempts=1)
    except XenstoreError:
        return "conflict"
    return "committed"


def parents_inherit(connect: Connect, top: str) -> object:
    """A write creates the missing parents, each with its parent's permissions."""
    a = connect()
    make_dir(a, top, ["n0", "r5"])
    a.write(f"{top}/x/y/z", b"v")
    return [a.perms(f"{top}/{p}") for p in ("x", "x/y", "x/y/z")]


def remove_recursive(connect: Connect, top: str) -> object:
    """A remove takes everything below; removing what is absent is no error."""
    a = connect()
    a.write(f"{top}/r/a/b", b"1")
    a.write(f"{top}/r/c", b"2")
    a.remove(f"{top}/r")
    a.remove(f"{top}/absent")
    return a.children(top), a.read(f"{top}/r/a/b")


def conflict_on_read(connect: Connect, top: str) -> object:
    """A transaction that read a node another connection then changed and writes
    (elsewhere) fails; one that only reads fails on C xenstored, while oxenstored ends a
    read-only transaction without a commit (it read a snapshot)."""
    a, b = connect(), connect()
    a.write(f"{top}/x", b"1")

    def writes(t: XenstoreIO) -> None:
        t.read(f"{top}/x")
        b.write(f"{top}/x", b"2")
        t.write(f"{top}/y", b"1")

    def reads(t: XenstoreIO) -> None:
        t.read(f"{top}/x")
        b.write(f"{top}/x", b"3")

    return _committed(a, writes), a.read(f"{top}/y"), _committed(a, reads)


def blind_write_conflicts(connect: Connect, top: str) -> object:
    """A transaction that wrote a node another connection then changed: C xenstored fails
    it; oxenstored replays its write on the current store and commits (the last commit
    wins)."""
    a, b = connect(), connect()
    a.write(f"{top}/x", b"1")

    def writes(t: XenstoreIO) -> None:
        t.write(f"{top}/x", b"a")
        b.write(f"{top}/x", b"b")

    return _committed(a, writes), a.read(f"{top}/x")


def unrelated_commit(connect: Connect, top: str) -> object:
    """A commit elsewhere does not fail a transaction."""
    a, b = connect(), connect()
    a.write(f"{top}/t/x", b"1")
    b.write(f"{top}/u/y", b"1")

    def step(t: XenstoreIO) -> None:
        t.read(f"{top}/t/x")
        b.write(f"{top}/u/y", b"2")
        t.write(f"{top}/t/z", b"1")

    return _committed(a, step)


def sibling_created(connect: Connect, top: str) -> object:
    """A node created beside the nodes a transaction read fails neither: C xenstored
    tracks nodes, and oxenstored, whose subtree test fails, replays the transaction and
    gets the same answers."""
    a, b = connect(), connect()
    a.write(f"{top}/s/a", b"1")
    a.write(f"{top}/s/b", b"1")

    def step(t: XenstoreIO) -> None:
        t.read(f"{top}/s/a")
        t.read(f"{top}/s/b")
        b.write(f"{top}/s/c", b"1")
        t.write(f"{top}/s/a", b"2")

    return _committed(a, step)


def replay_differs(connect: Connect, top: str) -> object:
    """A transaction that listed a directory to which another connection then added a
    node, and writes below it, fails on both: oxenstored's replay lists the new child (the
    watcher's budget sum relies on this)."""
    a, b = connect(), connect()
    a.write(f"{top}/d/a", b"1")

    def step(t: XenstoreIO) -> None:
        t.children(f"{top}/d")
        b.write(f"{top}/d/b", b"2")
        t.write(f"{top}/d/a", b"2")

    return _committed(a, step), a.read(f"{top}/d/b")


def mixed_view(connect: Connect, top: str) -> object:
    """What a transaction reads of a node first read after another commit: C xenstored
    gives the new value (a transaction is no snapshot: it can see half of another
    commit, and only its own commit fails), oxenstored the value at its start (and the
    read-only transaction ends well)."""
    a, b = connect(), connect()
    a.write(f"{top}/x", b"1")
    a.write(f"{top}/y", b"1")
    seen: list[bytes | None] = []

    def other(t: XenstoreIO) -> None:
        t.write(f"{top}/x", b"2")
        t.write(f"{top}/y", b"2")

    def step(t: XenstoreIO) -> None:
        seen.append(t.read(f"{top}/x"))
        b.transact(other)
        seen.append(t.read(f"{top}/y"))

    return _committed(a, step), seen


def dom0_value_quota(connect: Connect, top: str) -> object:
    """oxenstored's node size quota binds dom0 too; C xenstored's does not."""
    a = connect()
    out = []
    for size in (VALUE_MAX, VALUE_MAX + 1):
        try:
            a.write(f"{top}/v{size}", b"x" * size)
            out.append("ok")
        except XenstoreError:
            out.append("refused")
    return out


def _events(conn: XenstoreIO, count: int) -> list[tuple[str, str]]:
    """The next ``count`` events (fewer if they do not come within WAIT seconds)."""
    got: list[tuple[str, str]] = []
    while len(got) < count and (batch := conn.next_batch(timeout=WAIT)):
        got += batch
    return got


def watch_fires_when_registered(connect: Connect, top: str) -> object:
    """A watch fires once as soon as it is registered, whether its node exists or not."""
    a = connect()
    a.watch(f"{top}/absent", "t")
    return _events(a, 1), a.next_batch(timeout=QUIET)


def watch_twice_refused(connect: Connect, top: str) -> object:
    """A connection cannot register the same watch (path and token) twice; another token
    on the same path is another watch."""
    a = connect()
    a.watch(top, "t")
    try:
        a.watch(top, "t")
        again = "ok"
    except XenstoreError:
        again = "refused"
    a.watch(top, "u")
    return again


def watch_fires_on_commit(connect: Connect, top: str) -> object:
    """Nothing fires before a transaction commits; then one event per node it wrote, in
    order, to watchers of the nodes or of a parent (not of a child)."""
    a, b = connect(), connect()
    a.watch(top, "parent")
    a.watch(f"{top}/1/child", "child")
    _events(a, 2)
    before: list[list[tuple[str, str]]] = []

    def step(t: XenstoreIO) -> None:
        for key in ("1", "2", "3"):
            t.write(f"{top}/{key}", key.encode())
        before.append(a.next_batch(timeout=QUIET))

    b.transact(step)
    return before, _events(a, 3), a.next_batch(timeout=QUIET)


def watch_fires_on_remove(connect: Connect, top: str) -> object:
    """A remove fires for the node removed, and for watchers of nodes below it."""
    a, b = connect(), connect()
    a.write(f"{top}/r/x/y", b"1")
    a.watch(top, "top")
    a.watch(f"{top}/r/x/y", "below")
    _events(a, 2)
    b.remove(f"{top}/r")
    return sorted(_events(a, 2))


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Connect, str], object]
    expected: Callable[[Flavour, str], object]
    """What ``run`` returns on ``flavour`` in directory ``top``."""


def _same(value: Callable[[str], object]) -> Callable[[Flavour, str], object]:
    return lambda flavour, top: value(top)


DOM0_SCENARIOS: Final = {
    "parents-inherit": Scenario(parents_inherit, _same(lambda top: [["n0", "r5"]] * 3)),
    "remove-recursive": Scenario(remove_recursive, _same(lambda top: ([], None))),
    "conflict-on-read": Scenario(conflict_on_read, lambda flavour, top: (
        "conflict", None, "conflict" if flavour is Flavour.C else "committed")),
    "blind-write-conflicts": Scenario(blind_write_conflicts, lambda flavour, top: (
        ("conflict", b"b") if flavour is Flavour.C else ("committed", b"a"))),
    "unrelated-commit": Scenario(unrelated_commit, _same(lambda top: "committed")),
    "sibling-created": Scenario(sibling_created, _same(lambda top: "committed")),
    "replay-differs": Scenario(replay_differs, _same(lambda top: ("conflict", b"2"))),
    "mixed-view": Scenario(mixed_view, lambda flavour, top: (
        ("conflict", [b"1", b"2"]) if flavour is Flavour.C else ("committed", [b"1", b"1"]))),
    "dom0-value-quota": Scenario(dom0_value_quota, lambda flavour, top: [
        "ok", "ok" if flavour is Flavour.C else "refused"]),
    "watch-fires-when-registered": Scenario(
        watch_fires_when_registered, _same(lambda top: ([(f"{top}/absent", "t")], []))),
    "watch-twice-refused": Scenario(watch_twice_refused, _same(lambda top: "refused")),
    "watch-fires-on-commit": Scenario(watch_fires_on_commit, _same(lambda top: (
        [[]], [(f"{top}/{k}", "parent") for k in ("1", "2", "3")], []))),
    "watch-fires-on-remove": Scenario(watch_fires_on_remove, _same(lambda top: [
        (f"{top}/r", "top"), (f"{top}/r/x/y", "below")])),
}


# The guest's own executor of the probes: its init script.

WIRE: Final = {"read": 2, "write": 11, "set_perms": 14}
"""xs_wire.h message types; an answer of type 16 (XS_ERROR) carries the error's name."""
GUEST_INIT = r"""#!/bin/sh
# The simulator's semantics probes: raw xenstore requests on /dev/xen/xenbus (or on
# $XENBUS, where the unit tests serve the simulator).
if [ $$ = 1 ]; then
  /bin/busybox --install -s /bin
  mount -t proc proc /proc
  mount -t devtmpfs dev /dev
fi
stay() { while :; do sleep 3600; done; }
exec 3<>"${XENBUS:-/dev/xen/xenbus}" || { echo "sim-probe: no xenbus device"; stay; }
""" + initramfs.XENBUS_SH + r"""
until ask 2 12 '%s\0' data/sim-go; [ "$ANSWER" = "OK 1" ]; do sleep 1; done
ask 2 6 '%s\0' domid
D=${ANSWER#OK }
ask 2 16 '%s\0' data/sim-target
T=${ANSWER#OK }
R=
"""


def _shell(text: str) -> str:
    """A probe's path or argument as a shell word, the guest's domain id substituted."""
    return '"' + text.replace("{D}", "${D}").replace("{T}", "${T}") + '"'


def _ask(message: str, words: list[str]) -> str:
    """The shell line sending one request: ``words`` (shell words) NUL-separated, a
    written value without its NUL."""
    length = " + ".join(f"${{#{i}}} + 1" for i in range(1, len(words) + 1))
    fmt = "%s\\0" * len(words)
    if message == "write":
        length, fmt = f"{length} - 1", "%s\\0%s"
    return f"set -- {' '.join(words)}; ask {WIRE[message]} $(({length})) '{fmt}' \"$@\""


def guest_init(probes: list[Probe]) -> str:
    """The init script: wait for dom0's go, run the probes, write their answers (as
    ``name=answer;...``) in RESULTS."""
    lines = [GUEST_INIT]
    for p in probes:
        words = [_shell(p.path), *map(_shell, p.args)]
        lines.append(f"{_ask(p.message, words)}; R=\"${{R}}{p.name}=$ANSWER;\"")
    lines.append(_ask("write", [RESULTS, '"$R"']))
    lines.append('echo "sim-probe: done $ANSWER"; stay')
    return "\n".join(lines) + "\n"


def prepare_guest(xs: XenstoreIO, domid: int, target: int,
                  set_target: Callable[[int, int], None]) -> None:
    """dom0's part before the guest probes, as libxl does for a stubdom: the guest's
    target and its device-model directory for it (``n<D> r<T>``); the shared directory;
    the node for the results (made beforehand: the guest is at its entry quota by then);
    and the go."""
    home = f"/local/domain/{domid}"
    set_target(domid, target)
    make_dir(xs, f"{home}/device-model/{target}", [f"n{domid}", f"r{target}"])
    make_dir(xs, f"{home}/{SHARED}", ["n0", f"w{domid}"])
    xs.write(f"{home}/{RESULTS}", b"")
    xs.write(f"{home}/data/sim-target", str(target).encode())
    xs.write(f"{home}/data/sim-go", b"1")


def answers(raw: bytes) -> dict[str, str]:
    """The guest's results node: ``name=answer;...``."""
    return dict(item.split("=", 1) for item in raw.decode().split(";") if item)


def perms_after(xs: XenstoreIO, probe: Probe, domid: int) -> tuple[str, ...]:
    """What dom0 reads of the probed node's permissions, as ``Probe.perms`` puts it."""
    if probe.perms == (ANY,):
        return probe.perms
    path = probe.path if probe.path.startswith("/") else f"/local/domain/{domid}/{probe.path}"
    return tuple(xs.perms(path) or ())
