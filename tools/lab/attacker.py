"""A guest that attacks the negotiation from inside: xenstored sees its own domid write.

Its image is the lab's guest image with a second archive appended (the kernel unpacks
both; the second's /init wins): the host's own xenstore client with the libraries ``ldd``
names, and an init script that waits for dom0's go, writes the protocol's nodes where
it must not, then floods its own device-model area until dom0 says stop. Every result
goes to its console as an ``xsattack:`` line; ``read_log`` reads them back from the
console log xenconsoled keeps in dom0.

``libraries_in``, ``manifest``, ``read_log`` and ``may_write`` are pure; ``build`` runs
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
From a guest it talks to xenstored through /dev/xen/xenbus (the socket is absent)."""
COMMANDS = ("read", "write", "exists", "ls")
CONTROL = "xsattack"
"""dom0 writes ``other`` (a victim domain's id: the go) and later ``stop`` here, relative
to the guest's home, where the guest may read but not write."""
LOG_PREFIX = "xsattack: "
CONSOLE_DIR = Path("/var/log/xen/console")
"""Where xenconsoled (``--log=guest``) keeps each guest's console in dom0."""

ATTACK_INIT = r"""#!/bin/sh
# A xenlab attacker guest. From inside the guest (xenstored sees this domain as the
# writer) it writes the negotiation's nodes where it must not, then floods its own
# device-model area; each result is a "xsattack: " line on the console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev  # /dev/xen/xenbus: the xenstore client's way out
say() { echo "xsattack: $*"; }
stay() { while true; do sleep 3600; done; }
until other=$(xenstore-read xsattack/other 2>/dev/null); do sleep 1; done
self=$(xenstore-read domid) || { say "cannot read own domid"; stay; }
say "self=$self other=$other"
try() {  # try PATH VALUE: one write, one line saying whether xenstored took it
  if xenstore-write "$1" "$2" 2>/dev/null; then say "write $1 ok"; else say "write $1 refused"; fi
}
request() {  # request DIR ID: a request's four keys, request-id last as the protocol says
  try "$1/version" 1; try "$1/pages" 8000; try "$1/reason" attack; try "$1/request-id" "$2"
}
decision() {  # decision DIR: a granted record of 8000 pages
  for kv in "version 1" "state granted" "origin request" "request-id 999" \
            "base-pages 1" "granted-pages 8000" "max-pages 8001" "reason "; do
    try "$1/${kv% *}" "${kv#* }"
  done
}
area=/local/domain/$self/device-model
request $area/$self/extra-pages 1  # its own device model, asking for itself
request $area/$other/extra-pages 1  # its own area, for another domain
request /local/domain/0/device-model/$self/extra-pages 1  # dom0's area
request /local/domain/0/device-model/$other/extra-pages 999
decision /libxl/$self/extra-pages
decision /libxl/$other/extra-pages
start=$(date +%s)
deadline=$((start + 600))  # dom0 says stop long before
say "flood start"
junk() {  # junk DIR: 500 new keys in 10 transactions of 50, their names long enough
  # that a listing of DIR outgrows one xenstore message (4096 bytes)
  dir=$1 ok=0 refused=0 b=0
  while [ $b -lt 10 ]; do
    set --; i=0
    while [ $i -lt 50 ]; do set -- "$@" "$dir/junk-$b-$i-0123456789" x; i=$((i + 1)); done
    if xenstore-write "$@" 2>/dev/null; then ok=$((ok + 50)); else refused=$((refused + 50)); fi
    b=$((b + 1))
  done
  say "junk $dir ok=$ok refused=$refused seconds=$(($(date +%s) - start))"
}
( junk $area/$self/extra-pages; junk $area ) &
rewrite() {  # rewrite DIR: pages and request-id in one transaction; true if taken
  xenstore-write "$1/pages" $((rounds % 9000)) "$1/request-id" $((rounds + 2)) 2>/dev/null
}
rounds=0 own=0 theirs=0 dom0=0 stop=
until [ -n "$stop" ]; do
  rewrite $area/$self/extra-pages && own=$((own + 1))
  rewrite $area/$other/extra-pages && theirs=$((theirs + 1))
  rewrite /local/domain/0/device-model/$other/extra-pages && dom0=$((dom0 + 1))
  rounds=$((rounds + 1))
  if [ $((rounds % 8)) = 0 ]; then
    xenstore-exists xsattack/stop && stop=asked
    [ "$(date +%s)" -ge $deadline ] && stop=deadline
  fi
done
wait
seconds=$(($(date +%s) - start))
say "rewrites rounds=$rounds own=$own other=$theirs dom0=$dom0 seconds=$seconds stop=$stop"
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
    """Write the attacker's image at ``dest``: ``guest_initrd`` and the attacker's archive
    after it. Built when a test needs it, from the host's client as it is then."""
    ldd = subprocess.run(["ldd", str(client)], check=True, capture_output=True, text=True)
    extra = initramfs.newc_bytes(manifest(client, libraries_in(ldd.stdout)))
    dest.write_bytes(guest_initrd.read_bytes() + gzip.compress(extra, compresslevel=1, mtime=0))
    return dest


@dataclass
class AttackLog:
    """What the attack script said on the console."""

    writes: dict[str, bool] = field(default_factory=dict)
    """Path -> whether xenstored took the write."""
    counts: dict[str, dict[str, str]] = field(default_factory=dict)
    """``junk DIR`` and ``rewrites`` -> their ``key=value`` fields."""
    said: list[str] = field(default_factory=list)
    """Every line, in order, without the prefix."""

    def saw(self, line: str) -> bool:
        return line in self.said


def console_log(name: str) -> AttackLog:
    """What guest ``name`` said so far (run in dom0)."""
    try:
        return read_log((CONSOLE_DIR / f"guest-{name}.log").read_text(errors="replace"))
    except FileNotFoundError:
        return AttackLog()


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
        if words[0] == "write" and len(words) == 3:
            log.writes[words[1]] = words[2] == "ok"
        elif words[0] in ("junk", "rewrites"):
            name = " ".join(w for w in words[:2] if "=" not in w)
            log.counts[name] = dict(w.split("=", 1) for w in words if "=" in w)
    return log


def may_write(perms: Sequence[str], domid: int) -> bool:
    """Whether xenstore permissions (``n0``, ``r5``, ``b7``...; the first entry names the
    owner and what every domain not listed may do) let ``domid`` write the node."""
    owner, rest = perms[0], perms[1:]
    if int(owner[1:]) == domid:
        return True
    for perm in rest:
        if int(perm[1:]) == domid:
            return perm[0] in "wb"
    return owner[0] in "wb"
