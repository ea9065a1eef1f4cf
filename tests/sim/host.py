"""One simulated host: xenstored, Xen, the toolstack's part (libxl, xl, the admin) and the
agents, driven through the real xsproto code.

Agents run one at a time, nested: a watcher serves its events through the real
``Watcher.run_forever`` until its queue is empty (its connection's ``next_batch`` then
raises ``Stop``); a device model runs the real ``request_pages``, and while it waits the
host serves the watchers and lets fake time pass. Another agent overtakes one only at a
fault point its ``Plan`` names, and an agent that crashes is dropped with its
connection, as kill -9 would leave it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from tests.sim.faults import Crash, Plan
from tests.sim.xen import Domain, Hypercalls, Xen
from tests.sim.xenstore import INTRODUCE_DOMAIN, Connection, Flavour, Store, make_dir
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents import image_grants
from xsproto.agents.device_model import request_pages
from xsproto.agents.watcher import RESCAN_SECONDS, Watcher
from xsproto.errors import XsprotoError
from xsproto.grant import Grant
from xsproto.policy import Policy
from xsproto.records import DecisionRecord
from xsproto.values import DEFAULT_TIMEOUT

T = TypeVar("T")

SLACK_PAGES = 256
"""libxl's limit is the target plus 1 MiB: a guest holds that much less than its base."""
STUBDOM_PAGES = 64
DOM0_PAGES = 1 << 18
SETTLE_ROUNDS = 50
"""Rounds of serving every watcher with events, after which they are said to livelock."""


