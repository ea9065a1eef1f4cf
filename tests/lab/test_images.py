"""Save, restore and live migration carrying negotiated pages, on real Xen 4.17 with stock xl.

Each guest is given extra pages the way the watcher leaves them: a granted decision
record in xenstore, Xen's limit raised to base + granted, and (where the test needs
the seed's failure) the pages populated as QEMU does. The guests are PVH, as in the seed.
"""

from __future__ import annotations

import json
import os
import shutil
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
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.records import DecisionRecord, DecisionState, Origin
from xsproto.stream import find_record, read_header
from xsproto.stream.image_record import RECORD_MAGIC

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
        xs.write_dir(paths.decision_dir(domid), record.to_nodes(), paths.decision_permissions(0))
    hv.set_max_pages(domid, base + pages)
    if populate:
        devicemodel.populate(domid, pages)
    return base + pages


def decision(domid: int) -> DecisionRecord | None:
    where = paths.decision_dir(domid)
    with Xenstore() as xs:
        nodes = xs.read_dir(where)
    return DecisionRecord.from_nodes(nodes, where=where) if nodes else None


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


def test_stock_save_and_restore_fail_with_populated_extra_pages(
        make_guest: GuestFactory, scratch: Path) -> None:
    """The control: the seed's failure, unchanged."""
    name = "control"
    domid = make_guest(name, kind="pvh")
    grant(domid)
    image = scratch / "stock.img"
    xl("save", name, str(image))
    restored = xl("restore", str(image), check=False)
    assert restored.returncode != 0
    assert "Failed to populate physmap (16 = Device or resource busy)" in restored.stderr
    assert domid_named(name) is None


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


def test_migrate_to_localhost_three_times_without_growth(make_guest: GuestFactory) -> None:
    name = "migrant"
    domid = make_guest(name, kind="pvh")
    source_max = grant(domid)
    seen = {domid}
    for _ in range(3):
        started = time.monotonic()
        moved = xsproto("migrate", "-s", "", name, RECEIVER)
        assert moved.returncode == 0, f"{moved.stderr}\n{xl_log(name)}"
        new = assert_running(name)
        assert new not in seen
        seen.add(new)
        assert_grant_restored(new, source_max)
        print(f"migrated to domain {new} in {time.monotonic() - started:.2f} s")


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


def _reframed(extra: bytes, *, version: int | None = None, crc_delta: int = 0,
              payload: bytes | None = None) -> bytes:
    """The optional data with its xsproto record rebuilt (other version, bad CRC, payload)."""
    start = extra.index(RECORD_MAGIC)
    _, old_version, length = struct.unpack_from("<8sII", extra, start)
    body = extra[start + 16:start + 16 + length] if payload is None else payload
    framed = struct.pack("<8sII", RECORD_MAGIC, version or old_version, len(body)) + body
    return extra[:start] + framed + struct.pack("<I", (zlib.crc32(framed) + crc_delta) % 2**32)


def test_xsproto_images_are_stock_images_and_bad_images_are_refused(
        make_guest: GuestFactory, scratch: Path) -> None:
    name = "stockable"
    domid = make_guest(name, kind="pvh")
    grant(domid, populate=False)  # granted but unused: stock xl can restore it
    image = scratch / "guest.img"
    assert xsproto("save", name, str(image)).returncode == 0

    with image.open("rb") as f:
        header, raw = read_header(f)
    extra = header.extra_optional_data
    record = find_record(header)
    assert record is not None
    other = json.dumps(replace(record, domain_name="someone-else").to_json()).encode()
    bad = scratch / "bad.img"
    size = image.stat().st_size
    cases = {
        "truncated": ({"cut": size * 2 // 3}, "truncated"),
        "wrong magic": ({"header": b"Y" + raw[1:]}, "not an xl save image: bad magic"),
        "checksum": ({"header": header.with_extra_optional_data(
            _reframed(extra, crc_delta=1)).to_bytes()}, "checksum mismatch"),
        "version": ({"header": header.with_extra_optional_data(
            _reframed(extra, version=2)).to_bytes()}, "unknown xsproto record version 2"),
        "other domain": ({"header": header.with_extra_optional_data(
            _reframed(extra, payload=other)).to_bytes()}, "record for a different domain"),
    }
    domids = set(Hypervisor().domids())
    for case, (change, message) in cases.items():
        _variant(image, bad, **change)  # type: ignore[arg-type]
        result = xsproto("restore", str(bad))
        assert result.returncode == 1, case
        assert message in result.stderr, (case, result.stderr)
        assert "at byte" in result.stderr or case == "other domain", (case, result.stderr)
        assert set(Hypervisor().domids()) == domids, case
        bad.unlink()

    stock = xl("restore", str(image), check=False)
    assert stock.returncode == 0, stock.stderr
    assert_running(name)


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


def test_failed_save_leaves_no_file(scratch: Path) -> None:
    target = scratch / "never.img"
    result = xsproto("save", "no-such-domain", str(target))
    assert result.returncode == 1
    assert "no-such-domain" in result.stderr
    assert list(scratch.iterdir()) == []


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
