"""The protocol's state as stored in xenstore: the records, and who the device model is.

Every part (watcher, agent, image hooks, status) reads it through here, so a record is
parsed, and the device model's domain is trusted, in exactly one way.
"""

from __future__ import annotations

from xsproto import paths
from xsproto.errors import ProtocolError
from xsproto.records import DecisionRecord
from xsproto.values import parse_domid
from xsproto.xenstore import Xenstore


def read_decision(xs: Xenstore, domid: int) -> DecisionRecord | None:
    """The recorded decision for ``domid``; None when there is none yet."""
    where = paths.decision_dir(domid)
    nodes = xs.read_dir(where)
    return DecisionRecord.from_nodes(nodes, where=where) if nodes else None


def dm_domid_of(xs: Xenstore, domid: int) -> int:
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
