"""The lab itself: real hypervisor, real xenstored, real xl."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from pyxs import Client

from tests.lab.conftest import GuestFactory
from xsproto.adapters.hypervisor import import_xc

pytestmark = pytest.mark.lab


def test_xen_limit_matches_xl(make_guest: GuestFactory) -> None:
    xc = import_xc()  # Xen's bindings, found as xsproto finds them (no .pth)

    domid = make_guest(memory_mb=128)
    info = xc.xc().domain_getinfo(domid, 1)[0]
    assert info["domid"] == domid
    config = json.loads(subprocess.run(["xl", "list", "-l", str(domid)], check=True,
                                       capture_output=True, text=True).stdout)
    b_info = config[0]["config"]["b_info"]
    # libxl sets max = target + LIBXL_MAXMEM_CONSTANT (1024 kB) in libxl__build_pre.
    assert info["maxmem_kb"] == b_info["target_memkb"] + 1024


def test_watch_sees_write_from_another_connection() -> None:
    path = b"/local/domain/0/data/xenlab-watch-test"
    fired = threading.Event()
    with Client() as watcher_conn, Client() as writer:
        monitor = watcher_conn.monitor()
        monitor.watch(path, b"token")

        def wait() -> None:
            for wpath, token in monitor.wait():
                if wpath == path and token == b"token" and watcher_conn.exists(path):
                    fired.set()
                    return

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        writer.write(path, b"hello")
        thread.join(timeout=10)
        writer.delete(path)
    assert fired.is_set()


def test_xenstored_kind_is_the_one_asked_for() -> None:
    kind = Path("/run/xenlab/xenstored").read_text().strip()
    procs = subprocess.run(["ps", "-eo", "comm"], check=True, capture_output=True,
                           text=True).stdout.split()
    assert ("oxenstored" if kind == "ocaml" else "xenstored") in procs
