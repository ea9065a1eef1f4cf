"""Test guests inside dom0: small real PV/PVH guests booted by ``xl``, paused HVM guests
with a real QEMU, and empty domains.

``guest_config`` and ``hvm_config`` are pure. The rest runs ``xl`` and must be called
inside the lab's dom0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fetch import LabFiles

GUEST_TYPES = ("pv", "pvh")
CONFIG_DIR = Path("/var/lib/xenlab")
XEN_PYTHON = "/usr/lib/xen-4.17/lib/python"
NIC_ROM = "/usr/lib/ipxe/qemu/efi-e1000.rom"
"""From Debian's ipxe-qemu (tools/bootstrap installs it)."""
MAX_NICS = 16


def _check(name: str, memory_mb: int) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"guest name must be letters, digits, '-', '_' or '.', not {name!r}")
    if memory_mb < 32:
        raise ValueError(f"guest memory must be at least 32 MB, not {memory_mb}")


def guest_config(name: str, *, kind: str, memory_mb: int, files: LabFiles) -> str:
    """An xl config for a busybox guest that boots and sleeps."""
    if kind not in GUEST_TYPES:
        raise ValueError(f"guest type must be one of {', '.join(GUEST_TYPES)}, not {kind!r}")
    _check(name, memory_mb)
    return "\n".join([
        f'name = "{name}"',
        f'type = "{kind}"',
        f'kernel = "{files.guest_kernel}"',
        f'ramdisk = "{files.guest_initrd}"',
        'extra = "console=hvc0 quiet"',
        f"memory = {memory_mb}",
        "vcpus = 1",
        'on_crash = "destroy"',
        # A test guest never reboots by itself: a reboot is the emulator's triple fault.
        # Restarting it would race the test's clean-up and bring back a stale namesake.
        'on_reboot = "destroy"',
        "",
    ])


def hvm_config(name: str, *, nics: int, memory_mb: int = 128,
               device_model: str | None = None, after_fault: str = "destroy") -> str:
    """An xl config for an HVM guest whose real QEMU (Debian's 7.2) carries ``nics``
    extra e1000 NICs, each with its iPXE option ROM: 256 KiB of RAM that QEMU populates
    in the guest, beyond its memory. Create it paused (``create_paused_hvm``): QEMU sets
    up its devices and no vCPU ever runs (the emulator's nested SVM cannot fault).
    ``device_model`` replaces xl's QEMU (``device_model_override``). ``after_fault``
    ("preserve") keeps a guest that will run later, once unpaused, with its id and limit
    if the emulator triple-faults it (xl would else destroy or reboot it)."""
    _check(name, memory_mb)
    if after_fault not in ("destroy", "preserve"):
        raise ValueError(f"after a fault: destroy or preserve, not {after_fault!r}")
    if not 0 <= nics <= MAX_NICS:
        raise ValueError(f"NICs must be 0..{MAX_NICS}, not {nics}")
    devices = [arg for _ in range(nics) for arg in ("-device", f"e1000,romfile={NIC_ROM}")]
    lines = [
        f'name = "{name}"',
        'type = "hvm"',
        f"memory = {memory_mb}",
        'vga = "stdvga"',
        "vnc = 0",
        'serial = "pty"',
        f'on_crash = "{after_fault}"',
        f'on_reboot = "{after_fault}"',
        f"device_model_args_hvm = {json.dumps(devices)}",
    ]
    if device_model is not None:  # with the version it speaks, or xl warns
        lines += ['device_model_version = "qemu-xen"',
                  f"device_model_override = {json.dumps(device_model)}"]
    return "\n".join([*lines, ""])


def _write_config(name: str, text: str) -> Path:
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    path = CONFIG_DIR / f"{name}.cfg"
    path.write_text(text)
    return path


def create(name: str, *, kind: str, memory_mb: int, files: LabFiles) -> int:
    """Create the guest; return its domain id."""
    path = _write_config(name, guest_config(name, kind=kind, memory_mb=memory_mb, files=files))
    subprocess.run(["xl", "create", "-q", str(path)], check=True)
    return domid_of(name)


def create_paused_hvm(name: str, *, nics: int, memory_mb: int = 128,
                      device_model: str | None = None,
                      after_fault: str = "destroy") -> subprocess.CompletedProcess[str]:
    """``xl create -p`` of ``hvm_config``; the result says whether QEMU started."""
    path = _write_config(name, hvm_config(name, nics=nics, memory_mb=memory_mb,
                                          device_model=device_model, after_fault=after_fault))
    return subprocess.run(["xl", "create", "-p", str(path)], capture_output=True, text=True)


def domid_of(name: str) -> int:
    out = subprocess.run(["xl", "domid", name], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def triple_faults_in(dmesg: str) -> set[int]:
    """Domain ids that Xen's console output reports a triple fault for."""
    return {int(d) for d in re.findall(r"\bd(\d+)v\d+ Triple fault", dmesg)}


def triple_faulted() -> set[int]:
    """Domains that triple-faulted, by Xen's console ring (``xl dmesg``).

    QEMU's software SVM (nested virtualisation under TCG) triple-faults a PVH guest now
    and then; xl then reboots it under a new domain id. PV guests do not use SVM.
    """
    return triple_faults_in(subprocess.run(["xl", "dmesg"], capture_output=True,
                                           text=True).stdout)


def _xc() -> Any:
    sys.path.append(XEN_PYTHON)
    from xen.lowlevel import xc

    return xc.xc()


def create_empty(count: int, memory_mb: int) -> list[int]:
    """Empty PV domains (no kernel, never run) with a name in xenstore, for scale tests."""
    hv = _xc()
    domids = []
    for _ in range(count):
        domid = hv.domain_create()
        hv.domain_setmaxmem(domid, memory_mb * 1024)
        name = f"xenlab-empty-{domid}"
        base = f"/local/domain/{domid}"
        subprocess.run(["xenstore-write", f"{base}/name", name, f"{base}/domid", str(domid)],
                       check=True)
        subprocess.run(["xenstore-chmod", base, "n0", f"r{domid}"], check=True)
        domids.append(domid)
    return domids


def destroy_empty(domids: Sequence[int]) -> None:
    """Destroy empty domains and their xenstore directories: no libxl state to undo, so
    no ``xl`` start-up per domain (hundreds of them take seconds, not minutes)."""
    hv = _xc()
    for domid in domids:
        hv.domain_destroy(domid)
    if domids:
        subprocess.run(["xenstore-rm", *(f"/local/domain/{d}" for d in domids)], check=True)


def destroy(domain: str) -> None:
    subprocess.run(["xl", "destroy", domain], check=True)


def main(args: argparse.Namespace, files: LabFiles) -> int:
    if not os.path.exists("/proc/xen/capabilities"):
        print("xenlab: guest commands run inside the lab's dom0 (xenlab run -- ...)",
              file=sys.stderr)
        return 2
    try:
        if args.guest_verb == "create":
            print(create(args.name, kind=args.type, memory_mb=args.memory, files=files))
        elif args.guest_verb == "empty":
            print("\n".join(map(str, create_empty(args.count, args.memory))))
        else:
            destroy(args.domain)
    except (ValueError, subprocess.CalledProcessError) as e:
        print(f"xenlab: {e}", file=sys.stderr)
        return 1
    return 0
