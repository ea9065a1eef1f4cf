"""The hypervisor adapter's reading of Xen's domain info, against a stand-in for
``xen.lowlevel.xc`` answering as Xen 4.17 does (the lab shows the real one)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from xsproto.adapters.hypervisor import Hypervisor


class FakeXc:
    """``domain_getinfo(first, max)``: the domains with id >= first, as Xen lists them."""

    def __init__(self, *domains: dict[str, Any]) -> None:
        self.domains = sorted(domains, key=lambda d: int(d["domid"]))

    def domain_getinfo(self, first: int, count: int) -> list[dict[str, Any]]:
        found = [d for d in self.domains if d["domid"] >= first][:count]
        if not found:
            raise OSError(errno.ESRCH, "No such process")
        return found


def info(domid: int, *, dying: int = 0, shutdown: int = 0) -> dict[str, Any]:
    return {"domid": domid, "dying": dying, "shutdown": shutdown, "maxmem_kb": 132096,
            "mem_kb": 131072}


def test_a_shut_down_domain_is_alive() -> None:
    """``xl save -c`` suspends the guest (shutdown, reason suspend): its grant must stand.
    This failed while shutdown was folded into dying."""
    hv = Hypervisor(FakeXc(info(0), info(5, shutdown=1)))
    domain = hv.domain(5)
    assert domain.exists and not domain.dying
    assert (domain.max_pages, domain.tot_pages) == (33024, 32768)
    assert hv.domids() == [0, 5]


def test_a_dying_domain_is_gone() -> None:
    hv = Hypervisor(FakeXc(info(0), info(5, dying=1)))
    assert hv.domain(5).dying
    assert hv.domids() == [0]


@pytest.mark.parametrize("domid", [4, 9])
def test_absent_domains(domid: int) -> None:
    hv = Hypervisor(FakeXc(info(0), info(5)))
    assert not hv.domain(domid).exists
