"""The protocol's records as xenstore holds them, and who each domain's device model is.

Every part (watcher, agent, image hooks, status) reads it through here, so a record is
parsed, and the device model's domain is trusted, in exactly one way.
"""

from __future__ import annotations

from collections.abc import Iterable

from xsproto import paths, records
from xsproto.errors import ProtocolError
from xsproto.io import XenstoreIO
from xsproto.records import DecisionRecord
from xsproto.values import parse_domid, parse_pages


def read_keys(xs: XenstoreIO, path: str, keys: Iterable[str]) -> dict[str, bytes]:
    """The values of ``path``'s children named ``keys`` (missing ones left out): a
    record is read by its own keys, whatever else a peer put beside them.

    The directory is listed first, and only the keys it holds are read. In a transaction
    that matters: C xenstored reads a node live the first time and tracks only nodes that
    exist, so keys read while absent and written by another commit before ours would give
    a torn record; the listing ties the directory itself to the transaction, and a commit
    adding keys to it makes ours conflict. (Seen in the lab: a record missing version,
    state, origin and request-id.)"""
    present = set(xs.children(path))
    out = {}
    for key in keys:
        if key in present and (value := xs.read(f"{path}/{key}")) is not None:
            out[key] = value
    return out


def decision_in(t: XenstoreIO, domid: int) -> tuple[dict[str, bytes], DecisionRecord | None]:
    """The decision directory's raw nodes and the record they hold (None when empty), read
    within the caller's transaction ``t``."""
    where = paths.decision_dir(domid)
    nodes = read_keys(t, where, records.DECISION_KEYS)
    return nodes, DecisionRecord.from_nodes(nodes, where=where) if nodes else None


def read_decision(xs: XenstoreIO, domid: int) -> DecisionRecord | None:
    """The recorded decision for ``domid``; None when there is none yet.

    Read in a transaction: the watcher rewrites the keys in one, and reads outside one
    could straddle its commit and see half of the old record and half of the new."""
    return xs.transact(lambda t: decision_in(t, domid))[1]


def request_in(t: XenstoreIO, dm_domid: int, domid: int) -> tuple[dict[str, bytes], int]:
    """The request's nodes (its own keys only) and the owner domid of its request-id node
    (-1 when absent), read within the caller's transaction ``t``."""
    where = paths.request_dir(dm_domid, domid)
    owner = t.owner(f"{where}/{records.REQUEST_ID}")
    return read_keys(t, where, records.REQUEST_KEYS), -1 if owner is None else owner


def read_request(xs: XenstoreIO, dm_domid: int, domid: int) -> tuple[dict[str, bytes], int]:
    """``request_in`` in a transaction of its own, so all belong to the same write."""
    return xs.transact(lambda t: request_in(t, dm_domid, domid))


def granted_elsewhere(t: XenstoreIO, domid: int, *, unreadable: int) -> int:
    """The granted pages recorded for every domain but ``domid``: what the host budget
    counts. Read within the caller's transaction, so a grant another watcher or a restore
    commits meanwhile makes the transaction conflict instead of being missed. A record
    whose value cannot be read counts as ``unreadable`` pages (the cap): never as 0."""
    total = 0
    for other in domids_under(t, paths.DECISION_ROOT):
        if other == domid:
            continue
        where = f"{paths.decision_dir(other)}/{records.GRANTED_PAGES}"
        raw = t.read(where)
        if raw is not None:
            try:
                total += parse_pages(raw, path=where)
            except ProtocolError:
                total += unreadable
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


def limit_in_force(xs: XenstoreIO, domid: int) -> int | None:
    """``base-pages + granted-pages`` of D's record, read key by key outside a
    transaction: a quick look for a periodic check (a torn or odd read gives a wrong
    answer or None, and the caller then reads the record properly)."""
    where = paths.decision_dir(domid)
    nodes = read_keys(xs, where, (records.BASE_PAGES, records.GRANTED_PAGES))
    try:
        return sum(parse_pages(nodes[key], path=f"{where}/{key}")
                   for key in (records.BASE_PAGES, records.GRANTED_PAGES))
    except (KeyError, ProtocolError):
        return None
