"""The xl adapter: the only place xsproto starts processes (stock ``xl``, and the shell
command of a migration's receiving end), and turns their failures into error types.

Processes keep SIGPIPE ignored (``restore_signals=False``): if a filter fails, xl sees
EPIPE and reports the failure (and resumes the domain) instead of dying mid-save.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from xsproto.errors import XsprotoError

XL = "xl"
INCOMING_SUFFIX = "--incoming"
"""``xl migrate-receive`` names the domain NAME--incoming until the sender says go."""

Process = subprocess.Popen[bytes]


class XlFailed(XsprotoError):
    """``xl`` exited with a failure status; its own message is already on stderr."""

    def __init__(self, verb: str, status: int) -> None:
        self.status = status
        super().__init__(f"xl {verb} failed with exit status {status} (see its messages above)")


def domid_of(domain: str) -> int:
    """A domain id from an id or a name, as xl resolves it."""
    if domain.isdigit():
        return int(domain)
    out = subprocess.run([XL, "domid", domain], capture_output=True, text=True)
    if out.returncode != 0:
        raise XsprotoError(f"no domain named {domain!r}: {out.stderr.strip()}")
    return int(out.stdout.strip())


def domain_config(domid: int) -> dict[str, Any]:
    """The libxl config of a running domain as xl itself would save it (``xl list -l``)."""
    out = subprocess.run([XL, "list", "-l", str(domid)], capture_output=True, text=True)
    if out.returncode != 0:
        raise XsprotoError(f"domain {domid}: xl list -l failed: {out.stderr.strip()}")
    try:
        [entry] = json.loads(out.stdout)
        config: dict[str, Any] = entry["config"]
    except (ValueError, TypeError, KeyError) as e:
        raise XsprotoError(f"domain {domid}: unexpected xl list -l output: {e}") from e
    return config


def start(verb: str, args: Sequence[str], *, feed: bool = False,
          pass_fds: Sequence[int] = ()) -> Process:
    """Start ``xl VERB ARGS``; with ``feed`` its stdin is a pipe we write (unbuffered)."""
    return subprocess.Popen([XL, verb, *args], stdin=subprocess.PIPE if feed else None,
                            bufsize=0, pass_fds=tuple(pass_fds), restore_signals=False)


def run(verb: str, args: Sequence[str]) -> None:
    """Run ``xl VERB ARGS`` to the end; XlFailed when it fails."""
    if status := start(verb, args).wait():
        raise XlFailed(verb, status)


def start_shell(command: str) -> Process:
    """Start a shell command (a migration's receiving end) fed through its stdin; its
    stdout is ours, so its replies reach xl untouched."""
    return subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, bufsize=0,
                            restore_signals=False)


def destroy(domid: int) -> None:
    """Destroy a domain through xl, so libxl also removes its xenstore state."""
    subprocess.run([XL, "destroy", str(domid)], capture_output=True)
