"""The image hooks' subcommands: save, restore, migrate (with its two transport ends) and
inspect-image. Each lives in its own module; this one only wires them into the CLI."""

from __future__ import annotations

import argparse

from agents import inspect, migrate, restore, save


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module in (save, restore, migrate, inspect):
        module.register(sub)
