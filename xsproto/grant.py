"""The one grant type: the extra pages a domain holds by negotiation, and the limit in Xen
they give. The decision record, the image record, the image hooks and migrate's
transport all carry a grant as this type, so its invariant is checked in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from xsproto.values import PAGES_MAX

_TEXT: Final = re.compile(r"(0|[1-9][0-9]{0,9})\+(0|[1-9][0-9]{0,9})")


@dataclass(frozen=True)
class Grant:
    """``granted_pages`` extra pages on top of ``base_pages``, the limit the toolstack set
    from the domain's config (libxl: target + 1 MiB). Xen's limit is their sum."""

    base_pages: int
    granted_pages: int

    def __post_init__(self) -> None:
        for name in ("base_pages", "granted_pages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a page count, not {value!r}")
        if self.max_pages > PAGES_MAX:
            raise ValueError(f"base_pages {self.base_pages} + granted_pages "
                             f"{self.granted_pages} exceeds Xen's {PAGES_MAX}")

    @property
    def max_pages(self) -> int:
        """The limit Xen must hold: ``base_pages + granted_pages``."""
        return self.base_pages + self.granted_pages

    def __str__(self) -> str:
        return f"{self.base_pages}+{self.granted_pages}"

    @classmethod
    def parse(cls, text: str) -> Grant:
        """The inverse of ``str``: ``BASE+GRANTED`` in canonical decimals."""
        match = _TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"not a grant (BASE+GRANTED pages): {text!r}")
        return cls(int(match[1]), int(match[2]))
