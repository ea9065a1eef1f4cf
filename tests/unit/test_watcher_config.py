"""``xsproto watcher --check-config`` and the host policy's default place."""

from __future__ import annotations

from pathlib import Path

import pytest

from xsproto import policy
from xsproto.agents import watcher
from xsproto.exitcodes import Exit
from xsproto.policy import OnDrift, Policy, PolicyError


def test_no_host_policy_means_the_defaults(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(policy, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    assert Policy.load_host() == Policy()


def test_a_policy_named_on_purpose_must_exist(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load_host(tmp_path / "absent.toml")


def test_check_config_says_valid_or_names_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('domain_cap_pages = 100\non_drift = "adopt"\n')
    assert watcher.check_config(str(good)) == Exit.OK
    assert "valid: domain cap 100 pages" in capsys.readouterr().out
    assert Policy.load(good).on_drift is OnDrift.ADOPT
    bad = tmp_path / "bad.toml"
    bad.write_text('on_drift = "ignore"\n')
    assert watcher.check_config(str(bad)) == Exit.ERROR
    assert "on_drift" in capsys.readouterr().err
