"""The watcher killed at random moments, on real Xen: every limit stays right.

kill -9 can land anywhere: mid-transaction, between the applying record and the
hypercall, between the hypercall and the granted record. A restarted watcher must finish
or redo the work so that, after every request, Xen's limit is the record's base +
granted, nothing was raised twice, and the answer the device model got is the record's.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable

import pytest

from tests.lab.conftest import GuestFactory, WatcherProcess
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import read_decision
from xsproto.agents import device_model
from xsproto.records import DecisionState

pytestmark = pytest.mark.lab

REQUESTS = 50
SEED = 20261129
request_pages = functools.partial(device_model.request_pages, timeout=180)


def test_kill_9_at_random_points_over_50_requests(
        make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess],
        xs: Xenstore, hv: Hypervisor) -> None:
    rng = random.Random(SEED)
    domid = make_guest()
    base = hv.domain(domid).max_pages
    watcher = start_watcher({"rate": {"burst": 1000, "refill_seconds": 1}})
    kills = 0
    for n in range(1, REQUESTS + 1):
        pages = rng.randrange(0, 4096)
        killer = None
        if n % 3 == 0:  # a third of the requests meet a kill -9 at a random moment, and a
            # restart at once: the new watcher finishes what the old one left
            killer = threading.Timer(rng.uniform(0.0, 0.6), watcher.restart)
            killer.start()
            kills += 1
        record = request_pages(xs, domid, pages, f"fault round {n}", dm_domid=0)
        if killer is not None:
            killer.join()
        recorded = read_decision(xs, domid)
        assert recorded is not None and recorded.state is DecisionState.GRANTED
        assert (recorded.base_pages, recorded.granted_pages) == (base, pages), n
        assert record.granted_pages == pages
        assert hv.domain(domid).max_pages == base + pages, (n, watcher.log()[-2000:])
    assert kills == REQUESTS // 3
