"""The files the package carries for a host: the unit, the default policy, the xendomains
block, bash completion and man pages; and that the wheel carries them and nothing else."""

from __future__ import annotations

import argparse
import configparser
import os
import re
import subprocess
import tempfile
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from setuptools.dist import Distribution

from tools import completion
from xsproto.agents.install_host import data, rendered
from xsproto.cli import build_parser
from xsproto.policy import DomainOverride, Policy

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "xsproto" / "data"
PACKAGE_DATA = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file())


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_unit_starts_the_installed_command_in_the_right_place_of_boot() -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(rendered("xsproto-watcher.service", Path("/usr/bin/xsproto")).decode())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert service["ExecStart"] == "/usr/bin/xsproto watcher --policy /etc/xen/xsproto.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # Debian 12's xen.service (from /etc/init.d/xen) starts xenstored; upstream's units too.
    assert unit["Unit"]["After"].split() == ["xen.service", "xenstored.service",
                                             "proc-xen.mount"]
    assert unit["Unit"]["Before"] == "xendomains.service"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_default_policy_file_is_the_built_in_policy_and_shows_its_values() -> None:
    text = data("xsproto.toml").decode()
    assert Policy.parse(text.encode(), source="xsproto.toml", toml=True) == Policy()
    # Every commented setting ("#key = value", "#[table]"), uncommented, is the default
    # again, apart from the example overrides.
    uncommented = "\n".join(line[1:] for line in text.splitlines()
                            if re.match(r"^#[a-z\[]", line))
    shown = Policy.parse(uncommented.encode(), source="uncommented", toml=True)
    assert shown.by_name == {"big-roms": DomainOverride(cap_pages=16384)}
    assert shown.by_domid == {"7": DomainOverride(cap_pages=0)}
    assert replace(shown, by_name={}, by_domid={}) == Policy()
    assert set(tomllib.loads(uncommented)) == {
        "domain_cap_pages", "host_budget_pages", "free_reserve_pages", "on_drift", "rate",
        "by_name", "by_domid"}


def test_completion_is_generated_from_the_parser() -> None:
    assert completion.main(["--check"]) == 0, "run: python -m tools.completion"


def complete(*words: str) -> list[str]:
    """What bash offers after ``xsproto WORDS...`` (the last word being completed)."""
    script = (f"source {REPO / 'xsproto/data/xsproto.bash'}\n"
              f"COMP_WORDS=(xsproto {' '.join(map(repr, words))}); "
              f"COMP_CWORD={len(words)}; _xsproto; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_completion_offers_every_subcommand_and_its_options() -> None:
    commands = subcommands(build_parser())
    assert complete("") == list(commands)
    assert complete("--log-level", "INFO", "in") == ["inspect-image", "install-host"]
    assert complete("--log-level", "") == ["DEBUG", "INFO", "WARNING", "ERROR"]
    for name, parser in commands.items():
        options = [o for a in parser._actions for o in a.option_strings]
        assert complete(name, "-") == options, name
    assert complete("install-host", "--root", "") == []  # a directory: bash's default
    assert complete("status", "--domid", "3", "--") == ["--help", "--domid", "--follow", "--json"]


def roff_text(name: str) -> str:
    """A man page's text with roff's escapes and font changes taken out."""
    text = data(name).decode()
    return re.sub(r"\\f[BIRP]", "", text.replace("\\-", "-").replace('\\(dq', '"'))


def test_the_man_page_documents_every_subcommand_and_option() -> None:
    page = roff_text("xsproto.8")
    sections = re.split(r"^\.SS ", page, flags=re.M)[1:]
    documented = {s.split()[0].strip('"') + " " + s.split()[1]: s for s in sections}
    for name, parser in subcommands(build_parser()).items():
        section = documented.get(f"xsproto {name}")
        assert section is not None, f"xsproto.8 has no section for {name}"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), (
                        f"xsproto.8: {name} {option}")
    for option in ("--xenstore", "--log-level", "--version"):
        assert option in page.split(".SH COMMANDS")[0]


def test_the_policy_man_page_names_every_setting() -> None:
    page = roff_text("xsproto-policy.5")
    for setting in ("domain_cap_pages", "host_budget_pages", "free_reserve_pages",
                    "rate.burst", "rate.refill_seconds", "by_name.", "by_domid.", "cap_pages"):
        assert setting in page
    example = page.split(".SH EXAMPLE")[1].split(".nf\n")[1].split(".fi")[0]
    assert Policy.parse(example.encode(), source="example", toml=True).domain_cap_pages == 4096


