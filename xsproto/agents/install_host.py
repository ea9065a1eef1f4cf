"""``xsproto install-host [--root DIR] [--uninstall] [--json]``: set a Xen host up for xsproto.

It installs the watcher's systemd unit (enabled), the default policy, the xendomains
integration (so a host reboot keeps every guest's grant), bash completion and the man
pages, each from the package's data; it is idempotent and says what it did to each file.
``--uninstall`` takes away exactly that: files whose names are xsproto's own, the marked
block in /etc/default/xendomains, and the policy only while it is the one installed (an
admin's edit is kept, and said so). Paths under DIR are written as on a host mounted
there, the way ``systemctl --root`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path, PurePosixPath

from xsproto.errors import InstallError
from xsproto.exitcodes import Exit

FORMAT = 1
"""Version of the ``--json`` object."""
PLACEHOLDER = "@XSPROTO@"
"""Where the data files name the installed ``xsproto`` command."""
SAFE_COMMAND = re.compile(r"^/[A-Za-z0-9._+/-]+$")
"""A path that systemd's ExecStart and bash both take verbatim, with no quoting."""
UNIT_NAME = "xsproto-watcher.service"
UNIT = PurePosixPath("/etc/systemd/system") / UNIT_NAME
POLICY = PurePosixPath("/etc/xen/xsproto.toml")
XENDOMAINS_DEFAULTS = PurePosixPath("/etc/default/xendomains")
BEGIN, END = b"# BEGIN xsproto\n", b"# END xsproto\n"
FILE_MODE = 0o644
#: What systemd needs to hear after the unit was installed (False) or removed (True).
NEXT_STEP = {False: f"systemctl daemon-reload && systemctl restart {UNIT_NAME}",
             True: f"systemctl stop {UNIT_NAME} && systemctl daemon-reload"}


class Action(Enum):
    """What happened to one file; the value is its name in ``--json``."""

    INSTALLED = "installed"
    UNCHANGED = "unchanged"
    KEPT = "kept"
    REMOVED = "removed"
    ABSENT = "absent"
    SKIPPED = "skipped"


#: How a line of text output names an action, when it says more than the JSON name.
LABELS = {Action.KEPT: "kept (admin's)", Action.ABSENT: "absent (nothing to remove)",
          Action.SKIPPED: "skipped (xendomains is not installed)"}


@dataclass(frozen=True)
class Change:
    path: Path
    action: Action

    def line(self) -> str:
        return f"{LABELS.get(self.action, self.action.value)} {self.path}"


def data(name: str) -> bytes:
    """A file shipped in the package's ``data`` folder."""
    return (resources.files("xsproto") / "data" / name).read_bytes()


def installed_command(argv0: str, executable: str,
                      which: Callable[[str], str | None] = shutil.which) -> Path:
    """The ``xsproto`` command the unit and xendomains will run: the one running now
    (a console script), else the one beside this Python (a virtualenv), else on PATH."""
    running = Path(argv0)
    candidates = [running.absolute()] if running.name == "xsproto" else []
    candidates.append(Path(executable).with_name("xsproto"))
    if found := which("xsproto"):
        candidates.append(Path(found).absolute())
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            if not SAFE_COMMAND.match(str(path)):
                raise InstallError("the xsproto command's path must be letters, digits and "
                                   "._+-/ only (systemd and bash take it unquoted)", path=path)
            return path
    raise InstallError("no executable xsproto command found (install the package first)",
                       path=candidates[0])


def rendered(name: str, command: Path) -> bytes:
    return data(name).replace(PLACEHOLDER.encode(), str(command).encode())


