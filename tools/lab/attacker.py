"""A guest that attacks the negotiation from inside: xenstored sees its own domid write.

Its image is the lab's guest image with a second archive appended (the kernel unpacks
both; the second's /init wins): the host's own xenstore client with the libraries ``ldd``
names, and an init script that waits for dom0's go, then makes each attack as one raw
request on /dev/xen/xenbus (so the answer is xenstored's own, ``EACCES`` and the like:
the client prints no error's name), and floods its own device-model area with the client
until dom0 says stop. Every result goes to its console as an ``xsattack:`` line;
``read_log`` reads them back from the console log xenconsoled keeps in dom0.

``libraries_in``, ``manifest`` and ``read_log`` are pure; ``build`` runs
``ldd`` and writes the image; ``console_log`` reads a console in dom0.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import initramfs

CLIENT = Path("/usr/bin/xenstore")
"""Debian's xenstore-utils: one binary that acts as ``xenstore-<command>`` by its name.
From a guest it talks to xenstored through /dev/xen/xenbus (the socket is absent). The
flood uses it: one process writes 50 keys in a transaction."""
COMMANDS = ("read", "write", "exists", "ls")
CONTROL = "xsattack"
"""dom0 writes ``other`` (a victim domain's id: the go) and later ``stop`` here, relative
to the guest's home, where the guest may read but not write."""
LOG_PREFIX = "xsattack: "
REQUESTS = ("write", "remove", "perms", "list")
"""The raw requests whose answers the script prints (``REQUEST PATH ANSWER``)."""
CONSOLE_DIR = Path("/var/log/xen/console")
"""Where xenconsoled (``--log=guest``) keeps each guest's console in dom0."""

ATTACK_INIT = r"""#!/bin/sh
# A xenlab attacker guest. From inside the guest (xenstored sees this domain as the
# writer) it writes the negotiation's nodes where it must not, then floods its own
# device-model area and rewrites its requests; each result is a "xsattack: " line on the
# console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev  # /dev/xen/xenbus: the guest's only way to xenstored
say() { echo "xsattack: $*"; }
stay() { while true; do sleep 3600; done; }
exec 3<>/dev/xen/xenbus || { say "no xenbus device"; stay; }
""" + initramfs.XENBUS_SH + r"""read_node() { ask 2 $((${#1} + 1)) '%s\0' "$1"; }
write() { ask 11 $((${#1} + 1 + ${#2})) '%s\0%s' "$1" "$2"; say "write $1 $ANSWER"; }
remove() { ask 13 $((${#1} + 1)) '%s\0' "$1"; say "remove $1 $ANSWER"; }
chown0() { ask 14 $((${#1} + 4)) '%s\0n0\0' "$1"; say "perms $1 $ANSWER"; }
list() { ask 1 $((${#1} + 1)) '%s\0' "$1"; say "list $1 $ANSWER"; }
until read_node xsattack/other; [ "${ANSWER#OK }" != "$ANSWER" ]; do sleep 1; done
other=${ANSWER#OK }
read_node domid; self=${ANSWER#OK }
say "self=$self other=$other"
nl='
'
request() {  # request NODE ID: a request of 8000 pages, its lines in one write
  write "$1" "version=2${nl}pages=8000${nl}reason=attack${nl}request-id=$2${nl}"
}
decision() {  # decision NODE: a granted record of 8000 pages
  write "$1" "version=2${nl}state=granted${nl}origin=request${nl}request-id=999${nl}\
base-pages=1${nl}granted-pages=8000${nl}max-pages=8001${nl}reason=${nl}"
}
area=/local/domain/$self/device-model
dom0=/local/domain/0/device-model
request $area/$self/extra-pages 1  # its own device model, asking for itself
request $area/$other/extra-pages 1  # its own area, for another domain...
chown0 $area/$other/extra-pages  # ...posing as dom0, the other's device model
request $dom0/$self/extra-pages 1  # dom0's area, for itself
request $dom0/$other/extra-pages 999  # dom0's area: the other's own request
remove $dom0/$other/extra-pages
decision /libxl/$self/extra-pages
decision /libxl/$other/extra-pages
remove /libxl/$other/extra-pages
write /local/domain/$other/image/device-model-domid "$self"  # "I serve the other"
start=$(date +%s)
deadline=$((start + 600))  # dom0 says stop long before
say "flood start"
junk() {  # junk DIR: 500 new keys in 10 transactions of 50 (the host's client), names
  # long enough that a listing of DIR outgrows one xenstore message (4096 bytes)
  dir=$1 ok=0 refused=0 b=0
  while [ $b -lt 10 ]; do
    set --; i=0
    while [ $i -lt 50 ]; do set -- "$@" "$dir/junk-$b-$i-0123456789" x; i=$((i + 1)); done
    if xenstore-write "$@" 2>/dev/null; then ok=$((ok + 50)); else refused=$((refused + 50)); fi
    b=$((b + 1))
  done
  say "junk $dir ok=$ok refused=$refused seconds=$(($(date +%s) - start))"
}
fill() {  # fill DIR: one key at a time until xenstored refuses one; that answer, raw
  n=0
  while xenstore-write "$1/fill-$n" x 2>/dev/null; do n=$((n + 1)); done
  write "$1/fill-$n" x
  say "filled $1 keys=$n"
}
( junk $area/$self; list $area/$self; junk $area; list $area; fill $area ) &
rewrite() {  # rewrite NODE: a new request in one write; true if taken
  xenstore-write "$1" "version=2${nl}pages=$((rounds % 9000))${nl}reason=attack${nl}\
request-id=$((rounds + 2))${nl}" 2>/dev/null
}
rounds=0 own=0 theirs=0 stop=
until [ -n "$stop" ]; do
  rewrite $area/$self/extra-pages && own=$((own + 1))
  rewrite $area/$other/extra-pages && theirs=$((theirs + 1))
  rounds=$((rounds + 1))
  if [ $((rounds % 8)) = 0 ]; then
    xenstore-exists xsattack/stop && stop=asked
    [ "$(date +%s)" -ge $deadline ] && stop=deadline
  fi
done
wait
seconds=$(($(date +%s) - start))
say "rewrites rounds=$rounds own=$own other=$theirs seconds=$seconds stop=$stop"
say "done"
stay
"""


def libraries_in(ldd_output: str) -> list[Path]:
    """The files ``ldd`` says a binary loads (the dynamic loader included), as named
    there: the paths the loader looks for, which may be symlinks on the host."""
    found = []
    for line in ldd_output.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)", line)
        if match:
            found.append(Path(match.group(1)))
    return found


