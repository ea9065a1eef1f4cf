"""The error hierarchy of xsproto.

Callers branch on these types, never on message text. Every error names the failing
value and where it came from (a xenstore path, a domain id, an image offset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class XsprotoError(Exception):
    """Base of every error xsproto raises on purpose."""


class ProtocolError(XsprotoError):
    """A peer wrote something the protocol does not allow (malformed node, bad state)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class RequestRejected(XsprotoError):
    """The toolstack refused a request; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, detail: str, *, domid: int | None = None) -> None:
        self.code = code
        self.detail = detail
        self.domid = domid
        where = f"domain {domid}: " if domid is not None else ""
        super().__init__(f"{where}rejected ({code}): {detail}")


class NegotiationTimeout(XsprotoError):
    """No decision arrived in time."""


class XenstoreError(XsprotoError):
    """xenstored refused or failed an operation (after retries where retrying is safe)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class TransactionConflict(XenstoreError):
    """A transaction kept conflicting with other writers for all its attempts."""


class HypervisorError(XsprotoError):
    """A hypercall failed or the domain is not in a usable state."""

    def __init__(self, message: str, *, domid: int | None = None) -> None:
        self.domid = domid
        super().__init__(f"domain {domid}: {message}" if domid is not None else message)


class ImageError(XsprotoError):
    """A save image or migration stream is malformed; ``offset`` is where, in bytes."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        self.offset = offset
        super().__init__(f"at byte {offset}: {message}" if offset is not None else message)


class GrantRefused(XsprotoError):
    """The receiving host's policy refuses the grant an image carries; ``codes`` are the
    rules it breaks, as a request's rejection codes (``over-domain-cap``, ...)."""

    def __init__(self, message: str, *, codes: Sequence[str]) -> None:
        self.codes = tuple(codes)
        super().__init__(message)


class ImageKept(XsprotoError):
    """A save's image could not be put in place after xl succeeded (so the domain is gone):
    it is kept, whole or as far as it was checked, at ``path``."""

    def __init__(self, message: str, *, path: Path) -> None:
        self.path = path
        super().__init__(f"{message}; the image is kept at {path}")


@contextlib.contextmanager
def image_errors_from(where: object) -> Iterator[None]:
    """Prefix image errors with the file or stream they come from (the offset is kept)."""
    try:
        yield
    except ImageError as e:
        named = ImageError(f"{where}: {e}")
        named.offset = e.offset
        raise named from e


class InstallError(XsprotoError):
    """Setting the host up (or undoing it) failed at ``path``."""

    def __init__(self, message: str, *, path: object) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")