class Host:
    """The files of a host whose root is ``root``; every failure names its path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, where: PurePosixPath) -> Path:
        return self.root / where.relative_to("/")

    @staticmethod
    def read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InstallError(f"cannot read: {e.strerror}", path=path) from e

    @staticmethod
    def write(path: Path, content: bytes, mode: int = FILE_MODE) -> None:
        """Replace ``path`` atomically (a reader sees the old file or the new one)."""
        tmp = path.with_name(f".{path.name}.xsproto-tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(content)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise InstallError(f"cannot write: {e.strerror}", path=path) from e

    @staticmethod
    def remove(path: Path) -> None:
        try:
            path.unlink()
        except OSError as e:
            raise InstallError(f"cannot remove: {e.strerror}", path=path) from e


# Each item's install and uninstall get its path on the host and its content (None:
# absent).

@dataclass(frozen=True)
class OwnFile:
    """A file whose name is xsproto's: replaced when it differs, removed on uninstall."""

    where: PurePosixPath
    content: bytes

    def install(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current == self.content:
            return Action.UNCHANGED
        host.write(path, self.content)
        return Action.INSTALLED

    def uninstall(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current is None:
            return Action.ABSENT
        host.remove(path)
        return Action.REMOVED


@dataclass(frozen=True)
class AdminFile:
    """A file the admin owns once installed: written only where absent, removed only
    while it is still what was installed."""

    where: PurePosixPath
    content: bytes

    def install(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current is None:
            host.write(path, self.content)
            return Action.INSTALLED
        return Action.UNCHANGED if current == self.content else Action.KEPT

    def uninstall(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current is None:
            return Action.ABSENT
        if current != self.content:
            return Action.KEPT
        host.remove(path)
        return Action.REMOVED


def without_block(text: bytes, *, where: Path) -> bytes:
    """``text`` less every ``# BEGIN xsproto`` .. ``# END xsproto`` block."""
    kept: list[bytes] = []
    inside = False
    for line in text.splitlines(keepends=True):
        marker = line.rstrip(b"\n") + b"\n"
        if marker == BEGIN:
            if inside:
                raise InstallError("'# BEGIN xsproto' inside its own block", path=where)
            inside = True
        elif marker == END:
            if not inside:
                raise InstallError("'# END xsproto' without '# BEGIN xsproto'", path=where)
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise InstallError("'# BEGIN xsproto' without '# END xsproto'", path=where)
    return b"".join(kept)


@dataclass(frozen=True)
class Block:
    """A marked block at the end of a file another package owns; the file's other lines,
    owner and mode are left as they were."""

    where: PurePosixPath
    block: bytes

    def install(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current is None:
            return Action.SKIPPED
        rest = without_block(current, where=path)
        wanted = rest + (b"" if rest.endswith(b"\n") or not rest else b"\n") + self.block
        if wanted == current:
            return Action.UNCHANGED
        host.write(path, wanted, _mode(path))
        return Action.INSTALLED

    def uninstall(self, host: Host, path: Path, current: bytes | None) -> Action:
        if current is None:
            return Action.ABSENT
        rest = without_block(current, where=path)
        if rest == current:
            return Action.ABSENT
        host.write(path, rest, _mode(path))
        return Action.REMOVED


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError as e:
        raise InstallError(f"cannot stat: {e.strerror}", path=path) from e


@dataclass(frozen=True)
class Link:
    """A symbolic link to ``target`` (an absolute path on the host), as ``systemctl
    enable`` makes one."""

    where: PurePosixPath
    target: PurePosixPath

    def install(self, host: Host, path: Path, current: bytes | None) -> Action:
        if path.is_symlink() and os.readlink(path) == str(self.target):
            return Action.UNCHANGED
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(self.target)
        except OSError as e:
            raise InstallError(f"cannot link to {self.target}: {e.strerror}", path=path) from e
        return Action.INSTALLED

    def uninstall(self, host: Host, path: Path, current: bytes | None) -> Action:
        if not path.is_symlink():
            return Action.ABSENT
        host.remove(path)
        return Action.REMOVED


Item = OwnFile | AdminFile | Block | Link


def items(command: Path) -> list[Item]:
    """Everything install-host puts on a host, in the order it does it."""
    return [
        OwnFile(UNIT, rendered("xsproto-watcher.service", command)),
        Link(PurePosixPath("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME, UNIT),
        AdminFile(POLICY, data("xsproto.toml")),
        Block(XENDOMAINS_DEFAULTS, rendered("xendomains.sh", command)),
        OwnFile(PurePosixPath("/usr/local/share/bash-completion/completions/xsproto"),
                data("xsproto.bash")),
        OwnFile(PurePosixPath("/usr/local/share/man/man8/xsproto.8"), data("xsproto.8")),
        OwnFile(PurePosixPath("/usr/local/share/man/man5/xsproto-policy.5"),
                data("xsproto-policy.5")),
    ]


def apply(root: Path, command: Path, *, uninstall: bool) -> Iterator[Change]:
    """Install (or uninstall) every item under ``root``, yielding each change as it is
    made, so a failure part-way still reports what was done before it."""
    host = Host(root)
    for item in items(command):
        path = host.path(item.where)
        current = host.read(path)
        action = (item.uninstall if uninstall else item.install)(host, path, current)
        yield Change(path, action)


def run(root: Path, *, uninstall: bool, as_json: bool) -> int:
    """``xsproto install-host``: one line per file (or one JSON object); 1 on failure."""
    changes: list[Change] = []
    try:
        command = installed_command(sys.argv[0], sys.executable)
        for change in apply(root, command, uninstall=uninstall):
            changes.append(change)
            if not as_json:
                print(change.line(), flush=True)
    except InstallError as e:
        if not as_json:
            raise
        failure: dict[str, str] | None = {"path": e.path, "message": str(e)}
    else:
        failure = None
        unit = Host(root).path(UNIT)
        if not as_json and root == Path("/") and any(
                c.path == unit and c.action in (Action.INSTALLED, Action.REMOVED)
                for c in changes):
            print(f"xsproto: the unit changed: run '{NEXT_STEP[uninstall]}'", file=sys.stderr)
    if as_json:
        print(json.dumps({"format": FORMAT, "root": str(root), "uninstall": uninstall,
                          "changes": [{"path": str(c.path), "action": c.action.value}
                                      for c in changes],
                          "error": failure}, indent=2))
    return Exit.ERROR if failure else Exit.OK
