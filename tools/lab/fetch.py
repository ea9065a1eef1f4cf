"""Fetch what the lab boots from Debian's packages into a git-ignored cache, and build
its initramfs images.

The cache is shared by concurrent labs: building takes an exclusive lock, booting a
shared one, and a stamp records what was built so a changed recipe rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import initramfs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "xenlab"

#: Debian packages installed on the host: dom0 runs the host's own userland over 9p.
HOST_PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "xen-utils-4.17": "/usr/lib/xen-4.17/bin/xl",
    "xenstore-utils": "/usr/bin/xenstore-read",
    "kmod": "/usr/bin/kmod",  # depmod and modprobe resolve dom0's module order
    # /etc/init.d/xendomains sources it (tests of the host's reboot integration); Debian 12
    # has it (essential), but a probe costs nothing and a base system may change
    "sysvinit-utils": "/lib/lsb/init-functions",
}
#: Debian packages only unpacked into the cache: they are booted, not run on the host.
HYPERVISOR_PACKAGE = "xen-hypervisor-4.17-amd64"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: dom0 modules, in load order; their dependencies are resolved by modprobe.
DOM0_MODULES = (
    "9p", "9pnet_virtio", "virtio_pci", "overlay",
    "xen-privcmd", "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc",
)
RECIPE_VERSION = 2


@dataclass(frozen=True)
class LabFiles:
    """Paths of everything a boot needs, all inside the cache."""

    xen: Path
    kernel: Path
    dom0_initrd: Path
    guest_initrd: Path
    guest_kernel: Path
    """The same kernel as an ELF file (``kernel_elf``): what guests boot."""

    @classmethod
    def in_cache(cls, cache: Path) -> LabFiles:
        return cls(cache / "xen.elf", cache / "vmlinuz", cache / "dom0-initrd.gz",
                   cache / "guest-initrd.gz", cache / "vmlinux")

    def missing(self) -> list[Path]:
        return [p for p in (self.xen, self.kernel, self.dom0_initrd, self.guest_initrd,
                            self.guest_kernel) if not p.exists()]


def kernel_elf(bzimage: bytes) -> bytes:
    """The kernel ELF a bzImage carries (its xz or gzip payload, decompressed).

    Guests boot from it: from the bzImage, libxc in dom0 would decompress tens of MB at
    every ``xl create``, seconds under the lab's emulated CPU; here it is done once.
    """
    formats: list[tuple[bytes, Callable[[], Any]]] = [
        (b"\xfd7zXZ\x00", lzma.LZMADecompressor),
        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ]
    for magic, decompressor in formats:
        at = bzimage.find(magic)
        while at >= 0:
            try:
                elf: bytes = decompressor().decompress(bzimage[at:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            at = bzimage.find(magic, at + 1)
    raise ValueError("no xz or gzip compressed kernel ELF in the bzImage")


def _log(msg: str) -> None:
    print(f"xenlab: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=cwd,
                              env=env)
    except FileNotFoundError as e:
        raise SystemExit(f"xenlab: {argv[0]} not found; install the package that has it") from e
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"xenlab: {' '.join(argv)} failed ({e.returncode}):\n{e.stderr}") from e
    return str(done.stdout)


@contextmanager
def cache_lock(cache: Path, *, exclusive: bool) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def missing_host_packages() -> list[str]:
    return [pkg for pkg, probe in HOST_PACKAGES.items() if not Path(probe).exists()]


def ensure_apt_lists() -> None:
    """A fresh machine has no package lists: apt-cache would find nothing."""
    if not any(Path("/var/lib/apt/lists").glob("*_Packages*")):
        _log("apt-get update (no package lists yet)")
        _run(["apt-get", "update", "-q"])


def install_host_packages() -> None:
    missing = missing_host_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"xenlab: missing host packages {', '.join(missing)}: "
                         f"run as root or apt-get install {' '.join(missing)}")
    _log(f"installing host packages: {' '.join(missing)}")
    ensure_apt_lists()
    _run(["apt-get", "install", "-y", "-q", *missing],
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def kernel_package() -> str:
    """The versioned kernel package Debian's linux-image-amd64 depends on now."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith("linux-image-"):
            return dep
    raise SystemExit(f"xenlab: no kernel package found behind {KERNEL_META_PACKAGE}; "
                     "run apt-get update")


