"""The grant on each side of a save/restore or migration, read from or applied to a live
host (the rules themselves are in ``xsproto.carrying``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from xsproto import carrying, logs, paths, xl_config
from xsproto.adapters import xenstore_records, xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.carrying import Refusal
from xsproto.errors import ProtocolError, XsprotoError
from xsproto.grant import Grant
from xsproto.policy import Policy
from xsproto.records import DecisionRecord
from xsproto.stream.image_record import record_for_config
from xsproto.stream.walk import ConfigSummary
from xsproto.xl_config import DomainSettings

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


def read_replacement(path: str) -> DomainSettings:
    """A replacement config file, read as xl will read it (refused where xl would be)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise XsprotoError(f"{path}: cannot read the domain config: {e.strerror or e}") from e
    return xl_config.domain_settings(xl_config.parse(text, source=path), source=path)


def check_outgoing_replacement(domid: int, grant: Grant | None,
                               replacement: DomainSettings | None) -> None:
    """``save DOM FILE CONFIG``, ``migrate -C CONFIG``: the replacement xl will send in
    place of the running domain's config, checked against the record the image would
    carry with that config, before xl starts."""
    if grant is None or replacement is None:
        return
    config = xl.domain_config(domid)
    record = record_for_config(config, source_domid=domid, grant=grant)
    carrying.check_replacement(record, ConfigSummary.from_config(config), replacement)


def apply_grant(xs: Xenstore, hv: Hypervisor, domid: int, grant: Grant) -> DecisionRecord:
    """Raise a new domain's limit from its own base and republish the grant for it.

    ``grant.base_pages`` is the limit libxl set for the new domain, never a limit already
    raised: applying twice gives the same result.
    """
    record = carrying.restored(grant)
    hv.set_max_pages(domid, record.max_pages)
    where = paths.decision_node(domid)
    dm = xenstore_records.dm_domid_of(xs, domid)
    # One transaction: the record and its permissions appear together.
    xs.transact(lambda t: xenstore_records.write_decision(t, domid, dm, record))
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
                       path=paths.decision_node(other), counted_pages=cap, error=e)
            total += cap
            continue
        total += record.granted_pages if record is not None else 0
    return total
