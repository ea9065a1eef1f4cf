"""The admin's limits on extra pages, and the per-domain rate limiter that enforces one.

Defaults are safe without a policy file: a guest gets at most 32 MiB of extra pages and
all guests together at most 1 GiB. The rate limiter is pure: the caller supplies ``now``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

from xsproto import fields
from xsproto.errors import XsprotoError
from xsproto.fields import Choice, FieldError, Int, Model, Nullable, Number, Table, Text
from xsproto.values import PAGES_MAX

_PAGES: Final = Int(0, PAGES_MAX)
PageCount = Annotated[int, _PAGES]
_DOMID_KEY: Final = Text(pattern=r"^(0|[1-9][0-9]{0,4})$")
DEFAULT_PATH: Final = "/etc/xen/xsproto.toml"
"""The host's policy; when it is absent the built-in defaults apply."""


class OnDrift(StrEnum):
    """What the watcher does when Xen's limit no longer is the record's (``xl mem-max``)."""

    REAPPLY = "reapply"
    """Set Xen back to base + granted: the record is the truth."""
    ADOPT = "adopt"
    """Record what Xen says: the admin's limit becomes the grant."""


class PolicyError(XsprotoError):
    """The policy file is unreadable or invalid; the message names the file and field."""


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, then one per ``refill_seconds``."""

    burst: Annotated[int, Int(1, 1_000_000)] = 5
    refill_seconds: Annotated[float, Number(gt=0, le=86_400)] = 10.0

    def __post_init__(self) -> None:
        fields.check(self)


@dataclass(frozen=True, kw_only=True)
class DomainOverride:
    """Limits for one domain; a field left out keeps the policy's default."""

    cap_pages: Annotated[int | None, Nullable(_PAGES)] = None
    rate: Annotated[RateLimit | None, Nullable(Model(RateLimit))] = None

    def __post_init__(self) -> None:
        fields.check(self)


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one domain after overrides."""

    cap_pages: int
    rate: RateLimit


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Limits in pages of 4 KiB. Overrides by domid win over overrides by name."""

    domain_cap_pages: PageCount = 8192
    host_budget_pages: PageCount = 262144
    free_reserve_pages: PageCount = 16384
    rate: Annotated[RateLimit, Model(RateLimit)] = RateLimit()
    on_drift: Annotated[OnDrift, Choice(OnDrift)] = OnDrift.REAPPLY
    by_domid: Annotated[
        dict[str, DomainOverride], Table(Model(DomainOverride), keys=_DOMID_KEY)
    ] = field(default_factory=dict)
    by_name: Annotated[dict[str, DomainOverride], Table(Model(DomainOverride))] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        fields.check(self)

    def limits_for(self, domid: int, name: str | None = None) -> Limits:
        override = self.by_domid.get(str(domid))
        if override is None and name is not None:
            override = self.by_name.get(name)
        override = override or DomainOverride()
        return Limits(
            cap_pages=self.domain_cap_pages if override.cap_pages is None else override.cap_pages,
            rate=override.rate or self.rate,
        )

    @classmethod
    def parse(cls, data: bytes, *, source: str, toml: bool) -> Policy:
        """Parse a policy document; errors name ``source`` and the failing field."""
        try:
            raw = tomllib.loads(data.decode("utf-8")) if toml else json.loads(data)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise PolicyError(f"{source}: not valid {'TOML' if toml else 'JSON'}: {err}") from None
        try:
            return fields.load(cls, raw)
        except FieldError as err:
            raise PolicyError(f"{source}: {err}") from None

    @classmethod
    def load_host(cls, path: str | Path | None = None) -> Policy:
        """The policy in ``path``; with none given, the host's (``DEFAULT_PATH``), or the
        built-in defaults when the host has none. A file named on purpose must exist."""
        if path is None:
            if not Path(DEFAULT_PATH).exists():
                return cls()
            path = DEFAULT_PATH
        return cls.load(path)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a ``.toml`` or ``.json`` policy file."""
        path = Path(path)
        if path.suffix not in (".toml", ".json"):
            raise PolicyError(f"{path}: policy file must end in .toml or .json")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PolicyError(f"{path}: cannot read: {err.strerror}") from None
        return cls.parse(data, source=str(path), toml=path.suffix == ".toml")


class RateLimiter:
    """Per-domain token buckets, kept as GCRA theoretical arrival times (no float drift).

    A bucket starts full; time going backwards adds nothing. Asking is pure
    (``next_arrival``); only a committed grant spends a token (``charge``), so a denied
    or abandoned attempt costs nothing.
    """

    def __init__(self) -> None:
        self._tat: dict[int, float] = {}

    def next_arrival(self, domid: int, now: float, rate: RateLimit) -> float | None:
        """The bucket's state after one more increase at ``now``; None if it is empty."""
        tat = max(self._tat.get(domid, now), now)
        if tat - now > (rate.burst - 1) * rate.refill_seconds:
            return None
        return tat + rate.refill_seconds

    def charge(self, domid: int, arrival: float) -> None:
        """Spend the token ``next_arrival`` found (the grant is committed)."""
        self._tat[domid] = max(self._tat.get(domid, arrival), arrival)

    def forget(self, domid: int) -> None:
        """Drop a dead domain's bucket (a new domain may reuse the id)."""
        self._tat.pop(domid, None)
