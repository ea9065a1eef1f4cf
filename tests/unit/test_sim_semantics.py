"""The simulated xenstored follows the rules of tests/sim/semantics.py, in each flavour;
tests/lab/test_sim_semantics.py shows the real daemons do."""

from __future__ import annotations

import os
import pty
import select
import signal
import struct
import subprocess
import threading
import time
import tty
from pathlib import Path

import pytest

from tests.sim import semantics
from tests.sim.host import Host
from tests.sim.xenstore import Connection, Flavour, Store

HEADER = struct.Struct("<IIII")
"""xs_wire.h's message header: type, request id, transaction id, payload length."""
XS_ERROR = 16


@pytest.mark.parametrize("name", semantics.DOM0_SCENARIOS)
@pytest.mark.parametrize("flavour", Flavour)
def test_dom0_scenarios(flavour: Flavour, name: str) -> None:
    store = Store(flavour)
    top = f"/local/domain/0/sim-semantics/{name}"
    scenario = semantics.DOM0_SCENARIOS[name]
    assert scenario.run(lambda: store.connect(0), top) == scenario.expected(flavour, top)


@pytest.mark.parametrize("flavour", Flavour)
def test_guest_probes(flavour: Flavour) -> None:
    host = Host(flavour)
    domid, target = host.create_guest(1000).domid, host.create_guest(1000).domid
    semantics.prepare_guest(host.libxl, domid, target, host.store.set_target)
    guest = host.store.connect(domid)
    for probe in (p.at(domid, target) for p in semantics.guest_probes(flavour)):
        assert (probe.name, guest.ask(probe.message, probe.path, *probe.args)) == (
            probe.name, probe.answer)
        assert (probe.name, semantics.perms_after(host.libxl, probe, domid)) == (
            probe.name, probe.perms)


def _serve(conn: Connection, fd: int, done: threading.Event) -> None:
    """Answer the xs_wire requests arriving on ``fd`` from the simulator, as the xenbus
    device of the guest ``conn`` stands for."""
    names = {number: name for name, number in semantics.WIRE.items()}
    pending = b""
    while not done.is_set():
        if not select.select([fd], [], [], 0.05)[0]:
            continue
        pending += os.read(fd, 65536)
        while len(pending) >= HEADER.size:
            kind, rq, tx, size = HEADER.unpack_from(pending)
            if len(pending) < HEADER.size + size:
                break
            payload = pending[HEADER.size:HEADER.size + size]
            pending = pending[HEADER.size + size:]
            path, *args = payload.rstrip(b"\0").decode().split("\0")
            answer = conn.ask(names[kind], path, *args)
            if answer.startswith("ERR "):
                kind, body = XS_ERROR, answer[4:].encode() + b"\0"
            else:
                body = answer[3:].encode() if names[kind] == "read" else b"OK\0"
            os.write(fd, HEADER.pack(kind, rq, tx, len(body)) + body)


@pytest.mark.parametrize("flavour", Flavour)
def test_the_lab_guests_client_on_the_simulator(flavour: Flavour, tmp_path: Path) -> None:
    """The init script the lab's probe guest runs, run here by the host's sh against the
    simulator (through a raw pty standing for /dev/xen/xenbus), answers as the
    simulator does: the lab's guest-side check tests the daemon, not the script."""
    host = Host(flavour)
    domid, target = host.create_guest(1000).domid, host.create_guest(1000).domid
    semantics.prepare_guest(host.libxl, domid, target, host.store.set_target)
    script = tmp_path / "init"
    script.write_text(semantics.guest_init(semantics.guest_probes(flavour)))
    master, slave = pty.openpty()
    tty.setraw(slave)
    done = threading.Event()
    server = threading.Thread(target=_serve, args=(host.store.connect(domid), master, done))
    server.start()
    shell = subprocess.Popen(["sh", str(script)], env={**os.environ, "XENBUS": os.ttyname(
        slave)}, stdout=subprocess.DEVNULL, start_new_session=True)
    results = f"/local/domain/{domid}/{semantics.RESULTS}"
    try:
        deadline = time.monotonic() + 30
        while not host.store.value(results) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
        done.set()
        server.join()
        os.close(master)
        os.close(slave)
    raw = host.store.value(results)
    assert raw, "the script never wrote its results"
    probes = [p.at(domid, target) for p in semantics.guest_probes(flavour)]
    assert semantics.answers(raw) == {p.name: p.answer for p in probes}