class Clock:
    """Fake monotonic time: it moves only when the simulation says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Stop(BaseException):
    """Ends a watcher's ``run_forever`` once its queue is empty: control goes back to the
    simulation (a BaseException, so that the watcher's guards let it through)."""


@dataclass
class Guest:
    """A domain libxl created, and its device model's domain (0, or its stubdom)."""

    domid: int
    name: str
    base_pages: int
    dm: int = 0
    dm_pages: int = 0
    """Extra pages its device model populated."""


@dataclass(frozen=True)
class Image:
    """What ``xsproto save`` wrote: the config, the grant in the xl header, the memory."""

    name: str
    base_pages: int
    stubdom: bool
    grant: Grant | None
    guest_pages: int
    dm_pages: int


class WatcherSlot:
    """One watcher daemon: started, killed (its connection closes with it), restarted.
    Its ``plan`` outlives each process, so that faults can be planned across restarts."""

    def __init__(self, host: Host, name: str) -> None:
        self.host, self.name = host, name
        self.plan = Plan()
        self.watcher: Watcher | None = None
        self.conn: Connection | None = None
        self.busy = False
        self.crashes = 0
        self._idle = False

    @property
    def up(self) -> bool:
        return self.watcher is not None

    @property
    def pending(self) -> bool:
        return self.conn is not None and bool(self.conn.events)

    def start(self) -> None:
        assert not self.up, f"watcher {self.name} is running"
        self.conn = self.host.store.connect(0, name=self.name, plan=self.plan)
        self.conn.waiting = self._waiting
        hv = Hypercalls(self.host.xen, self.name, self.plan)
        self.watcher = Watcher(self.conn, hv, self.host.policy, clock=self.host.clock)
        self._run(self.watcher.start)

    def serve(self, *, idle: bool = False) -> None:
        """Serve the queued events (``idle``: first let ``RESCAN_SECONDS`` pass without
        any, as the daemon's loop does before it rescans)."""
        if self.watcher is not None and not self.busy:
            self._idle = idle
            self._run(self.watcher.run_forever)

    def kill(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.watcher = self.conn = None

    def _run(self, fn: Callable[[], None]) -> None:
        self.busy = True
        try:
            fn()
        except Stop:
            pass
        except Crash:
            self.crashes += 1
            self.kill()
        finally:
            self.busy = False

    def _waiting(self, conn: Connection, timeout: float | None) -> None:
        if not self._idle:
            raise Stop
        self._idle = False
        self.host.clock.advance(timeout or 0.0)


class Host:
    """The simulated host. ``violations`` collects what observers found wrong while agents
    ran (an assertion there would be swallowed by the watcher's guards)."""

    def __init__(self, flavour: Flavour = Flavour.C, policy: Policy | None = None, *,
                 free_pages: int = 1 << 20, dying_refuses_limit: bool = False,
                 eagain: Callable[[], bool] | None = None) -> None:
        self.clock = Clock()
        self.policy = policy or Policy()
        self.store = Store(flavour, eagain=eagain)
        self.xen = Xen(self.store, free_pages=free_pages,
                       dying_refuses_limit=dying_refuses_limit)
        self.libxl = self.store.connect(0, name="libxl")
        self.guests: dict[int, Guest] = {}
        self.watchers: dict[str, WatcherSlot] = {}
        self.order: list[str] = []
        """The order in which ``settle`` serves the watchers."""
        self.violations: list[str] = []
        self._boot()

    def _boot(self) -> None:
        """dom0 as xen-init-dom0 leaves it; /libxl as libxl makes it."""
        self.xen.domains[0] = Domain(0, DOM0_PAGES, DOM0_PAGES)
        self.libxl.write("/local/domain/0/domid", b"0")
        self.libxl.write("/local/domain/0/name", b"Domain-0")
        self.libxl.write(paths.DECISION_ROOT, b"")

    # libxl, xl and the admin.

    def create_guest(self, base_pages: int, *, stubdom: bool = False,
                     name: str | None = None) -> Guest:
        """``xl create``: the domain, its xenstore home (libxl's permissions), and a
        stubdom device model when asked (introduced first, then named in the guest's
        ``image/device-model-domid``, as libxl does)."""
        domid = self.xen.create(base_pages, base_pages - SLACK_PAGES)
        guest = Guest(domid, name or f"guest{domid}", base_pages)
        self._home(domid, guest.name)
        if stubdom:
            guest.dm = self.xen.create(STUBDOM_PAGES, STUBDOM_PAGES)
            self._home(guest.dm, f"{guest.name}-dm")
            self.libxl.write(f"{paths.domain_dir(guest.dm)}/target", str(domid).encode())
            self.store.set_target(guest.dm, domid)
            self.libxl.write(paths.dm_domid_path(domid), str(guest.dm).encode())
            area = paths.device_model_guest_dir(guest.dm, domid)
            self.libxl.transact(lambda t: make_dir(t, area, [f"n{guest.dm}", f"r{domid}"]))
        self.guests[domid] = guest
        return guest

    def _home(self, domid: int, name: str) -> None:
        home, mine = paths.domain_dir(domid), [f"n{domid}"]

        def make(t: Connection) -> None:
            t.remove(home)
            make_dir(t, home, ["n0", f"r{domid}"])
            t.write(f"{home}/name", name.encode())
            t.write(f"{home}/domid", str(domid).encode())
            make_dir(t, f"{home}/data", mine)
            t.remove(f"{paths.DECISION_ROOT}/{domid}")
            make_dir(t, f"{paths.DECISION_ROOT}/{domid}", ["n0"])

        self.libxl.transact(make)
        self.store.fire_special(INTRODUCE_DOMAIN)

    def destroy(self, domid: int, *, libxl_cleans: bool = True) -> None:
        """The domain dies (``xl destroy``, or a crash with no xl to clean up). libxl
        removes its xenstore home and its /libxl directory, and its stubdom's; not dom0's
        device-model directory, which only a QEMU it started would have made."""
        guest = self.guests.pop(domid)
        self.xen.destroy(domid)
        doomed = [domid]
        if guest.dm:
            self.xen.destroy(guest.dm)
            doomed.append(guest.dm)
        if libxl_cleans:
            for d in doomed:
                self.libxl.remove(paths.domain_dir(d))
                self.libxl.remove(f"{paths.DECISION_ROOT}/{d}")

    def reap(self, domid: int) -> None:
        """Xen lets a dying domain go (dom0 dropped its last mapping)."""
        self.xen.reap(domid)

    def mem_max(self, domid: int, pages: int) -> None:
        """``xl mem-max``: the admin sets the limit directly."""
        self.xen.set_max_pages(domid, pages, by="admin")

    # The device model.

    def request(self, domid: int, pages: int, reason: str = "", *,
                timeout: float = DEFAULT_TIMEOUT,
                plan: Plan | None = None) -> DecisionRecord | XsprotoError:
        """The real ``request_pages`` from the guest's device model's domain; its outcome,
        or the xsproto error it raised."""
        conn = self.store.connect(self.guests[domid].dm, name=f"dm-{domid}", plan=plan)
        conn.waiting = self._dm_waiting
        try:
            return request_pages(conn, domid, pages, reason, timeout=timeout,
                                 clock=self.clock)
        except XsprotoError as e:
            return e
        finally:
            conn.close()

    def write_request(self, domid: int, raw: bytes, *, dm: int | None = None) -> None:
        """A raw request value, hostile ones included, written in one write as the agent
        writes it, from ``dm`` (default: the guest's device model)."""
        who = self.guests[domid].dm if dm is None else dm
        conn = self.store.connect(who, name=f"raw-dm-{who}")
        try:
            conn.write(paths.request_node(who, domid), raw)
        finally:
            conn.close()

    def _dm_waiting(self, conn: Connection, timeout: float | None) -> None:
        """While the device model waits, the watchers serve; with nothing left for them
        to do, time passes (and they rescan when idle) until its deadline."""
        deadline = self.clock() + (timeout or 0.0)
        self.settle()
        while not conn.events and self.clock() < deadline:
            self.clock.advance(min(RESCAN_SECONDS, deadline - self.clock()))
            self.settle(idle=True)

    # Watchers.

    def watcher(self, name: str) -> WatcherSlot:
        """The watcher slot ``name`` (created, not started, on first use)."""
        if name not in self.watchers:
            self.watchers[name] = WatcherSlot(self, name)
            self.order.append(name)
        return self.watchers[name]

    def settle(self, *, idle: bool = False) -> None:
        """Serve every running watcher until none has an event queued."""
        for _ in range(SETTLE_ROUNDS):
            ready = [s for s in map(self.watchers.__getitem__, self.order)
                     if s.up and not s.busy and (idle or s.pending)]
            if not ready:
                return
            for slot in ready:
                slot.serve(idle=idle)
            idle = False
        self.violations.append(f"watchers still busy after {SETTLE_ROUNDS} rounds")

    # Save and restore, through the image hooks' own grant logic.

    def save(self, domid: int) -> Image | XsprotoError:
        """``xsproto save``: read the grant (``image_grants.read_grant``), then stock xl
        suspends the domain, writes the image and destroys the domain."""
        guest = self.guests[domid]
        try:
            grant = self._hooks("save", lambda xs, hv: image_grants.read_grant(xs, hv, domid))
        except XsprotoError as e:
            return e
        self.xen.shutdown(domid)
        info = self.xen.info(domid)
        image = Image(guest.name, guest.base_pages, bool(guest.dm), grant,
                      info.tot_pages - guest.dm_pages, guest.dm_pages)
        self.destroy(domid)
        return image

    def restore(self, image: Image) -> Guest | XsprotoError:
        """``xsproto restore``: libxl creates the domain at its base, the hook applies the
        carried grant (``image_grants.apply_grant``) before the memory streams in; on any
        failure xl leaves no domain."""
        guest: Guest | None = None
        try:
            guest = self.create_guest(image.base_pages, stubdom=image.stubdom,
                                      name=image.name)
            domid = guest.domid
            if image.grant is not None:
                grant = Grant(self.xen.info(domid).max_pages, image.grant.granted_pages)
                self._hooks("restore",
                            lambda xs, hv: image_grants.apply_grant(xs, hv, domid, grant))
            held = self.xen.info(domid).tot_pages
            self.xen.populate(domid, image.guest_pages + image.dm_pages - held)
        except (XsprotoError, OSError) as e:
            if guest is not None:
                self.destroy(guest.domid)
            return e if isinstance(e, XsprotoError) else XsprotoError(f"restore failed: {e}")
        guest.dm_pages = image.dm_pages
        return guest

    def _hooks(self, name: str, fn: Callable[[Xenstore, Hypervisor], T]) -> T:
        """Run an image hook's grant function on a connection and Xen handle of its own.
        ``image_grants`` is typed with the concrete adapters, hence the casts: the
        simulator implements the Protocols they are used through."""
        conn = self.store.connect(0, name=name)
        try:
            return fn(cast(Xenstore, conn), cast(Hypervisor, Hypercalls(self.xen, name)))
        finally:
            conn.close()
