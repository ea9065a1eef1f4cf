"""Placeholder until the image hooks land."""

from typing import Any


def register(sub: Any) -> None:
    del sub
