"""Xen's domains as xsproto sees them: limits, pages, death and suspension.

``Xen`` is the hypervisor; each process holds its own ``Hypercalls`` handle
(``xsproto.io.HypervisorIO``), which names it in Xen's record of who last set each limit
and passes its fault points around ``set_max_pages``. The rules are Xen 4.17's and
xenstored's as tests/lab/test_sim_semantics.py shows them (README.md lists them).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from tests.sim.faults import FaultPoint, Plan
from tests.sim.xenstore import RELEASE_DOMAIN, Store
from xsproto.errors import HypervisorError
from xsproto.negotiation import DomainInfo
from xsproto.values import DOMID_MAX


class PopulateRefused(OSError):
    """Xen refused to give the domain more pages (over its limit, or no free memory)."""


@dataclass
class Domain:
    domid: int
    max_pages: int
    tot_pages: int
    dying: bool = False
    shutdown: bool = False


class Xen:
    """The hypervisor: domains and free memory. A domain that becomes dying or shuts down
    makes xenstored fire ``@releaseDomain`` (C xenstored once per shutdown and once when it
    sees the domain dying; oxenstored on every domain event while it is so: at least once
    either way)."""

    def __init__(self, store: Store, *, free_pages: int,
                 dying_refuses_limit: bool = False) -> None:
        """``dying_refuses_limit``: whether setting a dying domain's limit fails (the
        domain is gone by then) or is accepted and discarded with it; the spec allows
        either, so tests try both."""
        self.store = store
        self.free = free_pages
        self.dying_refuses_limit = dying_refuses_limit
        self.domains: dict[int, Domain] = {}
        self.set_by: dict[int, str] = {}
        """Who last set each domain's limit."""
        self.on_set: list[Callable[[int, int, str], None]] = []
        """Called with (domid, pages, who) after every limit set."""

    # The toolstack's hypercalls.

    def create(self, max_pages: int, tot_pages: int, *, by: str = "libxl") -> int:
        """A new domain with the lowest free id (Xen hands ids out in turn, but the protocol
        must survive reuse: reusing at once is the harshest case)."""
        domid = next(d for d in range(1, DOMID_MAX + 1) if d not in self.domains)
        if tot_pages > self.free:
            raise PopulateRefused(errno.ENOMEM, "no memory for a new domain")
        self.free -= tot_pages
        self.domains[domid] = Domain(domid, 0, tot_pages)
        self.set_max_pages(domid, max_pages, by=by)
        return domid

    def set_max_pages(self, domid: int, pages: int, *, by: str) -> None:
        """XEN_DOMCTL_max_mem: any value, below the pages held included (the domain then
        cannot grow until it is under it again)."""
        domain = self.domains.get(domid)
        if domain is None or (domain.dying and self.dying_refuses_limit):
            raise HypervisorError(f"cannot set max_pages to {pages}: "
                                  f"{errno.errorcode[errno.ESRCH]}", domid=domid)
        if not domain.dying:
            domain.max_pages = pages
            self.set_by[domid] = by
        for observe in self.on_set:
            observe(domid, pages, by)

    def populate(self, domid: int, pages: int) -> None:
        """Give the domain pages, one at a time, as long as they fit under its limit and
        in free memory; refused if not all did (those that fit stay)."""
        domain = self.domains.get(domid)
        if domain is None or domain.dying:
            raise PopulateRefused(errno.ESRCH, f"domain {domid} is gone")
        given = max(0, min(pages, domain.max_pages - domain.tot_pages, self.free))
        domain.tot_pages += given
        self.free -= given
        if given < pages:
            raise PopulateRefused(errno.ENOMEM, f"domain {domid}: {given} of {pages} pages "
                                  f"under its limit {domain.max_pages} and free memory")

    def release(self, domid: int, pages: int) -> None:
        """The domain gives pages back (a balloon driver, a device model freeing)."""
        domain = self.domains[domid]
        pages = min(pages, domain.tot_pages)
        domain.tot_pages -= pages
        self.free += pages

    def destroy(self, domid: int) -> None:
        """The domain is dying at once, and gone once ``reap`` says dom0 let it go."""
        domain = self.domains[domid]
        if not domain.dying:
            domain.dying = True
            self.store.fire_special(RELEASE_DOMAIN)

    def reap(self, domid: int) -> None:
        domain = self.domains.pop(domid)
        assert domain.dying, "only a dying domain is reaped"
        self.free += domain.tot_pages
        self.set_by.pop(domid, None)

    def shutdown(self, domid: int) -> None:
        """Suspended (for a save, a checkpoint, a migration): alive, its limit kept."""
        domain = self.domains[domid]
        if not domain.shutdown:
            domain.shutdown = True
            self.store.fire_special(RELEASE_DOMAIN)

    def resume(self, domid: int) -> None:
        self.domains[domid].shutdown = False

    # What xsproto reads.

    def info(self, domid: int) -> DomainInfo:
        domain = self.domains.get(domid)
        if domain is None:
            return DomainInfo(domid=domid, exists=False)
        return DomainInfo(domid=domid, exists=True, dying=domain.dying,
                          max_pages=domain.max_pages, tot_pages=domain.tot_pages)

    def alive(self, domid: int) -> bool:
        domain = self.domains.get(domid)
        return domain is not None and not domain.dying


class Hypercalls:
    """One process's handle on Xen (``xsproto.io.HypervisorIO``)."""

    def __init__(self, xen: Xen, who: str, plan: Plan | None = None) -> None:
        self.xen, self.who, self.plan = xen, who, plan or Plan()

    def domain(self, domid: int) -> DomainInfo:
        return self.xen.info(domid)

    def domids(self) -> list[int]:
        """The domains that are not dying, as ``Hypervisor.domids``."""
        return sorted(d for d in self.xen.domains if self.xen.alive(d))

    def set_max_pages(self, domid: int, pages: int) -> None:
        self.plan.reach(FaultPoint.AFTER_APPLYING)
        self.xen.set_max_pages(domid, pages, by=self.who)
        self.plan.reach(FaultPoint.AFTER_HYPERCALL)

    def free_pages(self) -> int:
        return self.xen.free
