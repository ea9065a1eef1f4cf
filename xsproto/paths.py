"""The xenstore layout of the protocol: every path xsproto uses, built and parsed here.

Requests live in the device model's own area (writable by a deprivileged or stubdom
device model); decisions live under /libxl, which only dom0 can write. Each record is one
node (protocol version 2), its keys in its value (``xsproto.records``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xsproto.errors import ProtocolError
from xsproto.values import DOMID_MAX, parse_domid

DOMAINS_ROOT: Final = "/local/domain"
DECISION_ROOT: Final = "/libxl"
DEVICE_MODEL: Final = "device-model"
LEAF: Final = "extra-pages"
OWN_DOMID: Final = "domid"
"""Relative: a connection's own domain id, as xenstored resolves relative paths."""
RELEASE_DOMAIN: Final = "@releaseDomain"
INTRODUCE_DOMAIN: Final = "@introduceDomain"
PATH_MAX_BYTES: Final = 3072
"""xenstored's XENSTORE_ABS_PATH_MAX."""

def _check_domid(domid: int) -> int:
    if isinstance(domid, bool) or not isinstance(domid, int) or not 0 <= domid <= DOMID_MAX:
        raise ValueError(f"not a domain id: {domid!r}")
    return domid


HEARTBEAT: Final = "/tool/xsproto/watcher"
"""The watcher's ``<pid> <unix seconds>``, rewritten every few seconds: who is serving."""


def domain_dir(domid: int) -> str:
    """A domain's home in xenstore; it exists from creation until its death."""
    return f"{DOMAINS_ROOT}/{_check_domid(domid)}"


def domain_name_path(domid: int) -> str:
    """Written by libxl: the name xl knows the domain by (policy overrides use it)."""
    return f"{domain_dir(domid)}/name"


def device_model_area(dm_domid: int) -> str:
    """Device model ``dm_domid``'s own area: one directory per guest it serves."""
    return f"{domain_dir(dm_domid)}/{DEVICE_MODEL}"


def device_model_guest_dir(dm_domid: int, domid: int) -> str:
    """Device model ``dm_domid``'s directory for guest ``domid`` (QEMU's own keys live
    there too; without a QEMU, as for PVH, the request creates it)."""
    return f"{device_model_area(dm_domid)}/{_check_domid(domid)}"


def request_node(dm_domid: int, domid: int) -> str:
    """The node in which device model ``dm_domid`` asks for extra pages for ``domid``."""
    return f"{device_model_guest_dir(dm_domid, domid)}/{LEAF}"


def decision_node(domid: int) -> str:
    """The node in which the toolstack records its decision and the pages granted to
    ``domid``."""
    return f"{DECISION_ROOT}/{_check_domid(domid)}/{LEAF}"


def freeze_path(domid: int) -> str:
    """Present while an image hook saves ``domid``: the watcher then decides nothing for
    it (a grant raised mid-save would not be in the image). Beside the decision node,
    so dom0 alone can write it; its value names the process holding it."""
    return f"{DECISION_ROOT}/{_check_domid(domid)}/{LEAF}-frozen"


def dm_domid_path(domid: int) -> str:
    """Written by libxl for a stubdom device model; absent means dom0 runs it."""
    return f"{domain_dir(domid)}/image/device-model-domid"


def decision_permissions(dm_domid: int) -> tuple[str, ...]:
    """xenstore permissions of the decision node: dom0 owns it, M may read it."""
    return ("n0",) if _check_domid(dm_domid) == 0 else ("n0", f"r{dm_domid}")


@dataclass(frozen=True)
class RequestPath:
    dm_domid: int
    domid: int


@dataclass(frozen=True)
class DecisionPath:
    domid: int


def parse(path: str | bytes) -> RequestPath | DecisionPath:
    """Classify a path (e.g. from a watch event) as a request node's or a decision node's;
    anything else (a node below one of them included) is a ProtocolError."""
    if not path.isascii():
        raise ProtocolError("path is not ASCII", path=ascii(path[:64]))
    if isinstance(path, bytes):
        path = path.decode("ascii")
    if len(path) > PATH_MAX_BYTES:
        raise ProtocolError("path too long", path=path[:64] + "...")
    match _below(path, DOMAINS_ROOT), _below(path, DECISION_ROOT):
        case [m, area, d, leaf], _ if (area, leaf) == (DEVICE_MODEL, LEAF):
            return RequestPath(_domid(m, path), _domid(d, path))
        case _, [d, leaf] if leaf == LEAF:
            return DecisionPath(_domid(d, path))
    raise ProtocolError("not an xsproto path", path=path)


def _below(path: str, root: str) -> list[str]:
    """The parts of ``path`` below ``root``; empty when it is not below it."""
    return path[len(root) + 1:].split("/") if path.startswith(root + "/") else []


def _domid(part: str, path: str) -> int:
    return parse_domid(part.encode("ascii"), path=path)

