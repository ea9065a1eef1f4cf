"""Boot the lab in QEMU (software emulation), run one command in dom0, power off.

``qemu_argv`` and ``command_script`` are pure, so the machine's shape is unit-tested;
``boot_and_run`` owns the QEMU process and guarantees it never outlives the caller.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .fetch import LabFiles

STAGE2 = Path(__file__).resolve().parent / "dom0-stage2"
XENSTOREDS = ("c", "ocaml", "ocaml-eagain")
"""``ocaml-eagain``: oxenstored with ``test-eagain = true`` (random transaction EAGAIN)."""
#: Variables of the caller's environment that make no sense inside dom0.
ENV_DENYLIST = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "TMPDIR", "DISPLAY", "TERM_PROGRAM",
                          "SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY",
                          "XENLAB_IN_DOM0",
                          # dom0 writes to a tmpfs overlay: let Python cache bytecode there,
                          # or every process compiles every module on the emulated CPU
                          "PYTHONDONTWRITEBYTECODE"})
#: Where dom0 mounts a file system of its own (dom0-stage2), hiding the host's files there.
HIDDEN_IN_DOM0 = ("/dev", "/proc", "/sys", "/run", "/tmp", "/var/lib", "/var/log", "/var/tmp")
CONSOLE_TAIL_LINES = 60
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class BootConfig:
    """The shape of one lab machine."""

    files: LabFiles
    run_dir: Path
    memory_mb: int = 3072
    dom0_memory_mb: int = 1024
    cpus: int = 2
    xenstored: str = "c"

    def __post_init__(self) -> None:
        if self.xenstored not in XENSTOREDS:
            raise ValueError(f"--xenstored must be one of {', '.join(XENSTOREDS)}, "
                             f"not {self.xenstored!r}")
        if self.dom0_memory_mb + 256 > self.memory_mb:
            need = self.dom0_memory_mb + 256
            raise ValueError(f"--memory {self.memory_mb} leaves no room beside dom0's "
                             f"{self.dom0_memory_mb} MB (need at least {need})")


def qemu_argv(cfg: BootConfig) -> list[str]:
    """QEMU's command line: Xen as the multiboot kernel, dom0 kernel and initrd as modules."""
    xen_cmdline = (f"dom0_mem={cfg.dom0_memory_mb}M,max:{cfg.dom0_memory_mb}M "
                   "console=com1 com1=115200 loglvl=warning guest_loglvl=warning")
    dom0_cmdline = f"console=hvc0 loglevel=4 xenlab.stage2={STAGE2}"
    modules = f"{cfg.files.kernel} {dom0_cmdline},{cfg.files.dom0_initrd}"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+svm,+npt",
        "-m", str(cfg.memory_mb), "-smp", str(cfg.cpus),
        "-display", "none", "-vga", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{cfg.run_dir / 'console.log'}",
        "-kernel", str(cfg.files.xen), "-append", xen_cmdline, "-initrd", modules,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={cfg.run_dir},mount_tag=xenlab,security_model=none",
        "-nic", "none",
    ]


def command_script(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    """The shell script dom0 runs: the caller's environment, directory and command."""
    lines = ["#!/bin/bash", "export XENLAB_IN_DOM0=1"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())
              if k not in ENV_DENYLIST and k.isidentifier()]
    lines += [f"cd {shlex.quote(cwd)} || exit 125", f"exec {shlex.join(argv)}"]
    return "\n".join(lines) + "\n"


def hidden_in_dom0(path: Path) -> str | None:
    """The mount of dom0's own that hides ``path`` from it (None: dom0 sees the host's)."""
    resolved = path.resolve()
    for mount in HIDDEN_IN_DOM0:
        if resolved.is_relative_to(mount):
            return mount
    return None


def _die_with_parent() -> None:
    """In QEMU's child: get SIGKILL when xenlab dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgid(0, 0)


def _tail(path: Path, n: int) -> str:
    try:
        return "".join(deque(path.read_text(errors="replace").splitlines(keepends=True), n))
    except OSError:
        return "(no console output)\n"


class _Follower:
    """Copies what dom0 appends to a shared file to our stdout, as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()


def boot_and_run(cfg: BootConfig, argv: Sequence[str], *, timeout: float,
                 cwd: str | None = None, env: Mapping[str, str] | None = None,
                 quiet: bool = False) -> int:
    """Boot, run ``argv`` in dom0, stream its output; return its exit status.

    Returns 124 on timeout and 125 when the lab itself failed, with the console's tail
    on stderr. QEMU is killed on every way out, Ctrl-C included.
    """
    run = cfg.run_dir
    (run / "xenstored").write_text(cfg.xenstored)
    (run / "cmd.sh").write_text(command_script(argv, cwd or os.getcwd(),
                                               os.environ if env is None else env))
    console, ready, status = run / "console.log", run / "ready", run / "status"
    started = time.monotonic()
    proc = subprocess.Popen(qemu_argv(cfg), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    follower = _Follower(run / "output")
    booted: float | None = None

    def say(msg: str) -> None:
        if not quiet:
            print(f"xenlab: {msg}", file=sys.stderr, flush=True)

    def lab_failure(why: str, code: int) -> int:
        print(f"xenlab: {why}; last {CONSOLE_TAIL_LINES} console lines:\n"
              f"{_tail(console, CONSOLE_TAIL_LINES)}", file=sys.stderr, flush=True)
        return code

    try:
        while True:
            follower.pump()
            if booted is None and ready.exists():
                booted = time.monotonic() - started
                say(f"dom0 ready in {booted:.1f} s (xenstored: {cfg.xenstored})")
            if proc.poll() is not None:
                follower.pump()
                if status.exists():
                    code = int(status.read_text().strip() or 125)
                    say(f"lab powered off after {time.monotonic() - started:.1f} s, "
                        f"status {code}")
                    return code
                qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                return lab_failure(f"QEMU exited ({proc.returncode}) before the command "
                                   f"finished {qemu_out.strip()}", 125)
            if time.monotonic() - started > timeout:
                return lab_failure(f"timed out after {timeout:.0f} s "
                                   f"({'during the command' if booted else 'booting'})", 124)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def make_run_dir() -> Path:
    """A private folder per lab: console, command, output and status live there."""
    return Path(tempfile.mkdtemp(prefix="xenlab-"))