def test_the_wheel_carries_the_package_its_typing_marker_and_the_host_files() -> None:
    """What setuptools' build_py puts in the wheel (what pip wheel packs, less metadata)."""
    dist = Distribution()
    dist.script_name = "setup.py"
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as out:
        try:
            os.chdir(REPO)
            dist.parse_config_files()
            build = dist.get_command_obj("build_py")
            build.build_lib = out
            dist.run_command("build_py")
        finally:
            os.chdir(cwd)
        files = {str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "xsproto").rglob("*.py")}
    assert files == modules | {"xsproto/py.typed"} | {f"xsproto/data/{n}" for n in PACKAGE_DATA}
    assert {"xsproto/data/xsproto-watcher.service", "xsproto/data/schemas/status-output"
            ".schema.json", "xsproto/data/schemas/image-record.schema.json"} <= files


STUBS = {"xen": 'echo "stock xen $*" >&2', "xsproto": 'echo "xsproto $*" >&2; exit 3'}


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    """``xen`` (as /usr/sbin/xen) and ``xsproto`` stand-ins that say on stderr (which
    xendomains keeps, to show on failure) how they were called."""
    for name, body in STUBS.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    return tmp_path


def xendomains(stub_bin: Path, commands: str) -> str:
    """Run ``commands`` in bash after sourcing the block, as /etc/init.d/xendomains does
    (it sources /etc/default/xendomains, then calls ``xen`` directly and in a coproc)."""
    block = stub_bin / "block"
    block.write_bytes(rendered("xendomains.sh", stub_bin / "xsproto"))
    out = subprocess.run(["bash", "-c", f". {block}\n{commands}"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={"PATH": f"{stub_bin}:/usr/bin:/bin"})
    return out.stdout


def test_the_xendomains_block_sends_save_restore_migrate_to_xsproto(stub_bin: Path) -> None:
    # timeout_coproc's way: the verb runs as a coprocess, in a subshell of the script
    coproc = ('coproc xen save 3 "/var/lib/xen/save/g 1" 2>&1 1>/dev/null\n'
              'exec {out}<&"${COPROC[0]}"; pid=$COPROC_PID; wait $pid; echo "rc=$?"; '
              'cat <&$out')
    assert xendomains(stub_bin, coproc).split("\n")[:2] == [
        "rc=3", "xsproto save 3 /var/lib/xen/save/g 1"]
    out = xendomains(stub_bin, 'out=$(xen restore "/s/g" 2>&1); echo "$? $out"\n'
                               "xen migrate 3 host\nxen list -l\nxen domid g")
    assert out.splitlines() == ["3 xsproto restore /s/g", "xsproto migrate 3 host",
                                "stock xen list -l", "stock xen domid g"]


XENDOMAINS = Path("/etc/init.d/xendomains")
LIST = '[{"domid": 0, "config": {"c_info": {"name": "Domain-0"}}}, ' \
       '{"domid": 3, "config": {"c_info": {"name": "g1"}}}]'


@pytest.mark.skipif(not XENDOMAINS.exists(), reason="xen-utils-common is not installed")
def test_debians_own_xendomains_saves_and_restores_through_xsproto(stub_bin: Path,
                                                                 tmp_path: Path) -> None:
    """The functions of the real /etc/init.d/xendomains that save at shutdown and restore
    at boot, run with the block sourced (the lab runs the whole script on real Xen)."""
    script = XENDOMAINS.read_text()
    functions = [re.search(rf"^{name}\(\)\n\{{\n.*?^\}}$", script, re.M | re.S)
                 for name in ("timeout_coproc", "do_stop_save", "do_start_restore")]
    assert all(functions), "xendomains changed: check the integration (docs/admin.md)"
    (stub_bin / "xen").write_text(f"#!/bin/sh\necho '{LIST}'\n")  # xen-init-list: xen list -l
    (stub_bin / "xsproto").write_text('#!/bin/sh\necho "xsproto $*" >> "$CALLS"\n'
                                      '[ "$1" = save ] && echo image > "$3"\nexit 0\n')
    saved = tmp_path / "save"
    calls = tmp_path / "calls"
    out = xendomains(stub_bin, "\n".join(
        [". /lib/lsb/init-functions", *(f[0] for f in functions if f),
         f"XENDOMAINS_SAVE={saved} XENDOMAINS_RESTORE=true XENDOMAINS_STOP_MAXWAIT=30",
         f"export CALLS={calls}", "do_stop_save", "ls $XENDOMAINS_SAVE",
         "declare -A domains; do_start_restore", "ls $XENDOMAINS_SAVE"]))
    assert calls.read_text().splitlines() == [f"xsproto save 3 {saved}/g1",
                                              f"xsproto restore {saved}/g1"], out
    assert not (saved / "g1").exists()  # restored, so xendomains removed it


def test_without_xsproto_the_block_falls_back_to_stock_xen(stub_bin: Path) -> None:
    (stub_bin / "xsproto").unlink()
    assert xendomains(stub_bin, "xen save 3 /s/g").strip() == "stock xen save 3 /s/g"
