"""Typed fault points: where a simulated agent can be killed, or overtaken by another.

An agent (a watcher, a device model) reaches a point each time its xenstore connection or
its Xen handle passes one; its ``Plan`` says what happens at the n-th time: raise
``Crash`` (kill -9: the test drops the agent and may start a new one), or run other
agents first (a stalled process another overtakes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from enum import StrEnum


class FaultPoint(StrEnum):
    """Where an agent can stop. The two hypercall points bracket ``set_max_pages``: in the
    watcher's carry-out they are exactly its ``after-applying`` and ``after-hypercall``
    checkpoints (the applying record is committed just before the hypercall)."""

    REQUEST = "request"
    """Before any xenstore request."""
    BEFORE_COMMIT = "before-commit"
    """A transaction is complete but not committed: a crash loses it."""
    AFTER_COMMIT = "after-commit"
    """A transaction just committed."""
    AFTER_APPLYING = "after-applying"
    """Before a ``set_max_pages`` hypercall."""
    AFTER_HYPERCALL = "after-hypercall"
    """Just after a ``set_max_pages`` hypercall."""


class Crash(BaseException):
    """The agent dies where it stands, as by kill -9.

    A BaseException, so that no ``except Exception`` in the code under test (the watcher
    logs and survives every Exception) can swallow it."""


def crash() -> None:
    raise Crash


Action = Callable[[], None]


class Plan:
    """What happens to one agent at its fault points: ``at(point, n, action)`` runs the
    action when the agent reaches ``point`` for the n-th time from now (1: the next)."""

    def __init__(self) -> None:
        self.reached: Counter[FaultPoint] = Counter()
        self._actions: dict[tuple[FaultPoint, int], list[Action]] = {}

    def at(self, point: FaultPoint, n: int, *actions: Action) -> Plan:
        self._actions.setdefault((point, self.reached[point] + n), []).extend(actions)
        return self

    def clear(self) -> None:
        """Forget the actions not run yet."""
        self._actions.clear()

    def reach(self, point: FaultPoint) -> None:
        self.reached[point] += 1
        for action in self._actions.pop((point, self.reached[point]), ()):
            action()

    @property
    def pending(self) -> Iterable[tuple[FaultPoint, int]]:
        """The points planned and not reached yet."""
        return list(self._actions)
