"""Driving stock ``xl``: argument lists, domain lookup, and cleaning up after a failure."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence

from xsproto.errors import XsprotoError
from xsproto.hypervisor import Hypervisor
from xsproto.xenstore import Xenstore

XL = "xl"
INCOMING_SUFFIX = "--incoming"
"""``xl migrate-receive`` names the domain NAME--incoming until the sender says go."""


class XlFailed(XsprotoError):
    """``xl`` exited with a failure status; its own message is already on stderr."""

    def __init__(self, verb: str, status: int) -> None:
        self.status = status
        super().__init__(f"xl {verb} failed with exit status {status} (see its messages above)")


class UsageError(XsprotoError):
    """Options that xsproto cannot pass on to xl."""


def split_options(extra: Sequence[str], *, verb: str,
                  positional: int = 0) -> tuple[list[str], list[str]]:
    """Split trailing xl options into (flags, positional arguments).

    xl parses its options before the domain argument, so flags must move in front of it;
    ``positional`` is how many non-flag arguments ``xl VERB`` accepts after its own.
    """
    flags = [a for a in extra if a.startswith("-")]
    rest = [a for a in extra if not a.startswith("-")]
    if len(rest) > positional:
        raise UsageError(f"xl {verb}: unexpected argument {rest[positional]!r} (xl options "
                         f"are passed through; at most {positional} extra argument(s))")
    return flags, rest


def domid_of(domain: str) -> int:
    """A domain id from an id or a name, as xl resolves it."""
    if domain.isdigit():
        return int(domain)
    out = subprocess.run([XL, "domid", domain], capture_output=True, text=True)
    if out.returncode != 0:
        raise XsprotoError(f"no domain named {domain!r}: {out.stderr.strip()}")
    return int(out.stdout.strip())


def domains_named(hv: Hypervisor, xs: Xenstore, names: Iterable[str], *,
                  exclude: Iterable[int] = ()) -> list[int]:
    """Domains (other than ``exclude``) whose xenstore name is one of ``names``."""
    wanted = {n.encode() for n in names}
    skip = set(exclude)
    return [d for d in hv.domids()
            if d not in skip and xs.read(f"/local/domain/{d}/name") in wanted]


def destroy(domid: int) -> None:
    """Destroy a domain through xl, so libxl also removes its xenstore state."""
    subprocess.run([XL, "destroy", str(domid)], capture_output=True)
