"""Initramfs images as manifests (pure data) and a newc cpio writer.

A manifest is a list of entries, so what goes into each image can be unit-tested
without building it; ``write_newc`` turns it into the gzip'd cpio the kernel unpacks.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX_APPLETS = (
    "sh", "mount", "umount", "insmod", "mkdir", "switch_root", "cat", "sleep", "echo",
    "poweroff", "reboot", "ls",
)


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink in the image; ``data`` or ``source`` for files."""

    path: str
    mode: int
    data: bytes = b""
    source: Path | None = None
    target: str = ""

    def payload(self) -> bytes:
        if stat.S_ISLNK(self.mode):
            return self.target.encode()
        if self.source is not None:
            return self.source.read_bytes()
        return self.data


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, *, data: bytes = b"", source: Path | None = None, mode: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | mode, data=data, source=source)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target=target)


def busybox_entries(busybox: Path, applets: Sequence[str] = BUSYBOX_APPLETS) -> list[Entry]:
    """A static busybox and the applet links an init script needs."""
    entries = [directory("bin"), file("bin/busybox", source=busybox, mode=0o755)]
    entries += [symlink(f"bin/{name}", "busybox") for name in applets]
    return entries


DOM0_INIT = """#!/bin/sh
# Stage 1 of the xenlab dom0: load the modules, mount the host's root read-only over 9p,
# put a tmpfs overlay on it and hand over to stage 2, which lives in the host checkout.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
  /bin/busybox insmod /modules/$m || echo "xenlab: insmod $m failed"
done
stage2=$(for a in $(cat /proc/cmdline); do case $a in xenlab.stage2=*) echo ${a#*=};; esac; done)
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \\
  || { echo "xenlab: cannot mount the host root over 9p"; reboot -f; }
mount -t tmpfs -o size=75% tmpfs /upper && mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \\
  || { echo "xenlab: cannot mount the overlay root"; reboot -f; }
umount /proc; umount /dev
exec switch_root /newroot "$stage2"
"""

GUEST_INIT = """#!/bin/sh
# A xenlab test guest: nothing to do but stay alive.
/bin/busybox mount -t proc proc /proc
echo "xenlab guest up"
while true; do sleep 3600; done
"""


XENBUS_SH = r"""le32() {  # le32 N: N's four bytes, little-endian, appended to $H as printf escapes
  for s in 0 8 16 24; do
    b=$(($1 >> s & 255)); H="$H\\$((b >> 6))$((b >> 3 & 7))$((b & 7))"
  done
}
ask() {  # ask TYPE LENGTH FORMAT ARGS...: one raw request (xs_wire.h) on the xenbus
  # device; ANSWER is "OK [value]", or "ERR <name>" as xenstored answered (XS_ERROR, 16)
  H=; le32 "$1"; le32 1; le32 0; le32 "$2"; type=$1 fmt=$3; shift 3
  printf "$H$fmt" "$@" >&3
  dd bs=65536 count=1 <&3 2>/dev/null > /answer
  got=$(od -An -tu4 -N4 /answer | tr -d ' ')
  value=$(dd if=/answer bs=16 skip=1 2>/dev/null | tr -d '\0')
  if [ "$got" = 16 ]; then ANSWER="ERR $value"
  elif [ "$type" = 2 ]; then ANSWER="OK $value"
  else ANSWER=OK; fi
}
"""
"""A guest's raw xenstore client in shell (busybox's printf, dd, od, tr): ``ask`` sends one
request of xs_wire.h on file descriptor 3, the xenbus device opened by the caller, and
sets ANSWER to xenstored's answer, its error's name included (libxenstore's client prints
none). The lab's probe and attacker guests speak through it."""


def dom0_manifest(busybox: Path, modules: Sequence[Path]) -> list[Entry]:
    """Stage-1 initramfs for dom0: busybox, the modules in load order, /init."""
    entries = [directory(d) for d in ("proc", "dev", "sys", "modules")]
    entries += busybox_entries(busybox)
    entries += [file(f"modules/{m.name}", source=m) for m in modules]
    entries.append(file("modules.order", data="\n".join(m.name for m in modules).encode()))
    entries.append(file("init", data=DOM0_INIT.encode(), mode=0o755))
    return entries


def guest_manifest(busybox: Path) -> list[Entry]:
    """Initramfs of a test guest: busybox and an init that sleeps."""
    entries = [directory(d) for d in ("proc", "dev")]
    entries += busybox_entries(busybox)
    entries.append(file("init", data=GUEST_INIT.encode(), mode=0o755))
    return entries


def _newc_header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_bytes(entries: Iterable[Entry]) -> bytes:
    """The uncompressed newc archive of ``entries``, with its TRAILER!!!."""
    out = io.BytesIO()
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = entry.path.encode()
        payload = entry.payload()
        header = _newc_header(ino if entry.path != "TRAILER!!!" else 0, entry.mode,
                              len(payload), name)
        out.write(header + name + b"\0")
        out.write(_pad4(len(header) + len(name) + 1))
        out.write(payload + _pad4(len(payload)))
    return out.getvalue()


def write_newc(entries: Iterable[Entry], path: Path) -> None:
    """Write the gzip'd archive atomically (a concurrent reader never sees half of it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(gzip.compress(newc_bytes(entries), compresslevel=1, mtime=0))
    tmp.replace(path)
