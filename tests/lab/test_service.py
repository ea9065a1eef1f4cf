"""The watcher as a host service, on real Xen: systemd's readiness, SIGHUP, drift after
``xl mem-max``, and what ``status`` shows (its JSON against its published schema)."""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.lab.conftest import XSPROTO, GuestFactory, WatcherProcess
from xsproto import paths, schemas
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import read_decision
from xsproto.agents import device_model
from xsproto.errors import RequestRejected
from xsproto.exitcodes import Exit
from xsproto.negotiation import RejectCode

pytestmark = pytest.mark.lab

request_pages = functools.partial(device_model.request_pages, dm_domid=0, timeout=180)


def schema_of(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads((schemas.SCHEMA_DIR / f"{name}.schema.json").read_text()))


def xsproto(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSPROTO, *args], capture_output=True, text=True, timeout=300)


def test_ready_after_reconcile_and_a_bad_reload_keeps_the_policy(
        make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess],
        xs: Xenstore, tmp_path: Path) -> None:
    domid = make_guest()
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(300)
        w = start_watcher({"domain_cap_pages": 4096}, env={"NOTIFY_SOCKET": str(notify)},
                          wait=False)
        assert listener.recv(4096).startswith(b"READY=1")
        assert "watching" in w.log()  # READY comes after the start-up reconcile
        assert w.policy is not None
        w.policy.write_text("{not json")
        assert w.proc is not None
        w.proc.send_signal(signal.SIGHUP)
        w.wait_for("reload-refused")
        assert request_pages(xs, domid, 2048, "after a bad reload").granted_pages == 2048
        w.policy.write_text(json.dumps({"domain_cap_pages": 100}))
        w.proc.send_signal(signal.SIGHUP)
        w.wait_for("reloaded")
        with pytest.raises(RequestRejected) as err:
            request_pages(xs, domid, 200, "over the reloaded cap")
        assert err.value.code == RejectCode.OVER_DOMAIN_CAP
    assert w.proc.poll() is None


def test_xl_mem_max_drift_is_reported_and_settled(
        make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess],
        xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = hv.domain(domid).max_pages
    w = start_watcher({"on_drift": "reapply"})
    request_pages(xs, domid, 2048, "ROMs")
    w.stop()  # first as an admin sees it with no watcher running
    # xl mem-max adds libxl's 1 MiB of slack to what it is given: read what Xen holds.
    subprocess.run(["xl", "mem-max", str(domid), f"{(base + 100) * 4}k"], check=True)
    lowered = hv.domain(domid).max_pages
    assert lowered < base + 2048
    status = xsproto("status", "--json")
    assert status.returncode == Exit.DRIFT, status.stderr
    document = json.loads(status.stdout)
    schema_of("status-output").validate(document)
    row = next(r for r in document["domains"] if r["domid"] == domid)
    assert row["drift"] and row["xen_max_pages"] == lowered
    assert row["granted_pages"] == 2048 and "reconcile" in row["problem"]

    adopt = xsproto("reconcile", "--adopt", "--domid", str(domid), "--json")
    assert adopt.returncode == 0, adopt.stderr
    assert json.loads(adopt.stdout)["settled"] == [{"domid": domid, "action": "adopt"}]
    record = read_decision(xs, domid)
    assert record is not None
    assert (record.base_pages, record.granted_pages) == (base, lowered - base)
    assert xsproto("status", "--domid", str(domid)).returncode == Exit.OK

    w.start()  # the watcher settles the next drift by itself (reapply), within a rescan
    subprocess.run(["xl", "mem-max", str(domid), f"{base * 4}k"], check=True)
    deadline = time.monotonic() + 120
    while hv.domain(domid).max_pages != lowered and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hv.domain(domid).max_pages == lowered, w.log()
    assert "drift" in w.log()


class Lines:
    """What a process prints, line by line, with a timeout. A reader thread, not select()
    on the pipe: the file object reads ahead, so a second line may wait in its buffer
    while select() says there is nothing (the lab's C xenstored run saw exactly that)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc, self.queue = proc, queue.Queue[str | None]()
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                self.queue.put(line)
            self.queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float) -> str | None:
        """The next line within ``timeout`` seconds (None: none came); the process's
        stderr in the failure if it ended."""
        try:
            line = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        assert self.proc.stderr is not None
        assert line is not None, f"status --follow ended ({self.proc.wait()}): " \
            f"{self.proc.stderr.read()}"
        return line


def _stacks(proc: subprocess.Popen[str]) -> str:
    """Where a silent follower is: faulthandler's dump of its threads (SIGABRT)."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGABRT)
    proc.wait()
    return proc.stderr.read()


def test_follow_prints_decoded_events(make_guest: GuestFactory, watcher: WatcherProcess,
                                      xs: Xenstore) -> None:
    """``status --follow --json`` prints one schema-valid object per protocol event: a
    request's, then its decision's."""
    domid = make_guest()
    follower = subprocess.Popen([XSPROTO, "status", "--follow", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1",
                                     "PYTHONFAULTHANDLER": "1"})
    try:
        # Ready once it decodes something: a malformed request (no version, no id: the
        # watcher rejects it with request-id 0, and the agent's next id is 1) is shown as a
        # request with a problem.
        probe = paths.request_node(0, domid)
        deadline = time.monotonic() + 120
        lines = Lines(follower)
        while (first := lines.next(2.0)) is None:
            assert time.monotonic() < deadline, "status --follow printed nothing"
            xs.write(probe, b"reason=probe\n")
        assert json.loads(first)["kind"] == "request"
        request_pages(xs, domid, 512, "followed")
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            line = lines.next(deadline - time.monotonic())
            assert line is not None, f"no granted decision among {events}: {_stacks(follower)}"
            event = json.loads(line)
            schema_of("follow-event").validate(event)
            events.append(event)
            if event["kind"] == "decision" and event.get("state") == "granted":
                break
    finally:
        follower.kill()
        follower.wait()
    kinds = [(e["kind"], e["domid"]) for e in events]
    assert ("request", domid) in kinds and ("decision", domid) in kinds
    assert events[-1]["granted_pages"] == 512
