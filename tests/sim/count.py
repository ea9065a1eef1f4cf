"""``python -m tests.sim.count``: the xenstore requests of one granted negotiation, on both
sides (the device model's connection and the watcher's), by wire message and by the
xsproto function that sent them.

The simulator's connections send what the real adapter sends for each call, so these are
the counts on a real xenstored, for the schedule where the device model wakes once: its
wait lets the watcher finish (applying, the hypercall, granted) before it reads again.
Each further wake-up (say, on the ``applying`` commit) costs the device model one more
``read_decision``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType

from tests.sim.host import Host
from tests.sim.xenstore import Connection, Flavour

BASE_PAGES = 1000


@dataclass
class Tally:
    """One connection's requests: by message, and by (sender, message)."""

    messages: Counter[str] = field(default_factory=Counter)
    sites: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.messages.values())


def sender() -> str:
    """The innermost xsproto function on the stack and the one that called it, lambdas
    skipped (``read_decision < _answer``)."""
    names: list[str] = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and len(names) < 2:
        name = frame.f_code.co_qualname.replace("<locals>.", "").removeprefix("Watcher.")
        if frame.f_globals.get("__name__", "").startswith("xsproto.") and (
                "<lambda>" not in name and name not in names):
            names.append(name)
        frame = frame.f_back
    return " < ".join(names)


def negotiate(flavour: Flavour, *, again: bool) -> dict[str, Tally]:
    """Count one granted request for a fresh domain (``again``: for a domain that holds
    a grant already, asking for more)."""
    host = Host(flavour)
    host.watcher("watcher").start()
    guest = host.create_guest(BASE_PAGES)
    host.settle()
    if again:
        host.request(guest.domid, 32)
    tallies: dict[str, Tally] = {}

    def count(conn: Connection) -> None:
        tally = tallies.setdefault(conn.name.split("-")[0], Tally())

        def sent(message: str, path: str) -> None:
            tally.messages[message] += 1
            tally.sites[sender(), message] += 1

        conn.on_request.append(sent)

    watcher = host.watchers["watcher"].conn
    assert watcher is not None
    count(watcher)
    host.store.on_connect.append(count)
    record = host.request(guest.domid, 64)
    assert not isinstance(record, Exception) and record.granted_pages == 64, record
    return tallies


def report(flavour: Flavour, *, again: bool, tallies: dict[str, Tally] | None = None) -> str:
    """The counts of ``negotiate`` (run now, unless given), per side and sender."""
    tallies = tallies or negotiate(flavour, again=again)
    what = "raising an existing grant" if again else "a first grant"
    lines = [f"{flavour.name} xenstored, {what}: "
             f"{sum(t.total for t in tallies.values())} requests"]
    for side in ("dm", "watcher"):
        tally = tallies[side]
        lines.append(f"  {side}: {tally.total} "
                     f"({', '.join(f'{m} {n}' for m, n in tally.messages.most_common())})")
        for (site, message), n in sorted(tally.sites.items()):
            lines.append(f"    {n:3d} {message:18s} {site}")
    return "\n".join(lines)


def main() -> None:
    for flavour in Flavour:
        for again in (False, True):
            print(report(flavour, again=again))


if __name__ == "__main__":
    main()
