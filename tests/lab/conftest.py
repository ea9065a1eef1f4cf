"""Fixtures for lab tests: real guests on the real hypervisor, cleaned up after each test."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.lab import fetch, guests

pytestmark = pytest.mark.lab

GuestFactory = Callable[..., int]


@pytest.fixture
def make_guest(request: pytest.FixtureRequest) -> Iterator[GuestFactory]:
    """Create real xl guests (PVH by default); every one is destroyed afterwards."""
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    created: list[str] = []

    def make(name: str | None = None, *, kind: str = "pvh", memory_mb: int = 128) -> int:
        name = name or f"t{len(created)}-{request.node.name[:24]}".replace("[", "-").strip("]")
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        created.append(name)
        return guests.create(name, kind=kind, memory_mb=memory_mb, files=files)

    yield make
    for name in created:
        subprocess.run(["xl", "destroy", name], capture_output=True)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """dom0's /tmp is a tmpfs: fine for images a test writes and throws away."""
    return tmp_path
