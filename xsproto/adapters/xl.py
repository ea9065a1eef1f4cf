"""The xl adapter: the only place xsproto starts processes (stock ``xl``, and the shell
command of a migration's receiving end), and turns their failures into error types.

Processes keep SIGPIPE ignored (``restore_signals=False``): if a filter fails, xl sees
EPIPE and reports the failure (and resumes the domain) instead of dying mid-save.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

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
