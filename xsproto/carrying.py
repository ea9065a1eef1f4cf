"""The rules for carrying a grant through save, restore and migration, free of I/O.

Sending side: the grant is taken from the recorded decision and checked against Xen
while the domain still exists, because the image is the only place it survives.
Receiving side: the new domain's limit is its own base (what libxl just set from the
config) plus the granted pages, republished as a restore-origin record under the new
domain id, so the device model does not ask again and nothing is counted twice (xen-api
issue 955 raised maxmem on every migration by adding to the current limit).
"""

from __future__ import annotations

from xsproto import paths, records
from xsproto.errors import HypervisorError, ProtocolError
from xsproto.grant import Grant
from xsproto.negotiation import DomainInfo
from xsproto.records import DecisionRecord, DecisionState, Origin


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
                            path=f"{where}/{records.STATE}")
    grant = decision.grant
    if domain.max_pages != grant.max_pages:
        raise HypervisorError(
            f"Xen max_pages {domain.max_pages} differs from {where}: base-pages "
            f"{grant.base_pages} + granted-pages {grant.granted_pages} = {grant.max_pages}",
            domid=d)
    if domain.tot_pages > grant.max_pages:
        raise HypervisorError(f"tot_pages {domain.tot_pages} exceeds max_pages "
                              f"{grant.max_pages}", domid=d)
    return grant


def restored(grant: Grant) -> DecisionRecord:
    """The record republished after a restore: pages carried in the image, not asked."""
    return DecisionRecord(
        state=DecisionState.GRANTED,
        origin=Origin.RESTORE,
        request_id=0,
        base_pages=grant.base_pages,
        granted_pages=grant.granted_pages,
        max_pages=grant.max_pages,
    )
