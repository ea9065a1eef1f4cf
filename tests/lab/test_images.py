"""Save, restore and live migration carrying negotiated pages, on real Xen 4.17 with stock xl.

Each guest is given extra pages the way the watcher leaves them: a granted decision
record in xenstore, Xen's limit raised to base + granted, and (where the test needs
the seed's failure) the pages populated as QEMU does. The guests are PVH, as in the seed.
The seed's failure with stock xl and three migrations to localhost are shown with the
real QEMU in tests/lab/test_qemu.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.lab.conftest import GuestFactory, WatcherProcess
from tools.lab import devicemodel
from xsproto import paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.records import DecisionRecord, DecisionState, Origin
from xsproto.stream import find_record, read_header
from xsproto.stream.image_record import encode_record
from xsproto.values import PAGES_MAX

pytestmark = pytest.mark.lab

EXTRA = 2048
VERIFIER = "/usr/lib/xen-4.17/bin/verify-stream-v2"
XEN_PYTHONPATH = "/usr/lib/xen-4.17/lib/python"
RECEIVER = f"{sys.executable} -m xsproto migrate-receive"


@pytest.fixture(autouse=True)
def _free_tmpfs(tmp_path: Path) -> Iterator[None]:
    """Images are ~150 MB and dom0's /tmp is a small tmpfs: drop them after each test."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def xsproto(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xsproto", *args], capture_output=True,
                          text=True, timeout=300)


def xl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xl", *args], capture_output=True, text=True, check=check)


def grant(domid: int, pages: int = EXTRA, *, populate: bool = True) -> int:
    """Leave the state a granted negotiation leaves; return the new limit."""
    hv = Hypervisor()
    base = hv.domain(domid).max_pages
    record = DecisionRecord(state=DecisionState.GRANTED, request_id=1, base_pages=base,
                            granted_pages=pages, max_pages=base + pages)
    with Xenstore() as xs:
        xenstore_records.write_decision(xs, domid, 0, record)
    hv.set_max_pages(domid, base + pages)
    if populate:
        devicemodel.populate(domid, pages)
    return base + pages


def decision(domid: int) -> DecisionRecord | None:
    with Xenstore() as xs:
        return xenstore_records.read_decision(xs, domid)


def domid_named(name: str) -> int | None:
    out = xl("domid", name, check=False)
    return int(out.stdout) if out.returncode == 0 else None


def xl_log(name: str) -> str:
    """xl's own log of the domain (why it died, if it did)."""
    logs = sorted(Path("/var/log/xen").glob(f"xl-{name}.log*"))
    return "\n".join(f"{p}:\n{p.read_text(errors='replace')[-2000:]}" for p in logs)


def assert_running(name: str) -> int:
    domid = domid_named(name)
    assert domid is not None, f"no domain {name}\n{xl_log(name)}"
    time.sleep(1)
    state = xl("list", name).stdout.splitlines()[1].split()[4]
    assert "p" not in state and "c" not in state and "s" not in state, state
    return domid


def assert_grant_restored(domid: int, source_max: int) -> None:
    assert Hypervisor().domain(domid).max_pages == source_max
    record = decision(domid)
    assert record is not None
    assert record.origin is Origin.RESTORE and record.state is DecisionState.GRANTED
    assert (record.granted_pages, record.max_pages) == (EXTRA, source_max)


