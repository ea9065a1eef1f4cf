"""The grant on each side of a save/restore or migration, read from or applied to a live
host (the rules themselves are in ``xsproto.carrying``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from xsproto import carrying, logs, paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.carrying import Refusal
from xsproto.errors import ProtocolError
from xsproto.grant import Grant
from xsproto.policy import Policy
from xsproto.records import DecisionRecord

log = logging.getLogger("xsproto.image_grants")


def read_grant(xs: Xenstore, hv: Hypervisor, domid: int) -> Grant | None:
    """The checked grant of a live domain (see ``carrying.check_grant``)."""
    return carrying.check_grant(xenstore_records.read_decision(xs, domid), hv.domain(domid))


@contextlib.contextmanager
def frozen_grant(xs: Xenstore, hv: Hypervisor, domid: int, verb: str) -> Iterator[Grant | None]:
    """The grant of a domain being saved or migrated, kept still while the block runs.

    Negotiation for the domain is frozen before the grant is read and thawed when the
    block ends, however it ends: a grant raised while xl still copies the live domain
    would be in force in the memory saved but not in the image, which then cannot be
    restored.
    """
    where = paths.freeze_path(domid)
    holder = f"pid {os.getpid()} {verb}"
    xenstore_records.freeze(xs, domid, holder)
    logs.event(log, "frozen", domid=domid, path=where, holder=holder)
    try:
        yield read_grant(xs, hv, domid)
    finally:
        xenstore_records.thaw(xs, domid)
        logs.event(log, "thawed", domid=domid, path=where)


def apply_grant(xs: Xenstore, hv: Hypervisor, domid: int, grant: Grant) -> DecisionRecord:
    """Raise a new domain's limit from its own base and republish the grant for it.

    ``grant.base_pages`` is the limit libxl set for the new domain, never a limit already
    raised: applying twice gives the same result.
    """
    record = carrying.restored(grant)
    hv.set_max_pages(domid, record.max_pages)
    where = paths.decision_dir(domid)
    perms = paths.decision_permissions(xenstore_records.dm_domid_of(xs, domid))

    def publish(t: Xenstore) -> None:
        t.remove(where)
        t.write_dir(where, record.to_nodes(), perms)

    xs.transact(publish)
    logs.event(log, "grant-restored", domid=domid, path=where, base_pages=grant.base_pages,
               granted_pages=grant.granted_pages, max_pages=record.max_pages)
    return record


def restore_refusals(xs: Xenstore, hv: Hypervisor, policy: Policy, domid: int, name: str,
                     grant: Grant) -> list[Refusal]:
    """The rules of this host's policy that ``grant``, carried in an image for the new
    domain ``domid`` named ``name`` (its config's), breaks (see ``carrying.check_restore``)."""
    return carrying.check_restore(grant, limits=policy.limits_for(domid, name), policy=policy,
                                  free_pages=hv.free_pages(),
                                  granted_elsewhere=granted_elsewhere(xs, policy, domid))


def granted_elsewhere(xs: Xenstore, policy: Policy, domid: int) -> int:
    """The ``granted-pages`` recorded for every domain but ``domid``, as the host budget
    sums them. A malformed record counts as its domain's cap: what it holds is unknown."""
    total = 0
    for other in xenstore_records.domids_under(xs, paths.DECISION_ROOT):
        if other == domid:
            continue
        try:
            record = xenstore_records.read_decision(xs, other)
        except ProtocolError as e:
            cap = policy.limits_for(other, xenstore_records.domain_name(xs, other)).cap_pages
            logs.event(log, "bad-record", level=logging.WARNING, domid=other,
                       path=paths.decision_dir(other), counted_pages=cap, error=e)
            total += cap
            continue
        total += record.granted_pages if record is not None else 0
    return total