def _directories(paths: Sequence[PurePosixPath]) -> list[str]:
    """Every directory above ``paths``, parents first, each once (the kernel's unpacker
    makes no missing parent)."""
    dirs: dict[str, None] = {}
    for path in paths:
        for parent in reversed(path.parents[:-1]):
            dirs[str(parent)] = None
    return list(dirs)


def manifest(client: Path, libraries: Sequence[Path]) -> list[initramfs.Entry]:
    """What the attacker adds to the guest image: the client under each command's name,
    its libraries where the loader looks for them, and the attack script as /init."""
    libs = [PurePosixPath(str(lib).lstrip("/")) for lib in libraries]
    entries = [initramfs.directory(d) for d in ("tmp", *_directories(libs))]
    entries.append(initramfs.file("bin/xenstore", source=client, mode=0o755))
    entries += [initramfs.symlink(f"bin/xenstore-{c}", "xenstore") for c in COMMANDS]
    entries += [initramfs.file(str(lib), source=src, mode=0o755)
                for lib, src in zip(libs, libraries, strict=True)]
    entries.append(initramfs.file("init", data=ATTACK_INIT.encode(), mode=0o755))
    return entries


def build(guest_initrd: Path, dest: Path, client: Path = CLIENT) -> Path:
    """Write the attacker's image at ``dest``: ``guest_initrd``'s archive and the
    attacker's after it. Built when a test needs it, from the host's client as it is
    then."""
    ldd = subprocess.run(["ldd", str(client)], check=True, capture_output=True, text=True)
    extra = initramfs.newc_bytes(manifest(client, libraries_in(ldd.stdout)))
    # One gzip stream of both archives: libxc inflates a PV guest's ramdisk and cannot
    # with two gzip members ("xc_dom_do_gunzip: inflate failed"); the kernel reads the
    # archives one after the other either way.
    both = gzip.decompress(guest_initrd.read_bytes()) + extra
    dest.write_bytes(gzip.compress(both, compresslevel=1, mtime=0))
    return dest


@dataclass
class AttackLog:
    """What the attack script said on the console."""

    answers: dict[tuple[str, str], str] = field(default_factory=dict)
    """(request, path) -> xenstored's answer: ``OK`` or ``ERR <name>``. The requests are
    ``write``, ``remove``, ``perms`` (making dom0, ``n0``, the node's owner) and ``list``
    (a directory's children: only whether xenstored answered)."""
    counts: dict[str, dict[str, str]] = field(default_factory=dict)
    """``junk DIR``, ``filled DIR`` and ``rewrites`` -> their ``key=value`` fields."""
    said: list[str] = field(default_factory=list)
    """Every line, in order, without the prefix."""

    def saw(self, line: str) -> bool:
        return line in self.said

    def began(self, start: str) -> bool:
        """Whether a line began with ``start``."""
        return any(said.startswith(start) for said in self.said)


def console(name: str) -> str:
    """Guest ``name``'s console so far, as xenconsoled logged it ("" before any line; run
    in dom0)."""
    try:
        return (CONSOLE_DIR / f"guest-{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def console_log(name: str) -> AttackLog:
    """What guest ``name``'s attack said so far (run in dom0)."""
    return read_log(console(name))


def read_log(console: str) -> AttackLog:
    """The attack's lines in a console log (kernel lines and carriage returns around
    them are ignored)."""
    log = AttackLog()
    for raw in console.splitlines():
        line = raw.strip("\r ")
        if not line.startswith(LOG_PREFIX):
            continue
        said = line[len(LOG_PREFIX):]
        log.said.append(said)
        words = said.split()
        if not words:
            continue
        if words[0] in REQUESTS and len(words) >= 3:
            log.answers[words[0], words[1]] = " ".join(words[2:])
        elif words[0] in ("junk", "filled", "rewrites"):
            name = " ".join(w for w in words[:2] if "=" not in w)
            log.counts[name] = dict(w.split("=", 1) for w in words if "=" in w)
    return log

