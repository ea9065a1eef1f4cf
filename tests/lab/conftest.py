"""Fixtures for lab tests: real guests on the real hypervisor, cleaned up after each test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tools.lab import fetch, guests
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore

pytestmark = pytest.mark.lab

GuestFactory = Callable[..., int]

EMULATOR_RERUNS = 4
"""Runs again of a lab test that an emulator fault (not the code under test) broke."""


class EmulatorFault(Exception):
    """QEMU's software SVM (nested virtualisation under TCG) triple-faulted an HVM guest.

    It happens to a PVH guest now and then, idle or booting, more often when the host is
    busy: Xen logs "dNvM Triple fault" and xl reboots the guest under a new domain id. A
    lab test it hits is run again; PV guests (no SVM) are not affected, so tests use them
    unless they are about PVH.
    """


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.flaky(reruns=EMULATOR_RERUNS,
                                              only_rerun=["EmulatorFault"]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Name an emulator fault as the cause of a failure it explains (domain ids only grow,
    so a domain newly reported is one this test created)."""
    before = guests.triple_faulted()
    try:
        return (yield)
    except Exception as e:
        if hit := sorted(guests.triple_faulted() - before):
            raise EmulatorFault(f"the emulator triple-faulted domain(s) {hit} during the "
                                f"test (xl dmesg); the failure was: {e}") from e
        raise


@pytest.fixture
def make_guest(request: pytest.FixtureRequest) -> Iterator[GuestFactory]:
    """Create real xl guests (PV by default, booting the lab's guest image unless
    ``initrd`` names another); every one is destroyed afterwards."""
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    created: list[str] = []

    def make(name: str | None = None, *, kind: str = "pv", memory_mb: int = 128,
             initrd: Path | None = None) -> int:
        name = name or f"t{len(created)}-{request.node.name[:24]}".replace("[", "-").strip("]")
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        created.append(name)
        return guests.create(name, kind=kind, memory_mb=memory_mb,
                             files=replace(files, guest_initrd=initrd or files.guest_initrd))

    yield make
    for name in created:
        subprocess.run(["xl", "destroy", name], capture_output=True)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """dom0's /tmp is a tmpfs: fine for images a test writes and throws away."""
    return tmp_path


XSPROTO = str(Path(sys.executable).with_name("xsproto"))


class WatcherProcess:
    """``xsproto watcher`` as a real daemon process that tests can kill -9 and restart."""

    def __init__(self, log_dir: Path, policy: Path | None = None) -> None:
        self.log_dir, self.policy = log_dir, policy
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"watcher-{self.starts}.log"

    def start(self, *, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.starts += 1
        argv = [XSPROTO, "watcher", *(["--policy", str(self.policy)] if self.policy else [])]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})
        if wait:
            self.wait_for("watching")

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"watcher exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"watcher never logged {text!r}:\n{self.log()}")

    def wait_exit(self, timeout: float = 300) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, **kw: Any) -> None:
        self.stop()
        self.start(**kw)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def start_watcher(tmp_path: Path) -> Iterator[Callable[..., WatcherProcess]]:
    """Start watchers (optionally with a policy dict); all are killed afterwards."""
    started: list[WatcherProcess] = []

    def start(policy: dict[str, Any] | None = None, **kw: Any) -> WatcherProcess:
        log_dir = tmp_path / f"watcher{len(started)}"
        log_dir.mkdir()
        policy_file = None
        if policy is not None:
            policy_file = log_dir / "policy.json"
            policy_file.write_text(json.dumps(policy))
        w = WatcherProcess(log_dir, policy_file)
        started.append(w)
        w.start(**kw)
        return w

    yield start
    for w in started:
        w.stop()
        print(f"--- watcher log ({w.log_dir.name}) ---\n{w.log()}")  # shown on failure


@pytest.fixture
def watcher(start_watcher: Callable[..., WatcherProcess]) -> WatcherProcess:
    return start_watcher()


@pytest.fixture
def xs() -> Iterator[Xenstore]:
    with Xenstore() as conn:
        yield conn


@pytest.fixture(scope="session")
def hv() -> Hypervisor:
    return Hypervisor()
