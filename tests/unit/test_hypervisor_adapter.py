"""The hypervisor adapter's reading of Xen's domain info, against a stand-in for
``xen.lowlevel.xc`` answering as Xen 4.17 does (the lab shows the real one)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xsproto.adapters import hypervisor
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.errors import HypervisorError


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


# Finding Xen's Python bindings without a hand-made .pth file.

def sysfs(tmp_path: Path, major: str = "4", minor: str = "17") -> Path:
    """/sys/hypervisor as Xen's kernel driver shows it."""
    root = tmp_path / "sys-hypervisor"
    (root / "version").mkdir(parents=True)
    (root / "type").write_text("xen\n")
    (root / "version" / "major").write_text(f"{major}\n")
    (root / "version" / "minor").write_text(f"{minor}\n")
    return root


def test_debians_bindings_of_the_running_xen(tmp_path: Path) -> None:
    assert hypervisor.debian_bindings(sysfs(tmp_path, minor="19")) == "/usr/lib/xen-4.19/lib/python"
    assert hypervisor.debian_bindings(tmp_path / "absent") is None


@pytest.fixture
def no_xen_on_the_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Python that has not imported Xen's bindings and cannot find them by itself."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "/usr/lib/xen-" not in p])
    for name in [m for m in sys.modules if m == "xen" or m.startswith("xen.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "xen" or m.startswith("xen.")]:
        del sys.modules[name]  # the stand-in imported below


def test_the_bindings_are_found_in_debians_directory_for_the_running_xen(
        no_xen_on_the_path: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lowlevel = tmp_path / "xen-4.17" / "lib" / "python" / "xen" / "lowlevel"
    lowlevel.mkdir(parents=True)
    (lowlevel.parent / "__init__.py").write_text("")
    (lowlevel / "__init__.py").write_text("")
    (lowlevel / "xc.py").write_text("class Error(Exception):\n    pass\nSTAND_IN = True\n")
    monkeypatch.setattr(hypervisor, "DEBIAN_BINDINGS", f"{tmp_path}/xen-{{version}}/lib/python")
    xc = hypervisor.import_xc(sysfs(tmp_path))
    assert xc.STAND_IN
    assert sys.path[-1] == f"{tmp_path}/xen-4.17/lib/python"


def test_missing_bindings_are_a_clear_error(no_xen_on_the_path: None,
                                            monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr(hypervisor, "DEBIAN_BINDINGS", f"{tmp_path}/xen-{{version}}/lib/python")
    with pytest.raises(HypervisorError, match=f"not even from {tmp_path}/xen-4.17/lib/python: "
                                              "install the xen-utils package"):
        hypervisor.import_xc(sysfs(tmp_path))
    with pytest.raises(HypervisorError, match="shows no running Xen: run this in dom0"):
        hypervisor.import_xc(tmp_path / "no-sysfs")