@pytest.mark.once
def test_save_and_restore_carry_the_grant(make_guest: GuestFactory, scratch: Path) -> None:
    name = "carry"
    domid = make_guest(name, kind="pvh")
    source_max = grant(domid)
    image = scratch / "guest.img"
    started = time.monotonic()
    saved = xsproto("save", name, str(image))
    save_seconds = time.monotonic() - started
    assert saved.returncode == 0, saved.stderr
    assert domid_named(name) is None
    assert [p.name for p in scratch.iterdir()] == ["guest.img"]
    with image.open("rb") as f:
        record = find_record(read_header(f)[0])
    assert record is not None
    assert {k: v for k, v in record.to_json().items() if k != "domain_uuid"} == {
        "version": 1, "domain_name": name, "source_domid": domid,
        "base_pages": source_max - EXTRA, "granted_pages": EXTRA, "max_pages": source_max}
    verified = subprocess.run(["/usr/bin/python3", VERIFIER, "-f", "xl", "-i", str(image)],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": XEN_PYTHONPATH})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    inspected = json.loads(xsproto("inspect-image", "--json", str(image)).stdout)
    assert inspected["record"]["granted_pages"] == EXTRA

    started = time.monotonic()
    restored = xsproto("restore", str(image))
    restore_seconds = time.monotonic() - started
    assert restored.returncode == 0, restored.stderr
    new = assert_running(name)
    assert new != domid
    assert_grant_restored(new, source_max)
    print(f"xsproto save {save_seconds:.2f} s, restore {restore_seconds:.2f} s, "
          f"image {image.stat().st_size} bytes")


def _variant(src: Path, dst: Path, *, header: bytes | None = None, cut: int | None = None) -> None:
    """Copy ``src`` to ``dst`` with its xl header replaced and/or cut after ``cut`` bytes."""
    with src.open("rb") as f, dst.open("wb") as out:
        _, raw = read_header(f)
        out.write(header if header is not None else raw)
        left = cut - len(raw) if cut is not None else None
        while chunk := f.read(1 << 20 if left is None else min(1 << 20, left)):
            out.write(chunk)
            if left is not None:
                left -= len(chunk)


def _reversioned(framed: bytes, version: int) -> bytes:
    """A framed xsproto record claiming another version, its CRC recomputed."""
    body = framed[:8] + struct.pack("<I", version) + framed[12:-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.once
def test_xsproto_images_are_stock_images(make_guest: GuestFactory, scratch: Path) -> None:
    name = "stockable"
    domid = make_guest(name, kind="pvh")
    grant(domid, populate=False)  # granted but unused: stock xl can restore it
    image = scratch / "guest.img"
    assert xsproto("save", name, str(image)).returncode == 0
    stock = xl("restore", str(image), check=False)
    assert stock.returncode == 0, stock.stderr
    assert_running(name)


def recorded() -> dict[int, DecisionRecord]:
    """Every decision record in xenstore, by domain."""
    with Xenstore() as xs:
        domids = xenstore_records.domids_under(xs, paths.DECISION_ROOT)
        found = {d: xenstore_records.read_decision(xs, d) for d in domids}
    return {d: r for d, r in found.items() if r is not None}


@pytest.mark.once
def test_crafted_images_are_refused_and_leave_nothing(make_guest: GuestFactory,
                                                      scratch: Path) -> None:
    """Issue 7: a record rewritten with its CRC recomputed restored whatever it said. The
    receiving host's policy decides (exit 3); a corrupt or misplaced record is a bad image
    (exit 1). Either way, no domain, no record and no file are left behind."""
    name = "crafted"
    domid = make_guest(name)
    grant(domid, populate=False)
    neighbour = make_guest("neighbour")
    grant(neighbour, 2000, populate=False)
    image = scratch / "guest.img"
    saved = xsproto("save", name, str(image))
    assert saved.returncode == 0, saved.stderr
    with image.open("rb") as f:
        header, raw = read_header(f)
    record = find_record(header)
    assert record is not None and record.granted_pages == EXTRA

    def framed(**change: object) -> bytes:
        return encode_record(replace(record, **change))  # type: ignore[arg-type]

    def carrying(extra: bytes) -> bytes:
        return header.with_extra_optional_data(extra).to_bytes()

    over_cap = framed(granted_pages=9999, max_pages=record.base_pages + 9999)
    budget = scratch / "budget.json"
    budget.write_text(json.dumps({"host_budget_pages": 4000}))
    cases: dict[str, tuple[bytes | None, int | None, list[str], int, str]] = {
        "over cap": (carrying(over_cap), None, [], 3,
                     "over-domain-cap: granted-pages 9999 > cap 8192"),
        "over budget": (carrying(framed()), None, ["--policy", str(budget)], 3,
                        "over-host-budget: granted-pages 2048 + 2000 granted to other domains "
                        "= 4048 > budget 4000"),
        "bad checksum": (carrying(over_cap[:-4] + bytes(b ^ 0xFF for b in over_cap[-4:])),
                         None, [], 1, "checksum mismatch"),
        "other domain": (carrying(framed(domain_name="someone-else")), None, [], 1,
                         "record for a different domain: record names 'someone-else'"),
        "two records": (carrying(framed() + framed()), None, [], 1,
                        "2 xsproto records in one xl header"),
        "past Xen's range": (carrying(framed(base_pages=10, granted_pages=PAGES_MAX - 10,
                                             max_pages=PAGES_MAX)), None, ["--over-policy"], 1,
                             f"granted-pages {PAGES_MAX - 10} on base {record.base_pages} "
                             f"exceeds Xen's {PAGES_MAX}"),
        "version": (carrying(_reversioned(framed(), 2)), None, [], 1,
                    "unknown xsproto record version 2"),
        "wrong magic": (b"Y" + raw[1:], None, [], 1, "not an xl save image: bad magic"),
        "truncated": (None, image.stat().st_size * 2 // 3, [], 1, "truncated"),
    }
    domids, records = set(Hypervisor().domids()), recorded()
    bad = scratch / "bad.img"
    for case, (crafted, cut, options, status, message) in cases.items():
        _variant(image, bad, header=crafted, cut=cut)
        result = xsproto("restore", *options, str(bad))
        assert (result.returncode, case) == (status, case), result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith(f"xsproto: {bad}: "), (case, result.stderr)
        assert message in last, (case, result.stderr)
        assert domid_named(name) is None, case
        assert set(Hypervisor().domids()) == domids, case
        assert recorded() == records, case
        assert sorted(scratch.iterdir()) == [bad, budget, image], case
        bad.unlink()

    # The admin may override the policy: logged, and the grant restored as carried.
    _variant(image, bad, header=carrying(over_cap))
    forced = xsproto("restore", "--over-policy", str(bad))
    assert forced.returncode == 0, forced.stderr
    assert "WARNING xsproto.restore over-policy" in forced.stderr
    assert "over-domain-cap: granted-pages 9999 > cap 8192" in forced.stderr
    new = assert_running(name)
    assert Hypervisor().domain(new).max_pages == record.base_pages + 9999
    restored = decision(new)
    assert restored is not None and restored.granted_pages == 9999


@pytest.mark.once
def test_a_migration_the_receiving_policy_refuses_leaves_the_source_running(
        make_guest: GuestFactory, scratch: Path) -> None:
    name = "unwelcome"
    domid = make_guest(name)
    source_max = grant(domid, populate=False)
    policy = scratch / "small.json"
    policy.write_text(json.dumps({"domain_cap_pages": 1000}))
    moved = xsproto("migrate", "-s", "", name, f"{RECEIVER} --policy {policy}")
    assert moved.returncode != 0
    assert (f"xsproto: migration stream: domain '{name}' (new domain "
            in moved.stderr), moved.stderr
    assert "over-domain-cap: granted-pages 2048 > cap 1000" in moved.stderr
    assert domid_named(name + "--incoming") is None
    assert assert_running(name) == domid
    assert Hypervisor().domain(domid).max_pages == source_max
    assert frozen(domid) is None

    forced = xsproto("migrate", "-s", "", name, f"{RECEIVER} --policy {policy} --over-policy")
    assert forced.returncode == 0, forced.stderr
    assert "over-policy" in forced.stderr
    assert_grant_restored(assert_running(name), source_max)


def frozen(domid: int) -> bytes | None:
    with Xenstore() as xs:
        return xs.read(paths.freeze_path(domid))


@pytest.mark.once
def test_save_refuses_a_target_it_cannot_write_and_the_domain_runs_on(
        make_guest: GuestFactory, scratch: Path) -> None:
    """A plain xl save destroys the domain once it wrote the image: where the image
    could not be put in place, both would be lost. Nothing is suspended."""
    name = "unsaved"
    domid = make_guest(name)
    source_max = grant(domid, populate=False)
    (scratch / "dir").mkdir()
    readonly = scratch / "readonly"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                   check=True)
    try:
        for target, message in [(scratch / "dir", "is a directory"),
                                (scratch / "missing" / "img", "No such file or directory"),
                                (readonly / "img", "Read-only file system")]:
            result = xsproto("save", name, str(target))
            assert result.returncode == 1, result.stderr
            assert result.stderr.splitlines()[-1] == (
                f"xsproto: {target}: " + ("is a directory; name the image file to write"
                                          if target.name == "dir" else
                                          f"cannot write the image: {message}"))
            assert assert_running(name) == domid
            assert Hypervisor().domain(domid).max_pages == source_max
            assert frozen(domid) is None
        assert sorted(p.name for p in scratch.rglob("*")) == ["dir", "readonly"]
    finally:
        subprocess.run(["umount", str(readonly)], check=True)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.once
def test_a_save_killed_midway_leaves_no_readable_guest_memory(
        make_guest: GuestFactory, scratch: Path) -> None:
    name = "killed"
    domid = make_guest(name)
    grant(domid, populate=False)
    target = scratch / "guest.img"
    saver = subprocess.Popen([sys.executable, "-m", "xsproto", "save", name, str(target)],
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in scratch.glob("guest.img.tmp-*") if p.stat().st_size > 16 << 20]:
        assert saver.poll() is None and time.monotonic() < deadline, "no save in progress"
        time.sleep(0.02)
    assert frozen(domid) == f"pid {saver.pid} save".encode()  # negotiation is frozen
    xl_save = _children(saver.pid)
    saver.kill()
    saver.wait()
    while not all(_gone(pid) for pid in xl_save):  # xl sees EPIPE and resumes the domain
        assert time.monotonic() < deadline, "xl save still running"
        time.sleep(0.1)
    [temporary] = scratch.iterdir()
    assert temporary.name.startswith("guest.img.tmp-")
    assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
    assert assert_running(name) == domid
    assert frozen(domid) == f"pid {saver.pid} save".encode()  # stale: it names a dead process


@pytest.mark.once
def test_images_without_a_record_restore_as_stock(make_guest: GuestFactory,
                                                  scratch: Path) -> None:
    name = "plain"
    domid = make_guest(name, kind="pvh")
    stock_max = Hypervisor().domain(domid).max_pages
    image = scratch / "stock.img"
    xl("save", name, str(image))
    restored = xsproto("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    new = assert_running(name)
    assert Hypervisor().domain(new).max_pages == stock_max
    assert decision(new) is None


@pytest.mark.once
def test_failed_save_leaves_no_file(scratch: Path) -> None:
    target = scratch / "never.img"
    result = xsproto("save", "no-such-domain", str(target))
    assert result.returncode == 1
    assert "no-such-domain" in result.stderr
    assert list(scratch.iterdir()) == []


@pytest.mark.once
def test_through_the_watcher_and_a_device_model_request(
        make_guest: GuestFactory, scratch: Path, watcher: WatcherProcess) -> None:
    """End to end with the real agents: ask, populate, save, restore, ask again."""
    name = "negotiated"
    domid = make_guest(name, kind="pvh")
    base = Hypervisor().domain(domid).max_pages
    asked = xsproto("request", "--domid", str(domid), "--pages", str(EXTRA), "--json")
    assert asked.returncode == 0, asked.stderr
    assert Hypervisor().domain(domid).max_pages == base + EXTRA
    devicemodel.populate(domid, EXTRA)
    image = scratch / "negotiated.img"
    assert xsproto("save", name, str(image)).returncode == 0
    restored = xsproto("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    new = assert_running(name)
    assert_grant_restored(new, base + EXTRA)
    # The restored device model asking for the same total changes nothing.
    again = xsproto("request", "--domid", str(new), "--pages", str(EXTRA), "--json")
    assert again.returncode == 0, again.stderr
    assert Hypervisor().domain(new).max_pages == base + EXTRA
