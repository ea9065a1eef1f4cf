"""The rules for carrying a grant through save, restore and migration, free of I/O.

Sending side: the grant is taken from the recorded decision and checked against Xen
while the domain still exists, because the image is the only place it survives.
Receiving side: the new domain's limit is its own base (what libxl just set from the
config) plus the granted pages, republished as a restore-origin record under the new
domain id, so the device model does not ask again and nothing is counted twice (xen-api
issue 955 raised maxmem on every migration by adding to the current limit). An image is
only a claim (its CRC detects corruption, not forgery), so the receiving host's own
policy judges the grant first, as it would a request.
"""

from __future__ import annotations

from dataclasses import dataclass

from xsproto import paths, records
from xsproto.errors import HypervisorError, ImageError, ProtocolError, ReplacementRefused
from xsproto.grant import Grant
from xsproto.negotiation import DomainInfo, RejectCode
from xsproto.policy import Limits, Policy
from xsproto.records import DecisionRecord, DecisionState, Origin
from xsproto.stream.image_record import ImageRecord
from xsproto.stream.walk import ConfigSummary
from xsproto.values import PAGES_MAX
from xsproto.xl_config import DomainSettings


def check_grant(decision: DecisionRecord | None, domain: DomainInfo) -> Grant | None:
    """The grant to carry, or None when nothing was granted; refuse inconsistent state.

    A rejected record still names the pages in force (a rejection keeps the last grant).
    An ``applying`` record means Xen's limit may or may not be set yet: refuse, the
    watcher finishes it within moments.
    """
    d = domain.domid
    where = paths.decision_node(d)
    if not domain.exists:
        raise HypervisorError("no such domain", domid=d)
    if domain.dying:
        raise HypervisorError("domain is dying or shut down", domid=d)
    if decision is None or decision.granted_pages == 0:
        return None
    if decision.state is DecisionState.APPLYING:
        raise ProtocolError("negotiation still applying; retry once it is decided",
                            path=records.key_path(where, records.STATE))
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


def rebased(carried: Grant, base_pages: int) -> Grant:
    """The carried pages on the new domain's own base (libxl's limit for it, never the
    source's). A record may hold up to Xen's 2^32-1 in all, so the sum is checked here."""
    if base_pages + carried.granted_pages > PAGES_MAX:
        raise ImageError(f"granted-pages {carried.granted_pages} on base {base_pages} "
                         f"exceeds Xen's {PAGES_MAX}")
    return Grant(base_pages, carried.granted_pages)


@dataclass(frozen=True)
class Refusal:
    """A policy rule a carried grant breaks: the code a request would be rejected with."""

    code: RejectCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def check_restore(grant: Grant, *, limits: Limits, policy: Policy, free_pages: int,
                  granted_elsewhere: int) -> list[Refusal]:
    """Every rule of the receiving host's policy that ``grant`` breaks, in the check order
    of a request (docs/protocol.md): it raises the new domain's limit from its base by
    ``granted_pages``, so that is the increase. No rate check: a restore is the admin's
    act, once per domain, not a device model's request.

    ``granted_elsewhere`` sums the recorded ``granted-pages`` of every other domain.
    """
    granted, cap = grant.granted_pages, limits.cap_pages
    refusals = []
    if granted > cap:
        refusals.append(Refusal(RejectCode.OVER_DOMAIN_CAP, f"granted-pages {granted} > cap {cap}"))
    total, budget = granted_elsewhere + granted, policy.host_budget_pages
    if granted and total > budget:
        refusals.append(Refusal(RejectCode.OVER_HOST_BUDGET,
                                f"granted-pages {granted} + {granted_elsewhere} granted to "
                                f"other domains = {total} > budget {budget}"))
    reserve = policy.free_reserve_pages
    if granted and granted > free_pages - reserve:
        refusals.append(Refusal(RejectCode.OVER_HOST_BUDGET,
                                f"granted-pages {granted} > free {free_pages} - reserve "
                                f"{reserve}"))
    return refusals


def check_replacement(record: ImageRecord, own: ConfigSummary | None,
                      replacement: DomainSettings) -> None:
    """Refuse a replacement config that does not fit the grant ``record`` carries.

    ``own`` is the config the image would otherwise restore with. A grant belongs to one
    domain, so the replacement must name it (and, when both give one, have its uuid): a
    renamed copy would take pages granted to another domain's device model, and the
    policy caps by name. It must also give at least ``own``'s memory target, because the
    new limit is libxl's base from the replacement plus the granted pages, and the image
    holds up to the old base plus them: with less, Xen refuses pages mid-stream (EBUSY)
    after the domain was made.
    """
    where = replacement.source
    owner = (f"{record.domain_name!r}, the domain whose {record.granted_pages} granted "
             "pages the image carries")
    if replacement.name is None:
        raise ReplacementRefused(f"no name setting: it must be name = {owner}", path=where)
    if replacement.name != record.domain_name:
        raise ReplacementRefused(f"name = {replacement.name!r} is not {owner}; use its name "
                                 "(and xl rename the domain afterwards)", path=where)
    if (replacement.uuid is not None and record.domain_uuid is not None
            and replacement.uuid.lower() != record.domain_uuid.lower()):
        raise ReplacementRefused(
            f"uuid = {replacement.uuid!r} is not {record.domain_uuid!r}, the uuid of "
            f"domain {record.domain_name!r} in the image's record", path=where)
    if own is not None and own.target_memkb is not None \
            and replacement.target_memkb < own.target_memkb:
        raise ReplacementRefused(
            f"{replacement.memory_from} gives {replacement.target_memkb} kB, less than the "
            f"{own.target_memkb} kB of the image's own config (target_memkb): its memory "
            f"and {record.granted_pages} granted pages would not fit; give memory = "
            f"{-(-own.target_memkb // 1024)} or more", path=where)
