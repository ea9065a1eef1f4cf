#!/usr/bin/env python3
"""The xsproto story on real Xen, narrated. Runs inside the lab's dom0:

    tools/xenlab run -- .venv/bin/python tools/demo.py

A PVH guest's device model asks for extra pages instead of raising max_pages itself;
the toolstack watcher decides and raises the limit in Xen; a hostile ask changes
nothing; then the guest is saved and restored with stock xl (which fails, as in the
seed's bug report) and with xsproto's hooks (which carry the pages across).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.lab import devicemodel, fetch, guests
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor

XSPROTO = str(Path(sys.executable).with_name("xsproto"))
PAGES = 2048
NAME = "demo"


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ {shlex.join(argv)}", flush=True)
    done = subprocess.run(argv, text=True, capture_output=True)
    for line in (done.stdout + done.stderr).splitlines():
        if "progress:" not in line:
            print(f"  {line}")
    print(f"  (exit status {done.returncode})", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} failed")
    return done


def limit(hv: Hypervisor, name: str) -> str:
    domid = guests.domid_of(name)
    info = hv.domain(domid)
    return f"domain {name} (id {domid}): max_pages {info.max_pages}, tot_pages {info.tot_pages}"


def main() -> int:
    hv = Hypervisor()
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    say("A real PVH guest on Xen 4.17 (memory=128)")
    domid = guests.create(NAME, kind="pvh", memory_mb=128, files=files)
    print(f"  {limit(hv, NAME)}")

    say("The old way: QEMU populates option-ROM pages; Xen refuses (limit too low)")
    try:
        devicemodel.populate(domid, PAGES)
    except devicemodel.PopulateError as e:
        print(f"  refused as expected: {e}")

    say("The toolstack watcher starts (dom0 daemon)")
    log = Path("/var/log/xsproto-watcher.log")
    watcher = subprocess.Popen([XSPROTO, "watcher"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=os.environ)
    time.sleep(3)

    say(f"The device model asks for {PAGES} extra pages through xenstore")
    sh(XSPROTO, "request", "--domid", str(domid), "--pages", str(PAGES),
       "--reason", "option ROMs")
    print(f"  {limit(hv, NAME)}")
    devicemodel.populate(domid, PAGES)
    print(f"  the device model populated {PAGES} pages")
    print(f"  {limit(hv, NAME)}")

    say("A hostile ask (far beyond the policy cap) is rejected and changes nothing")
    sh(XSPROTO, "request", "--domid", str(domid), "--pages", "99999999", check=False)
    print(f"  {limit(hv, NAME)}")

    say("The protocol's state in xenstore")
    sh("xenstore-read", paths.request_node(0, domid))
    sh("xenstore-ls", "-p", f"{paths.DECISION_ROOT}/{domid}")  # the node, its permissions

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
    sh(XSPROTO, "inspect-image", str(image))
    sh(sys.executable, "/usr/lib/xen-4.17/bin/verify-stream-v2", "-f", "xl", "-i", str(image))

    say("xsproto restore: the new domain's limit is raised before the libxc stream starts")
    sh(XSPROTO, "restore", str(image))
    print(f"  {limit(hv, NAME)}")
    sh("xenstore-read", f"/libxl/{guests.domid_of(NAME)}/extra-pages")
    image.unlink()

    say("Live migration to localhost, three times: the limit does not grow")
    for _ in range(3):
        # As with xl: -s "" runs HOST itself as the receiving command (no ssh needed).
        sh(XSPROTO, "migrate", "-s", "", NAME, f"{XSPROTO} migrate-receive")
        print(f"  {limit(hv, NAME)}")

    say("The control, stock xl save + xl restore: the seed's bug (restored limit too low)")
    stock = images / "stock.save"
    sh("xl", "save", NAME, str(stock))
    failed = sh("xl", "restore", str(stock), check=False)
    print("  -> stock restore " + ("FAILED, as in the bug report" if failed.returncode
                                   else "succeeded (unexpected)"))


def run() -> int:
    """The demo; a failure the emulator caused (not xsproto) is named as such."""
    try:
        return main()
    except (SystemExit, Exception):
        if faulted := guests.triple_faulted():
            print(f"demo: the emulator triple-faulted domain(s) {sorted(faulted)} (QEMU's "
                  "software SVM, see DEVELOPERS.md), not xsproto: run the demo again",
                  file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(run())
