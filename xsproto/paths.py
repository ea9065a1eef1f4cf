"""The xenstore layout of the protocol: path builders and a strict path parser.

Requests live in the device model's own area (writable by a deprivileged or stubdom
device model); decisions live under /libxl, which only dom0 can write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xsproto.errors import ProtocolError
from xsproto.values import DOMID_MAX, parse_domid

DECISION_ROOT: Final = "/libxl"
LEAF: Final = "extra-pages"
PATH_MAX_BYTES: Final = 3072
"""xenstored's XENSTORE_ABS_PATH_MAX."""

VERSION: Final = "version"
PAGES: Final = "pages"
REASON: Final = "reason"
REQUEST_ID: Final = "request-id"
STATE: Final = "state"
ORIGIN: Final = "origin"
BASE_PAGES: Final = "base-pages"
GRANTED_PAGES: Final = "granted-pages"
MAX_PAGES: Final = "max-pages"

REQUEST_KEYS: Final = (VERSION, PAGES, REASON, REQUEST_ID)
"""Keys of a request, in write order: request-id last."""

DECISION_KEYS: Final = (
    VERSION,
    STATE,
    ORIGIN,
    REQUEST_ID,
    BASE_PAGES,
    GRANTED_PAGES,
    MAX_PAGES,
    REASON,
)


def _check_domid(domid: int) -> int:
    if isinstance(domid, bool) or not isinstance(domid, int) or not 0 <= domid <= DOMID_MAX:
        raise ValueError(f"not a domain id: {domid!r}")
    return domid


def request_dir(dm_domid: int, domid: int) -> str:
    """Where device model ``dm_domid`` asks for extra pages for guest ``domid``."""
    return f"/local/domain/{_check_domid(dm_domid)}/device-model/{_check_domid(domid)}/{LEAF}"


def decision_dir(domid: int) -> str:
    """Where the toolstack records its decision and the pages granted to ``domid``."""
    return f"{DECISION_ROOT}/{_check_domid(domid)}/{LEAF}"


def dm_domid_path(domid: int) -> str:
    """Written by libxl for a stubdom device model; absent means dom0 runs it."""
    return f"/local/domain/{_check_domid(domid)}/image/device-model-domid"


def decision_permissions(dm_domid: int) -> tuple[str, ...]:
    """xenstore permissions of the decision directory: dom0 owns it, M may read it."""
    return ("n0",) if _check_domid(dm_domid) == 0 else ("n0", f"r{dm_domid}")


@dataclass(frozen=True)
class RequestPath:
    dm_domid: int
    domid: int
    key: str | None
    """None for the directory itself."""


@dataclass(frozen=True)
class DecisionPath:
    domid: int
    key: str | None


def parse(path: str | bytes) -> RequestPath | DecisionPath:
    """Classify a path (e.g. from a watch event); anything else is a ProtocolError."""
    if not path.isascii():
        raise ProtocolError("path is not ASCII", path=ascii(path[:64]))
    if isinstance(path, bytes):
        path = path.decode("ascii")
    if len(path) > PATH_MAX_BYTES:
        raise ProtocolError("path too long", path=path[:64] + "...")
    parts = path.split("/")
    match parts:
        case ["", "local", "domain", m, "device-model", d, "extra-pages", *rest]:
            key = _key(rest, REQUEST_KEYS, path)
            return RequestPath(_domid(m, path), _domid(d, path), key)
        case ["", "libxl", d, "extra-pages", *rest]:
            return DecisionPath(_domid(d, path), _key(rest, DECISION_KEYS, path))
    raise ProtocolError("not an xsproto path", path=path)


def _domid(part: str, path: str) -> int:
    return parse_domid(part.encode("ascii"), path=path)


def _key(rest: list[str], keys: tuple[str, ...], path: str) -> str | None:
    match rest:
        case []:
            return None
        case [key] if key in keys:
            return key
    raise ProtocolError("unknown key", path=path)
