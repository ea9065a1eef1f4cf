"""The I/O the programs need, named: what they ask of xenstore and of Xen.

The role of XAPI squeezed's ``io`` record: the watcher and the device-model side are
written against these Protocols, so the adapters (pyxs, ``xen.lowlevel.xc``) and the
test suite's simulator (tests/sim) are interchangeable beneath them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, Self, TypeVar

from xsproto.negotiation import DomainInfo

T = TypeVar("T")


class XenstoreIO(Protocol):
    """One connection to xenstored. Inside ``transact`` every call belongs to the
    transaction; a read of a missing node gives None, a refusal raises XenstoreError."""

    def read(self, path: str) -> bytes | None: ...

    def children(self, path: str) -> list[str]: ...

    def owner(self, path: str) -> int | None: ...

    def perms(self, path: str) -> list[str] | None: ...

    def write(self, path: str, value: bytes) -> None: ...

    def set_perms(self, path: str, perms: Iterable[str]) -> None: ...

    def remove(self, path: str) -> None: ...

    def transact(self, fn: Callable[[Self], T], *, attempts: int = ...) -> T: ...

    def watch(self, path: str, token: str) -> None: ...

    def unwatch(self, path: str, token: str) -> None: ...

    def next_batch(self, timeout: float | None = None) -> list[tuple[str, str]]: ...

    def event_batches(self) -> Iterator[list[tuple[str, str]]]: ...


class HypervisorIO(Protocol):
    """Xen's domain control: the one place a domain's limit lives."""

    def domain(self, domid: int) -> DomainInfo: ...

    def domids(self) -> list[int]: ...

    def set_max_pages(self, domid: int, pages: int) -> None: ...

    def free_pages(self) -> int: ...
