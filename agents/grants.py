"""The negotiated pages on each side of a save/restore or migration.

Sending side: the grant is read from xenstore and checked against Xen while the domain
still exists, because the image is the only place it survives. Receiving side: the new
domain's limit is its own base (what libxl just set from the config) plus the granted
pages, and the grant is republished as a restore-origin record under the new domain id,
so the device model does not ask again and nothing is counted twice (xen-api issue 955
raised maxmem on every migration by adding to the current limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xsproto import logs, negotiation, paths, state
from xsproto.errors import HypervisorError, ProtocolError
from xsproto.hypervisor import Hypervisor
from xsproto.negotiation import DomainInfo
from xsproto.records import DecisionRecord, DecisionState
from xsproto.stream import ImageRecord, record_for_config
from xsproto.xenstore import Xenstore

log = logging.getLogger("xsproto.grants")


@dataclass(frozen=True)
class Grant:
    """Extra pages in force for a domain: Xen's limit is ``base_pages + granted_pages``."""

    domid: int
    base_pages: int
    granted_pages: int

    @property
    def max_pages(self) -> int:
        return self.base_pages + self.granted_pages

    def image_record(self, config: dict[str, object]) -> ImageRecord:
        """The record to carry in the image whose xl header holds ``config``."""
        return record_for_config(config, source_domid=self.domid, base_pages=self.base_pages,
                                 granted_pages=self.granted_pages, max_pages=self.max_pages)


def check_grant(decision: DecisionRecord | None, domain: DomainInfo) -> Grant | None:
    """The grant to carry, or None when nothing was granted; refuse inconsistent state.

    A rejected record still names the pages in force (a rejection keeps the last grant).
    An ``applying`` record means Xen's limit may or may not be set yet: refuse, the
    watcher finishes it within moments.
    """
    d = domain.domid
    where = paths.decision_dir(d)
    if not domain.exists:
        raise HypervisorError("no such domain", domid=d)
    if domain.dying:
        raise HypervisorError("domain is dying or shut down", domid=d)
    if decision is None or decision.granted_pages == 0:
        return None
    if decision.state is DecisionState.APPLYING:
        raise ProtocolError("negotiation still applying; retry once it is decided",
                            path=f"{where}/{paths.STATE}")
    grant = Grant(d, decision.base_pages, decision.granted_pages)
    if domain.max_pages != grant.max_pages:
        raise HypervisorError(
            f"Xen max_pages {domain.max_pages} differs from {where}: base-pages "
            f"{grant.base_pages} + granted-pages {grant.granted_pages} = {grant.max_pages}",
            domid=d)
    if domain.tot_pages > grant.max_pages:
        raise HypervisorError(f"tot_pages {domain.tot_pages} exceeds max_pages "
                              f"{grant.max_pages}", domid=d)
    return grant


def read_grant(xs: Xenstore, hv: Hypervisor, domid: int) -> Grant | None:
    """The checked grant of a live domain (see ``check_grant``)."""
    return check_grant(state.read_decision(xs, domid), hv.domain(domid))


def apply_grant(xs: Xenstore, hv: Hypervisor, domid: int, *, base_pages: int,
                granted_pages: int) -> DecisionRecord:
    """Raise a new domain's limit from its own base and republish the grant for it.

    ``base_pages`` is the limit libxl set for the new domain, never a limit already
    raised: applying twice gives the same result.
    """
    record = negotiation.restored(base_pages, granted_pages)
    hv.set_max_pages(domid, record.max_pages)
    where = paths.decision_dir(domid)
    perms = paths.decision_permissions(state.dm_domid_of(xs, domid))

    def publish(t: Xenstore) -> None:
        t.remove(where)
        t.write_dir(where, record.to_nodes(), perms)

    xs.transact(publish)
    logs.event(log, "grant-restored", domid=domid, path=where, base_pages=base_pages,
               granted_pages=granted_pages, max_pages=record.max_pages)
    return record
