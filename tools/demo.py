#!/usr/bin/env python3
"""The xsproto story on real Xen, narrated. Runs inside the lab's dom0:

    tools/xenlab run -- .venv/bin/python tools/demo.py

The seed's bug with the real device model: Debian's QEMU 7.2, started by stock xl 4.17,
cannot give an HVM guest a fifth NIC's option ROM (libxl's 1 MiB of slack holds four).
Through ``xsproto-qemu`` the same QEMU asks the toolstack watcher for the pages instead;
the watcher decides by policy and raises the limit in Xen; a hostile ask changes nothing;
then xsproto save, restore and migration carry the pages, where stock xl's restore fails.
Guests are created paused (``xl create -p``): QEMU sets its devices up, no vCPU runs (the
lab's emulated SVM cannot fault them).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.lab import guests
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor

XSPROTO = str(Path(sys.executable).with_name("xsproto"))
WRAPPER = str(Path(sys.executable).with_name("xsproto-qemu"))
NAME = "demo"
MEMORY_MB = 128
FITS = 4
"""Extra e1000 NICs whose 256 KiB ROMs fit in libxl's slack; one more does not."""


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def sh(*argv: str, check: bool = True, env: dict[str, str] | None = None,
       most: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as an admin would (``env``: variables shown before it), print its
    output (``most`` lines of it at most, then its last line), return its result."""
    shown = [f"{k}={v}" for k, v in (env or {}).items()]
    print(f"$ {shlex.join([*shown, *argv])}", flush=True)
    done = subprocess.run(argv, text=True, capture_output=True, env={**os.environ, **(env or {})})
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if not re.search(r"\bprogress\b", line)]  # xl's and xsproto's: noise here
    if most is not None and len(lines) > most + 1:
        lines = [*lines[:most], f"... ({len(lines) - most - 1} lines more)", lines[-1]]
    for line in lines:
        print(f"  {line}")
    print(f"  (exit status {done.returncode})", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} failed")
    return done


def limit(hv: Hypervisor, name: str) -> str:
    domid = guests.domid_of(name)
    info = hv.domain(domid)
    return f"domain {name} (id {domid}): max_pages {info.max_pages}, tot_pages {info.tot_pages}"


def qemu_log(name: str, grep: tuple[str, ...]) -> None:
    """The lines of the guest's QEMU log (its stderr, kept by libxl) that tell the story."""
    path = Path(f"/var/log/xen/qemu-dm-{name}.log")
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    print(f"  {path}:")
    for line in lines:
        if any(word in line for word in grep):
            print(f"    {line}")


def create(nics: int, *, wrapped: bool) -> subprocess.CompletedProcess[str]:
    how = "through xsproto-qemu" if wrapped else "stock"
    print(f"$ xl create -p {NAME}.cfg   # HVM, memory={MEMORY_MB}, {nics} extra e1000 NICs, "
          f"QEMU {how}", flush=True)
    done = guests.create_paused_hvm(NAME, nics=nics, memory_mb=MEMORY_MB,
                                    device_model=WRAPPER if wrapped else None)
    print(f"  (exit status {done.returncode})", flush=True)
    return done


def main() -> int:
    hv = Hypervisor()
    say(f"Stock xl and QEMU 7.2: an HVM guest with {FITS} extra NICs starts, its limit full")
    if create(FITS, wrapped=False).returncode:
        raise SystemExit("demo: the control guest did not start")
    print(f"  {limit(hv, NAME)}")
    sh("xl", "destroy", NAME)

    say(f"With {FITS + 1} NICs, the seed's bug: QEMU cannot populate the fifth ROM")
    if not create(FITS + 1, wrapped=False).returncode:
        raise SystemExit("demo: the stock guest started (unexpected)")
    qemu_log(NAME, ("failed to populate",))

    say("The toolstack watcher starts (dom0 daemon)")
    log = Path("/var/log/xsproto-watcher.log")
    watcher = subprocess.Popen([XSPROTO, "watcher"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=os.environ)
    deadline = time.monotonic() + 120
    while "watching" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    sh(XSPROTO, "status")

    say("The same guest with xsproto-qemu: the same QEMU asks, and starts")
    if create(FITS + 1, wrapped=True).returncode:
        raise SystemExit("demo: the guest did not start through the wrapper")
    qemu_log(NAME, ("xsproto",))
    print(f"  {limit(hv, NAME)}")
    domid = guests.domid_of(NAME)
    sh("xenstore-read", paths.request_node(0, domid))  # each record is one node
    sh("xenstore-read", paths.decision_node(domid))
    sh(XSPROTO, "status", "--domid", str(domid))

    say("A hostile ask (far beyond the policy cap) is rejected and changes nothing")
    sh(XSPROTO, "request", "--domid", str(domid), "--pages", "99999999", check=False)
    print(f"  {limit(hv, NAME)}")

    images = Path("/var/lib/xsproto-demo")
    images.mkdir(exist_ok=True)
    save_restore(hv, images)

    watcher.kill()
    say("Watcher log: one structured line per decision")
    print(log.read_text())
    subprocess.run(["xl", "destroy", NAME], capture_output=True)
    return 0


def save_restore(hv: Hypervisor, images: Path) -> None:
    say("xsproto save: the negotiated pages travel in the xl header, ahead of the libxc stream")
    image = images / "demo.save"
    sh(XSPROTO, "save", NAME, str(image))
    sh(XSPROTO, "inspect-image", str(image), most=12)
    # Xen's own checker, with Xen's Python modules (Debian keeps them off the path).
    sh("/usr/bin/python3", "/usr/lib/xen-4.17/bin/verify-stream-v2", "-f", "xl", "-i",
       str(image), env={"PYTHONPATH": "/usr/lib/xen-4.17/lib/python"})

    say("xsproto restore: the new domain's limit is raised before the libxc stream starts")
    sh(XSPROTO, "restore", "-p", str(image))
    print(f"  {limit(hv, NAME)}")
    sh("xenstore-read", paths.decision_node(guests.domid_of(NAME)))
    image.unlink()

    say("Live migration to localhost, three times: the limit does not grow")
    for _ in range(3):
        # As with xl: -s "" runs HOST itself as the receiving command (no ssh needed).
        sh(XSPROTO, "migrate", "-s", "", "-p", NAME, f"{XSPROTO} migrate-receive -p")
        print(f"  {limit(hv, NAME)}")

    say("The control, stock xl save + xl restore: the seed's bug (restored limit too low)")
    stock = images / "stock.save"
    sh("xl", "save", NAME, str(stock))
    failed = sh("xl", "restore", "-p", str(stock), check=False)
    stock.unlink()
    print("  -> stock restore " + ("FAILED, as in the bug report" if failed.returncode
                                   else "succeeded (unexpected)"))


if __name__ == "__main__":
    sys.exit(main())
