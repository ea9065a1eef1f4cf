"""Test wiring: tests marked ``lab`` need the real hypervisor, so they only run in dom0."""

from __future__ import annotations

import os

import pytest

IN_DOM0 = os.environ.get("XENLAB_IN_DOM0") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_DOM0:
        return
    skip = pytest.mark.skip(reason="needs the real Xen lab: tools/xenlab run -- pytest -m lab")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
