"""Hundreds of domains: the lab makes them cheaply, and the watcher still serves each one.

Empty domains (no kernel, never run) are real domains in Xen with a name in xenstore: the
watcher sees them at start-up and on every request exactly as it sees guests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from tests.lab.conftest import WatcherProcess
from tools.lab import guests
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents import device_model

pytestmark = pytest.mark.lab

COUNT = 200
MEMORY_MB = 16
request_pages = functools.partial(device_model.request_pages, timeout=180)


@pytest.fixture
def empties() -> Iterator[list[int]]:
    domids = guests.create_empty(COUNT, MEMORY_MB)
    yield domids
    guests.destroy_empty(domids)


@pytest.mark.once  # the watcher's scan of hundreds of domains: Xen and the watcher's cost
def test_the_watcher_serves_domains_among_hundreds(
        empties: list[int], start_watcher: Callable[..., WatcherProcess], xs: Xenstore,
        hv: Hypervisor) -> None:
    assert set(empties) <= set(hv.domids())
    assert xs.read(f"/local/domain/{empties[0]}/name") == f"xenlab-empty-{empties[0]}".encode()
    start_watcher()  # reconciles with all of them present
    base = MEMORY_MB * 256
    for domid in (empties[0], empties[COUNT // 2], empties[-1]):
        record = request_pages(xs, domid, 64)
        assert (record.base_pages, record.granted_pages, record.max_pages) == \
            (base, 64, base + 64)
        assert hv.domain(domid).max_pages == base + 64
        for where in (paths.request_node(0, domid), paths.decision_node(domid)):
            xs.remove(where)  # these domains are never introduced to xenstored: no
            # @releaseDomain will come for them, so the test tidies what it made
    untouched = empties[1]
    assert hv.domain(untouched).max_pages == base
