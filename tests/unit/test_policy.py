"""Policy loading, defaults, overrides and the token-bucket rate limiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from xsproto.policy import DomainOverride, Policy, PolicyError, RateLimit, RateLimiter

TOML = b"""
domain_cap_pages = 4096
host_budget_pages = 100000
free_reserve_pages = 0

[rate]
burst = 2
refill_seconds = 1.5

[by_domid.7]
cap_pages = 16384

[by_name.web1]
cap_pages = 0
rate = { burst = 1, refill_seconds = 60 }
"""


def test_safe_defaults() -> None:
    p = Policy()
    assert (p.domain_cap_pages, p.host_budget_pages, p.free_reserve_pages) == (8192, 262144, 16384)
    assert (p.rate.burst, p.rate.refill_seconds) == (5, 10.0)
    assert p.limits_for(3).cap_pages == 8192


def test_load_toml(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_bytes(TOML)
    p = Policy.load(f)
    assert p.domain_cap_pages == 4096 and p.rate == RateLimit(burst=2, refill_seconds=1.5)
    assert p.limits_for(7).cap_pages == 16384
    assert p.limits_for(7).rate == p.rate
    assert p.limits_for(8, "web1").cap_pages == 0
    assert p.limits_for(8, "web1").rate.burst == 1
    assert p.limits_for(7, "web1").cap_pages == 16384  # domid wins over name
    assert p.limits_for(8, "web2").cap_pages == 4096


def test_load_json(tmp_path: Path) -> None:
    f = tmp_path / "policy.json"
    f.write_text('{"host_budget_pages": 5, "by_domid": {"0": {"cap_pages": 1}}}')
    p = Policy.load(str(f))
    assert p.host_budget_pages == 5 and p.limits_for(0).cap_pages == 1
    assert p.by_domid == {"0": DomainOverride(cap_pages=1)}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('domain_cap_pages = "8192"', "domain_cap_pages"),
        ("domain_cap_pages = -1", "domain_cap_pages"),
        ("domain_cap_pages = 4294967296", "domain_cap_pages"),
        ("host_budget_pages = true", "host_budget_pages"),
        ("domain_cap = 1", "domain_cap"),
        ("[rate]\nburst = 0", "rate.burst"),
        ("[rate]\nrefill_seconds = 0", "rate.refill_seconds"),
        ("[rate]\nrefill_seconds = true", "rate.refill_seconds"),
        ('[rate]\nrefill_seconds = "1"', "rate.refill_seconds"),
        ("[rate]\nburst = 1.0", "rate.burst"),
        ('[by_domid.7]\ncap_pages = "1"', "by_domid.7.cap_pages"),
        ("[by_domid.7.rate]\nburst = 0", "by_domid.7.rate.burst"),
        ("by_name = 1", "by_name"),
        ("[by_domid.07]\ncap_pages = 1", "by_domid.07"),
        ("[by_domid.x]\ncap_pages = 1", "by_domid.x"),
        ("[by_name.a]\ncap_pages = 1\ncolour = 1", "by_name.a.colour"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as err:
        Policy.load(f)
    assert str(err.value).startswith(f"{f}: ")
    assert field in str(err.value)


def test_constructed_policies_are_checked_too() -> None:
    with pytest.raises(ValueError, match=r"Policy\.by_domid: bad key: '07'"):
        Policy(by_domid={"07": DomainOverride()})
    with pytest.raises(ValueError, match=r"RateLimit\.refill_seconds: 0 is outside"):
        RateLimit(refill_seconds=0)
    with pytest.raises(ValueError, match=r"DomainOverride\.cap_pages: must be an integer"):
        DomainOverride(cap_pages=True)
    assert RateLimit(refill_seconds=60) == RateLimit(refill_seconds=60.0)


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("p.toml", b"= broken", "not valid TOML"),
        ("p.toml", b"\xff", "not valid TOML"),
        ("p.json", b"{", "not valid JSON"),
        ("p.json", b"[]", "top level"),
        ("p.yaml", b"", "must end in .toml or .json"),
    ],
)
def test_file_errors(tmp_path: Path, name: str, data: bytes, match: str) -> None:
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(PolicyError, match=match):
        Policy.load(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "absent.toml")


RATE = RateLimit(burst=5, refill_seconds=10)


def take(rl: RateLimiter, domid: int, now: float, rate: RateLimit) -> bool:
    """Ask for a token and, if there is one, spend it, as a committed grant does."""
    arrival = rl.next_arrival(domid, now, rate)
    if arrival is not None:
        rl.charge(domid, arrival)
    return arrival is not None


def test_asking_spends_nothing() -> None:
    rl = RateLimiter()
    one = RateLimit(burst=1, refill_seconds=100)
    assert rl.next_arrival(1, 0.0, one) == rl.next_arrival(1, 0.0, one) == 100.0
    rl.charge(1, 100.0)
    assert rl.next_arrival(1, 0.0, one) is None


def test_bucket_burst_then_refill() -> None:
    rl = RateLimiter()
    assert [take(rl, 1, 100.0, RATE) for _ in range(6)] == [True] * 5 + [False]
    assert not take(rl, 1, 109.0, RATE)
    assert take(rl, 1, 110.0, RATE)
    assert not take(rl, 1, 110.0, RATE)


def test_bucket_refills_only_to_burst() -> None:
    rl = RateLimiter()
    assert take(rl, 1, 0.0, RATE)
    assert [take(rl, 1, 1e6, RATE) for _ in range(6)] == [True] * 5 + [False]


def test_denied_attempts_do_not_push_refill_back() -> None:
    rl = RateLimiter()
    for _ in range(5):
        take(rl, 1, 0.0, RATE)
    for t in range(0, 10):
        assert not take(rl, 1, float(t), RATE)
    assert take(rl, 1, 10.0, RATE)


def test_clock_going_backwards_adds_nothing() -> None:
    rl = RateLimiter()
    for _ in range(5):
        take(rl, 1, 100.0, RATE)
    assert not take(rl, 1, 50.0, RATE)
    assert not take(rl, 1, 105.0, RATE)
    assert take(rl, 1, 110.0, RATE)


def test_domains_are_independent_and_forgettable() -> None:
    rl = RateLimiter()
    one = RateLimit(burst=1, refill_seconds=100)
    assert take(rl, 1, 0.0, one) and not take(rl, 1, 0.0, one)
    assert take(rl, 2, 0.0, one)
    rl.forget(1)
    rl.forget(99)
    assert take(rl, 1, 0.0, one)
