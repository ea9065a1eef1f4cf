"""``xsproto install-host``: what it writes under a root, idempotence, and exact undoing."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from xsproto.agents import install_host
from xsproto.agents.install_host import Action
from xsproto.cli import main
from xsproto.errors import InstallError
from xsproto.policy import Policy

STOCK_DEFAULTS = b"XENDOMAINS_SAVE=/var/lib/xen/save\nXENDOMAINS_RESTORE=true\n"
COMMAND = Path("/opt/xsproto/bin/xsproto")
UNIT = "etc/systemd/system/xsproto-watcher.service"
POLICY = "etc/xen/xsproto.toml"
DEFAULTS = "etc/default/xendomains"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host with xendomains installed (its defaults file) and nothing of xsproto."""
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / DEFAULTS).write_bytes(STOCK_DEFAULTS)
    return tmp_path


def apply(root: Path, *, uninstall: bool = False) -> dict[str, Action]:
    return {str(c.path.relative_to(root)): c.action
            for c in install_host.apply(root, COMMAND, uninstall=uninstall)}


def test_install_writes_every_file_once_and_then_changes_nothing(root: Path) -> None:
    first = apply(root)
    assert set(first.values()) == {Action.INSTALLED}
    assert list(first) == [
        UNIT, "etc/systemd/system/multi-user.target.wants/xsproto-watcher.service", POLICY,
        DEFAULTS, "usr/local/share/bash-completion/completions/xsproto",
        "usr/local/share/man/man8/xsproto.8", "usr/local/share/man/man5/xsproto-policy.5"]
    assert set(apply(root).values()) == {Action.UNCHANGED}
    unit = (root / UNIT).read_text()
    assert f"ExecStart={COMMAND} watcher --policy /etc/xen/xsproto.toml\n" in unit
    link = root / "etc/systemd/system/multi-user.target.wants/xsproto-watcher.service"
    assert os.readlink(link) == "/etc/systemd/system/xsproto-watcher.service"
    assert Policy.load(root / POLICY) == Policy()
    defaults = (root / DEFAULTS).read_bytes()
    assert defaults.startswith(STOCK_DEFAULTS)
    assert defaults[len(STOCK_DEFAULTS):].startswith(b"# BEGIN xsproto\n")
    assert defaults.endswith(b"# END xsproto\n") and f"if [ -x {COMMAND} ]".encode() in defaults
    assert oct((root / UNIT).stat().st_mode & 0o777) == oct(0o644)


def test_a_changed_own_file_is_put_back_but_the_admins_policy_is_kept(root: Path) -> None:
    apply(root)
    (root / UNIT).write_text("edited\n")
    (root / POLICY).write_text("domain_cap_pages = 1\n")
    changed = apply(root)
    assert (changed[UNIT], changed[POLICY]) == (Action.INSTALLED, Action.KEPT)
    assert (root / POLICY).read_text() == "domain_cap_pages = 1\n"
    removed = apply(root, uninstall=True)
    assert removed[POLICY] is Action.KEPT and (root / POLICY).exists()
    assert removed[UNIT] is Action.REMOVED


def test_uninstall_removes_exactly_what_was_installed(root: Path) -> None:
    before = sorted(p for p in root.rglob("*") if not p.is_dir())
    apply(root)
    assert set(apply(root, uninstall=True).values()) == {Action.REMOVED}
    assert sorted(p for p in root.rglob("*") if not p.is_dir()) == before
    assert (root / DEFAULTS).read_bytes() == STOCK_DEFAULTS
    assert set(apply(root, uninstall=True).values()) == {Action.ABSENT}


def test_the_block_is_replaced_in_place_of_an_older_one_and_the_file_mode_kept(
        root: Path) -> None:
    (root / DEFAULTS).write_bytes(b"A=1\n# BEGIN xsproto\nold\n# END xsproto\nB=2")
    (root / DEFAULTS).chmod(0o640)
    assert apply(root)[DEFAULTS] is Action.INSTALLED
    text = (root / DEFAULTS).read_bytes()
    assert text.startswith(b"A=1\nB=2\n# BEGIN xsproto\n") and b"\nold\n" not in text
    assert text.count(b"# BEGIN xsproto") == 1
    assert (root / DEFAULTS).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("text", [b"# BEGIN xsproto\nx\n", b"x\n# END xsproto\n",
                                  b"# BEGIN xsproto\n# BEGIN xsproto\n# END xsproto\n"])
def test_unbalanced_markers_are_an_error_naming_the_file(root: Path, text: bytes) -> None:
    (root / DEFAULTS).write_bytes(text)
    with pytest.raises(InstallError, match=str(root / DEFAULTS)):
        apply(root)
    assert (root / DEFAULTS).read_bytes() == text


def test_without_xendomains_the_block_is_skipped(tmp_path: Path) -> None:
    assert apply(tmp_path)[DEFAULTS] is Action.SKIPPED
    assert not (tmp_path / DEFAULTS).exists()
    assert apply(tmp_path, uninstall=True)[DEFAULTS] is Action.ABSENT


def test_command_line_prints_one_line_per_file(root: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install_host, "installed_command", lambda argv0, executable: COMMAND)
    assert main(["install-host", "--root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"installed {root / UNIT}" and len(lines) == 7
    (root / POLICY).write_text("# mine\n")
    assert main(["install-host", "--root", str(root), "--uninstall"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"kept (admin's) {root / POLICY}" in lines
    assert f"removed {root / DEFAULTS}" in lines


def test_json_is_versioned_and_names_a_failing_path(root: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install_host, "installed_command", lambda argv0, executable: COMMAND)
    assert main(["install-host", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["format"], out["uninstall"], out["error"]) == (1, False, None)
    assert out["changes"][0] == {"path": str(root / UNIT), "action": "installed"}
    shutil.rmtree(root / "usr")
    (root / "usr").write_text("a file where a directory must be")
    assert main(["install-host", "--root", str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    failing = root / "usr/local/share/bash-completion/completions/xsproto"
    assert out["error"]["path"] == str(failing)
    assert [c["action"] for c in out["changes"]] == ["unchanged"] * 4
    assert main(["install-host", "--root", str(root)]) == 1
    assert f"xsproto: {failing}: cannot read: Not a directory" in capsys.readouterr().err


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_installed_command_is_the_one_running_else_beside_python_else_on_path(
        tmp_path: Path) -> None:
    script = _executable(tmp_path / "usr/local/bin/xsproto")
    venv = _executable(tmp_path / "venv/bin/xsproto")
    on_path = _executable(tmp_path / "bin/xsproto")

    def which(name: str) -> str:
        return str(on_path)

    python = str(tmp_path / "venv/bin/python")
    assert install_host.installed_command(str(script), python, which) == script
    assert install_host.installed_command("-m", python, which) == venv
    assert install_host.installed_command("-m", "/usr/bin/python3", which) == on_path
    with pytest.raises(InstallError, match="no executable xsproto"):
        install_host.installed_command("-m", "/usr/bin/python3", lambda name: None)
    odd = _executable(tmp_path / "a b/xsproto")
    with pytest.raises(InstallError, match="a b/xsproto"):
        install_host.installed_command(str(odd), python, which)


def test_this_checkouts_command_is_found() -> None:
    found = install_host.installed_command(sys.argv[0], sys.executable)
    assert found.name == "xsproto" and found.is_absolute()
