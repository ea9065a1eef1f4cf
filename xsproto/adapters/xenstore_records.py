"""The protocol's records as xenstore holds them, and who each domain's device model is.

Every part (watcher, agent, image hooks, status) reads it through here, so a record is
parsed, and the device model's domain is trusted, in exactly one way.
"""

from __future__ import annotations

from xsproto import paths
from xsproto.errors import ProtocolError
from xsproto.io import XenstoreIO
from xsproto.records import DecisionRecord
from xsproto.values import parse_domid


def read_decision(xs: XenstoreIO, domid: int) -> DecisionRecord | None:
    """The recorded decision for ``domid``; None when there is none yet (no node, or an
    empty one). One read: a node is written whole, so it cannot be seen half written. In
    a transaction ``xs`` it belongs to the transaction."""
    where = paths.decision_node(domid)
    raw = xs.read(where)
    return DecisionRecord.parse(raw, where=where) if raw else None


def write_decision(xs: XenstoreIO, domid: int, dm_domid: int, record: DecisionRecord) -> None:
    """Write ``record`` for ``domid`` and give it the decision's permissions for device
    model ``dm_domid`` (a restore may have written it before libxl said which domain that
    is, and a node keeps the permissions it was created with)."""
    where = paths.decision_node(domid)
    xs.write(where, record.encode())
    xs.set_perms(where, paths.decision_permissions(dm_domid))


def request_in(t: XenstoreIO, dm_domid: int, domid: int) -> tuple[bytes | None, int]:
    """The request node's value (None when absent) and its owner's domid (-1 when
    absent), read within the caller's transaction ``t``."""
    where = paths.request_node(dm_domid, domid)
    owner = t.owner(where)
    return (None, -1) if owner is None else (t.read(where), owner)


def read_request(xs: XenstoreIO, dm_domid: int, domid: int) -> bytes | None:
    """The request node's value, None when absent."""
    return xs.read(paths.request_node(dm_domid, domid))


def granted_elsewhere(t: XenstoreIO, domid: int, *, unreadable: int) -> int:
    """The granted pages recorded for every domain but ``domid``: what the host budget
    counts. Read within the caller's transaction, so a grant another watcher or a restore
    commits meanwhile makes the transaction conflict instead of being missed. A record
    that cannot be read counts as ``unreadable`` pages (the cap): never as 0."""
    total = 0
    for other in domids_under(t, paths.DECISION_ROOT):
        if other == domid:
            continue
        try:
            record = read_decision(t, other)
        except ProtocolError:
            total += unreadable
        else:
            total += record.granted_pages if record is not None else 0
    return total


def dm_domid_of(xs: XenstoreIO, domid: int) -> int:
    """The device model's domain for ``domid``: a stubdom's id written by libxl, else 0.

    The node is trusted only if dom0 owns it (then the guest cannot have written it)."""
    where = paths.dm_domid_path(domid)
    raw = xs.read(where)
    if raw is None or xs.owner(where) != 0:
        return 0
    try:
        return parse_domid(raw, path=where)
    except ProtocolError:
        return 0


def domids_under(xs: XenstoreIO, path: str) -> list[int]:
    """The children of ``path`` named by a domain id (canonical decimal, in range), in
    order; other names (a stray ``/libxl/99999``, ``007``) are not domains and are left out."""
    ids = []
    for name in xs.children(path):
        try:
            ids.append(parse_domid(name.encode("ascii"), path=f"{path}/{name}"))
        except (ProtocolError, UnicodeEncodeError):
            continue
    return sorted(ids)


def domain_name(xs: XenstoreIO, domid: int) -> str | None:
    """The name libxl gave ``domid`` (printable for logs), None when it has none."""
    raw = xs.read(paths.domain_name_path(domid))
    return raw.decode("ascii", "backslashreplace") if raw else None


def freeze(xs: XenstoreIO, domid: int, holder: str) -> None:
    """Stop negotiation for ``domid`` (see ``paths.freeze_path``) until ``thaw``."""
    xs.write(paths.freeze_path(domid), holder.encode("ascii", "backslashreplace"))


def thaw(xs: XenstoreIO, domid: int) -> None:
    xs.remove(paths.freeze_path(domid))


def frozen_by(xs: XenstoreIO, domid: int) -> str | None:
    """Who froze negotiation for ``domid`` (``pid N``), None when nobody did."""
    raw = xs.read(paths.freeze_path(domid))
    return None if raw is None else raw.decode("ascii", "backslashreplace")