def candidate_version(package: str) -> str:
    out = _run(["apt-cache", "policy", package])
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise SystemExit(f"xenlab: Debian package {package} not found; run apt-get update")


def local_recipe() -> str:
    """What a build depends on in this checkout; a different value means stale."""
    text = json.dumps({"v": RECIPE_VERSION, "dom0_init": initramfs.DOM0_INIT,
                       "guest_init": initramfs.GUEST_INIT, "modules": DOM0_MODULES},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def module_paths(root: Path, kver: str, names: tuple[str, ...]) -> list[Path]:
    """The .ko files of ``names`` and their dependencies, each once, in load order."""
    _run(["depmod", "-b", str(root), kver])
    ordered: list[Path] = []
    for name in names:
        out = _run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", name])
        for line in out.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path not in ordered:
                    ordered.append(path)
    return ordered


def stamp_path(cache: Path) -> Path:
    return cache / "stamp"


def is_fresh(cache: Path) -> bool:
    """True when the cache holds a complete build; offline-safe (asks no registry)."""
    files = LabFiles.in_cache(cache)
    return not files.missing() and _stamp(cache).get("local") == local_recipe()


def _stamp(cache: Path) -> dict[str, object]:
    try:
        stamp: dict[str, object] = json.loads(stamp_path(cache).read_text())
    except (OSError, ValueError):
        return {}
    return stamp


def fetch(cache: Path = DEFAULT_CACHE, *, force: bool = False) -> LabFiles:
    """Install host packages, download and unpack the boot packages, build the images."""
    install_host_packages()
    ensure_apt_lists()
    with cache_lock(cache, exclusive=True):
        kpkg = kernel_package()
        packages = {p: candidate_version(p) for p in (HYPERVISOR_PACKAGE, kpkg, BUSYBOX_PACKAGE)}
        files = LabFiles.in_cache(cache)
        if not force and is_fresh(cache) and _stamp(cache).get("packages") == packages:
            return files
        debs, root = cache / "debs", cache / "root"
        shutil.rmtree(debs, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        debs.mkdir(parents=True)
        _log(f"downloading {', '.join(f'{p}={v}' for p, v in packages.items())}")
        _run(["apt-get", "download", *(f"{p}={v}" for p, v in packages.items())], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
        (kver,) = [d.name for d in (root / "lib" / "modules").iterdir()]
        xen_gz = root / "boot" / "xen-4.17-amd64.gz"
        _run(["sh", "-c", f"gzip -dc '{xen_gz}' > '{files.xen}.tmp'"])
        os.replace(f"{files.xen}.tmp", files.xen)
        shutil.copyfile(root / "boot" / f"vmlinuz-{kver}", files.kernel)
        files.guest_kernel.with_suffix(".tmp").write_bytes(
            kernel_elf(files.kernel.read_bytes()))
        os.replace(files.guest_kernel.with_suffix(".tmp"), files.guest_kernel)
        busybox = root / "bin" / "busybox"
        modules = module_paths(root, kver, DOM0_MODULES)
        initramfs.write_newc(initramfs.dom0_manifest(busybox, modules), files.dom0_initrd)
        initramfs.write_newc(initramfs.guest_manifest(busybox), files.guest_initrd)
        stamp_path(cache).write_text(json.dumps(
            {"local": local_recipe(), "packages": packages, "kernel": kver}, indent=2))
        shutil.rmtree(debs)
        shutil.rmtree(root)
        _log(f"lab ready in {cache} (kernel {kver})")
        return files
