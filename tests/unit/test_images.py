"""The pure parts of the image hooks: relaying, the header hold, grants, argv, rendering."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from xsproto import carrying, cli
from xsproto.adapters import xenstore_records, xl
from xsproto.agents import inspect_image, migrate, restore, save
from xsproto.errors import (
    GrantRefused,
    HypervisorError,
    ImageError,
    ImageKept,
    ProtocolError,
    ReplacementRefused,
    XsprotoError,
)
from xsproto.exitcodes import Exit
from xsproto.grant import Grant
from xsproto.negotiation import DomainInfo
from xsproto.policy import Policy
from xsproto.records import DecisionRecord, DecisionState
from xsproto.stream import find_record, read_header, relay, summarize, synthetic
from xsproto.stream.image_record import RECORD_MAGIC, record_for_config
from xsproto.stream.walk import read_head
from xsproto.values import PAGES_MAX

GRANT = Grant(base_pages=33024, granted_pages=2048)
RECORD = record_for_config(synthetic.domain_config(), source_domid=3, grant=GRANT)


class Sink(io.RawIOBase):
    """A write-only sink that remembers everything, like a pipe to xl."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


class ReadOnly:
    """A source with ``read`` and nothing else (no ``readinto``), with short reads."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(min(size, 3000) if size >= 0 else -1)


# Relaying.

@pytest.mark.parametrize("source", [lambda b: io.BufferedReader(io.BytesIO(b)), ReadOnly],
                         ids=["readinto", "read-only"])
def test_relay_passes_the_body_byte_for_byte_and_then_the_trailing_handshake(
        source: Any) -> None:
    image = synthetic.build_image(image_record=RECORD, page_batches=(3, 2))
    src = source(image + b"GO")
    head = read_head(src)
    assert head.record == RECORD and head.name == "guest"
    sink = Sink()
    done = relay.relay_body(src, sink, offset=len(head.raw))
    assert bytes(sink.data) == image[len(head.raw):] + b"GO"
    assert (done.stream_bytes, done.trailing_bytes) == (len(image) - len(head.raw), 2)


@pytest.mark.parametrize("cut", [10, 4000, -9])
def test_relay_names_the_offset_of_a_truncation(cut: int) -> None:
    image = synthetic.build_image()
    src = io.BytesIO(image[:cut])
    with pytest.raises(ImageError, match="truncated") as err:
        head = read_head(src)
        relay.relay_body(src, Sink(), offset=len(head.raw))
    assert err.value.offset is not None and 0 <= err.value.offset < len(image)


def test_relay_refuses_a_legacy_stream() -> None:
    header = synthetic.xl_header()
    legacy = header.to_bytes()[:36] + (1).to_bytes(4, "little") + header.to_bytes()[40:]
    with pytest.raises(ImageError, match="legacy") as err:
        read_head(io.BytesIO(legacy))
    assert err.value.offset == 36


def test_relay_forwards_the_go_message_without_waiting_for_eof() -> None:
    """In a migration the sender waits for a reply after 'go': nothing may sit in a buffer."""
    image = synthetic.build_image()
    r, w = os.pipe()
    got_go = threading.Event()

    class Watching(Sink):
        def write(self, b: Any) -> int:
            n = super().write(b)
            if self.data.endswith(b"GO"):
                got_go.set()
            return n

    sink = Watching()

    def sender() -> None:
        os.write(w, image + b"GO")
        got_go.wait(5)  # only then does the peer "reply" and close
        os.close(w)

    thread = threading.Thread(target=sender)
    thread.start()
    with open(r, "rb") as src:
        head = read_head(src)
        relay.relay_body(src, sink, offset=len(head.raw))
    thread.join()
    assert got_go.is_set()


# The save filter.

def test_save_filter_adds_the_record_and_keeps_the_image_valid() -> None:
    image = synthetic.build_image(foreign=b"someone's data")
    out = Sink()
    size = relay.add_grant(io.BytesIO(image), out, GRANT, source_domid=3)
    assert size == len(out.data)
    summary = summarize(io.BytesIO(bytes(out.data)))
    assert summary.record == RECORD
    assert summary.header.extra_optional_data.startswith(b"someone's data")
    _, raw = read_header(io.BytesIO(image))
    assert bytes(out.data).endswith(image[len(raw):])


def test_save_filter_without_a_grant_is_a_copy() -> None:
    image = synthetic.build_image()
    out = Sink()
    relay.add_grant(io.BytesIO(image), out, None, source_domid=3)
    assert bytes(out.data) == image


# The restore hold: nothing past the xl header reaches xl before the limit is raised.

class FakeXl:
    def __init__(self) -> None:
        self.stdin = Sink()

    def poll(self) -> int | None:
        return None


class FakeHost:
    """The receiving host as its policy check sees it: the decision records under /libxl
    (a ProtocolError stands for a malformed one) and Xen's free pages."""

    def __init__(self) -> None:
        self.records: dict[int, DecisionRecord | ProtocolError] = {}
        self.free = 1 << 20

    def free_pages(self) -> int:
        return self.free


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()

    def domids_under(xs: Any, path: str) -> list[int]:
        assert path == "/libxl"
        return sorted(fake.records)

    def read_decision(xs: Any, domid: int) -> DecisionRecord | None:
        record = fake.records.get(domid)
        if isinstance(record, ProtocolError):
            raise record
        return record

    monkeypatch.setattr(xenstore_records, "domids_under", domids_under)
    monkeypatch.setattr(xenstore_records, "read_decision", read_decision)
    monkeypatch.setattr(xenstore_records, "domain_name", lambda xs, domid: None)
    return fake


def _restoring(verb: str, incoming: bool, host: FakeHost | None = None,
               admission: restore.Admission | None = None) -> tuple[restore.Restoring, FakeXl]:
    proc = FakeXl()
    return restore.Restoring(proc, restore.Receiver(verb, [], incoming=incoming),  # type: ignore[arg-type]
                             host, None, set(),  # type: ignore[arg-type]
                             admission or restore.Admission()), proc


Calls = list[tuple[str, Any, int]]


def _feed(monkeypatch: pytest.MonkeyPatch, restoring: restore.Restoring, proc: FakeXl,
          image: bytes, *, base: int = 33100) -> tuple[restore.Restored, Calls]:
    """Feed ``image`` through the hold; the new domain appears with limit ``base``. Returns
    the outcome and the calls made, each with how many bytes xl had been given by then."""
    calls: Calls = []

    def await_new(name: str) -> tuple[int, int]:
        calls.append(("await", name, len(proc.stdin.data)))
        return 7, base

    def apply(xs: Any, hv: Any, domid: int, grant: Grant) -> DecisionRecord:
        calls.append(("apply", (domid, grant), len(proc.stdin.data)))
        return carrying.restored(grant)

    monkeypatch.setattr(restoring, "await_new_domain", await_new)
    monkeypatch.setattr(restore, "apply_grant", apply)
    head = read_head(io.BytesIO(image))
    src = io.BytesIO(image)
    src.seek(len(head.raw))
    return restoring.feed(src, head), calls


def test_restore_holds_the_stream_until_the_grant_is_applied(
        monkeypatch: pytest.MonkeyPatch, host: FakeHost) -> None:
    image = synthetic.build_image(image_record=RECORD)
    header_size = len(read_head(io.BytesIO(image)).raw)
    restoring, proc = _restoring("migrate-receive", incoming=True, host=host)
    restored, calls = _feed(monkeypatch, restoring, proc, image)
    assert calls == [("await", "guest--incoming", header_size),
                     ("apply", (7, Grant(33100, 2048)), header_size)]
    assert bytes(proc.stdin.data) == image
    assert (restored.domid, restored.max_pages) == (7, 33100 + 2048)
    assert restoring.names == {"guest", "guest--incoming"}


def test_restore_of_a_stock_image_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    image = synthetic.build_image()
    head = read_head(io.BytesIO(image))
    restoring, proc = _restoring("restore", incoming=False)
    monkeypatch.setattr(restoring, "await_new_domain", lambda *a: pytest.fail("waited"))
    src = io.BytesIO(image)
    src.seek(len(head.raw))
    assert restoring.feed(src, head).domid is None
    assert bytes(proc.stdin.data) == image


# The receiving host's policy on a carried grant.

def _carrying(granted: int, *, base: int = 33024, name: str = "guest") -> bytes:
    """A synthetic image whose record carries ``granted`` pages (CRC and all valid)."""
    record = record_for_config(synthetic.domain_config(name), source_domid=3,
                               grant=Grant(base, granted))
    return synthetic.build_image(synthetic.domain_config(name), image_record=record)


def _other(granted: int) -> DecisionRecord:
    return DecisionRecord(state=DecisionState.GRANTED, request_id=1, base_pages=33024,
                          granted_pages=granted, max_pages=33024 + granted)


@pytest.mark.parametrize(("granted", "elsewhere", "free", "broken"), [
    (8192, 262144 - 8192, 16384 + 8192, []),
    (8193, 0, 1 << 20, ["over-domain-cap: granted-pages 8193 > cap 8192"]),
    (2048, 262144 - 2047, 1 << 20, ["over-host-budget: granted-pages 2048 + 260097 granted "
                                    "to other domains = 262145 > budget 262144"]),
    (2048, 0, 16384 + 2047, ["over-host-budget: granted-pages 2048 > free 18431 - reserve "
                             "16384"]),
    (9999, 262144, 0, ["over-domain-cap", "over-host-budget", "over-host-budget"]),
    (0, 262145, 0, []),
], ids=["within", "cap", "budget", "reserve", "all", "nothing-carried"])
def test_check_restore_is_a_requests_cap_budget_and_reserve(
        granted: int, elsewhere: int, free: int, broken: list[str]) -> None:
    policy = Policy()
    refusals = carrying.check_restore(Grant(33100, granted), limits=policy.limits_for(7),
                                      policy=policy, free_pages=free,
                                      granted_elsewhere=elsewhere)
    assert [str(r)[:len(b)] for r, b in zip(refusals, broken, strict=False)] == broken
    assert len(refusals) == len(broken)


def test_restore_refuses_a_grant_over_policy_before_the_memory_flows(
        monkeypatch: pytest.MonkeyPatch, host: FakeHost) -> None:
    """Seen on real Xen: a record rewritten to 9999 pages (CRC recomputed) restored with
    a limit of 172092 kB. The receiving host's policy decides, at the hold point."""
    image = _carrying(9999)
    header_size = len(read_head(io.BytesIO(image)).raw)
    restoring, proc = _restoring("restore", incoming=False, host=host)
    with pytest.raises(GrantRefused) as err:
        _feed(monkeypatch, restoring, proc, image)
    assert str(err.value) == (
        "domain 'guest' (new domain 7): the 9999 granted pages it carries break this "
        "host's policy: over-domain-cap: granted-pages 9999 > cap 8192 "
        "(--over-policy restores it anyway)")
    assert err.value.codes == ("over-domain-cap",)
    assert len(proc.stdin.data) == header_size  # nothing of the libxl stream was sent


def test_restore_budget_counts_every_other_record_and_a_malformed_one_as_a_cap(
        monkeypatch: pytest.MonkeyPatch, host: FakeHost) -> None:
    host.records = {5: _other(9000), 6: ProtocolError("bad", path="/libxl/6/extra-pages"),
                    7: _other(50000)}  # 7 is the new domain itself: not "elsewhere"
    image = _carrying(2048)
    fits = restore.Admission(Policy(host_budget_pages=9000 + 8192 + 2048))
    restored, _ = _feed(monkeypatch, *_restoring("restore", False, host, fits), image)
    assert restored.granted_pages == 2048
    tight = restore.Admission(Policy(host_budget_pages=9000 + 8192 + 2047))
    with pytest.raises(GrantRefused, match="over-host-budget: granted-pages 2048 "
                       r"\+ 17192 granted to other domains = 19240 > budget 19239"):
        _feed(monkeypatch, *_restoring("restore", False, host, tight), image)


def test_restore_checks_the_free_memory_reserve(monkeypatch: pytest.MonkeyPatch,
                                                host: FakeHost) -> None:
    host.free = 16384 + 2047
    with pytest.raises(GrantRefused, match="over-host-budget: granted-pages 2048 > free 18431 "
                       "- reserve 16384"):
        _feed(monkeypatch, *_restoring("restore", False, host), _carrying(2048))


def test_restore_over_policy_is_an_explicit_logged_override(
        monkeypatch: pytest.MonkeyPatch, host: FakeHost, caplog: pytest.LogCaptureFixture) -> None:
    restoring, proc = _restoring("restore", False, host, restore.Admission(over_policy=True))
    with caplog.at_level(logging.WARNING):
        restored, calls = _feed(monkeypatch, restoring, proc, _carrying(9999))
    assert calls[-1][:2] == ("apply", (7, Grant(33100, 9999)))
    assert restored.max_pages == 33100 + 9999
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert line.getMessage() == (
        "over-policy domid=7 domain=guest path=/libxl/7/extra-pages granted_pages=9999 "
        'overridden="over-domain-cap: granted-pages 9999 > cap 8192"')


@pytest.mark.parametrize("over_policy", [False, True], ids=["by-policy", "over-policy"])
def test_a_grant_xen_cannot_hold_on_the_new_base_is_an_image_error(
        monkeypatch: pytest.MonkeyPatch, host: FakeHost, over_policy: bool) -> None:
    """A record may hold base + granted = 2^32-1; on a larger new base it overflows."""
    image = _carrying(PAGES_MAX - 10, base=10)
    admission = restore.Admission(over_policy=over_policy)
    with pytest.raises(ImageError, match=f"granted-pages {PAGES_MAX - 10} on base 33100"):
        _feed(monkeypatch, *_restoring("restore", False, host, admission), image)


@pytest.mark.parametrize("change", [
    {"granted_pages": 2**52, "max_pages": 33024 + 2**52}, {"granted_pages": 2**64},
    {"granted_pages": -1}, {"base_pages": PAGES_MAX, "granted_pages": 1, "max_pages": 2**32},
    {"granted_pages": 1e999}, {"granted_pages": True}, {"source_domid": 2**70},
], ids=["2^52", "2^64", "negative", "sum-past-2^32-1", "infinite", "bool", "domid"])
@pytest.mark.parametrize("command", ["restore", "inspect-image"])
def test_absurd_numbers_in_a_record_are_clean_image_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object],
        command: str) -> None:
    """Refused when the header is read, before xl is started: exit 1, one line, no
    traceback."""
    header = synthetic.xl_header(image_record=RECORD)
    payload = json.dumps({**RECORD.to_json(), **change}).encode()
    framed = struct.pack("<8sII", RECORD_MAGIC, 1, len(payload)) + payload
    framed += struct.pack("<I", zlib.crc32(framed))
    path = tmp_path / "absurd.img"
    path.write_bytes(header.with_extra_optional_data(framed).to_bytes()
                     + synthetic.libxl_stream())
    assert cli.main([command, str(path)]) == Exit.ERROR
    err = capsys.readouterr().err
    assert "invalid xsproto record payload" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# The command line of the restoring side.

def test_restore_and_receive_take_the_policy_and_the_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def run(*args: Any, **kw: Any) -> int:
        seen.append((args, kw))
        return 0

    monkeypatch.setattr(restore, "run_restore", run)
    monkeypatch.setattr(restore, "run_receive", run)
    cli.main(["restore", "--policy", "p.toml", "--over-policy", "img", "-p"])
    cli.main(["restore", "img"])
    cli.main(["migrate-receive", "-e", "--policy", "p.json"])
    assert seen == [
        ((Path("img"), ["-p"]), {"config": None, "xenstore": None, "policy": "p.toml",
                                 "over_policy": True}),
        ((Path("img"), []), {"config": None, "xenstore": None, "policy": None,
                             "over_policy": False}),
        ((["-e"],), {"xenstore": None, "policy": "p.json", "over_policy": False})]


def test_a_refused_restore_exits_rejected_naming_the_image(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "img"
    path.write_bytes(_carrying(9999))

    def refuse(*args: Any, **kw: Any) -> restore.Restored:
        raise GrantRefused("the grant breaks policy", codes=("over-domain-cap",))

    monkeypatch.setattr(restore, "restore_with", refuse)
    assert cli.main(["restore", str(path)]) == Exit.REJECTED
    assert capsys.readouterr().err == f"xsproto: {path}: the grant breaks policy\n"


def test_migrate_passes_the_policy_and_the_override_to_the_receiving_end() -> None:
    options = migrate.XlMigrateOptions(paused=True, policy="/etc/x p.toml", over_policy=True)
    assert options.receiver_command("ssh", "h") == (
        "exec ssh h xsproto migrate-receive -p --policy '/etc/x p.toml' --over-policy")


# Grants as read on the sending side.

def _decision(state: DecisionState = DecisionState.GRANTED, granted: int = 2048) -> DecisionRecord:
    if state is DecisionState.REJECTED:
        return DecisionRecord(state=state, request_id=2, base_pages=33024, granted_pages=granted,
                              max_pages=33024 + granted, reason="over-domain-cap: too many")
    return DecisionRecord(state=state, request_id=1, base_pages=33024, granted_pages=granted,
                          max_pages=33024 + granted)


LIVE = DomainInfo(domid=3, exists=True, max_pages=35072, tot_pages=35000)


def test_grant_is_carried_when_xen_agrees() -> None:
    assert carrying.check_grant(_decision(), LIVE) == GRANT
    assert carrying.check_grant(_decision(DecisionState.REJECTED), LIVE) == GRANT


def test_nothing_to_carry_without_a_grant() -> None:
    assert carrying.check_grant(None, LIVE) is None
    assert carrying.check_grant(_decision(granted=0), LIVE) is None


def test_grant_refused_while_applying_or_when_xen_disagrees() -> None:
    with pytest.raises(ProtocolError, match="applying") as err:
        carrying.check_grant(_decision(DecisionState.APPLYING), LIVE)
    assert err.value.path == "/libxl/3/extra-pages: state"
    with pytest.raises(HypervisorError, match="max_pages 40000 differs"):
        carrying.check_grant(_decision(), DomainInfo(domid=3, exists=True, max_pages=40000))
    with pytest.raises(HypervisorError, match="no such domain"):
        carrying.check_grant(_decision(), DomainInfo(domid=3, exists=False))


# Command lines.

def _runs(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, argv: list[str]) -> Any:
    """The arguments ``xsproto ARGV`` calls ``module.name`` with."""
    seen: list[Any] = []

    def run(*a: Any, **kw: Any) -> int:
        seen.append((a, kw))
        return 0

    monkeypatch.setattr(module, name, run)
    assert cli.main(argv) == 0
    [call] = seen
    return call


@pytest.mark.parametrize(("argv", "flags", "config"), [
    (["save", "-c", "-p", "-D", "g", "img", "g.cfg"], ["-c", "-p", "-D"], "g.cfg"),
    (["save", "-p", "g", "img"], ["-p"], None),
    (["save", "g", "img", "g.cfg", "-c"], ["-c"], "g.cfg"),  # the order xsproto took before
], ids=["all", "paused", "flags-last"])
def test_save_takes_xl_saves_options_in_its_order(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], flags: list[str],
        config: str | None) -> None:
    """``xsproto save -c DOM FILE`` was a usage error: flags were only taken after FILE."""
    args, kw = _runs(monkeypatch, save, "run", argv)
    assert args == ("g", Path("img"), flags)
    assert kw == {"config": config, "xenstore": None}


@pytest.mark.parametrize(("argv", "flags", "config"), [
    (["restore", "-p", "-e", "-d", "-V", "g.cfg", "img"], ["-p", "-e", "-d", "-V"], "g.cfg"),
    (["restore", "-e", "img"], ["-e"], None),
    (["restore", "g.cfg", "img", "-p"], ["-p"], "g.cfg"),
], ids=["all", "no-config", "flags-last"])
def test_restore_takes_xl_restores_options_in_its_order(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], flags: list[str],
        config: str | None) -> None:
    """``xsproto restore -p FILE`` and ``restore CONFIG FILE`` were usage errors."""
    args, kw = _runs(monkeypatch, restore, "run_restore", argv)
    assert args == (Path("img"), flags)
    assert kw["config"] == config


def test_migrate_takes_xl_migrates_options_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-D`` was refused; each option reaches xl migrate in xl's order."""
    args, _ = _runs(monkeypatch, migrate, "run_migrate", [
        "migrate", "-s", "ssh -p 22", "-e", "-C", "g.cfg", "--debug", "-p", "-D", "g", "h"])
    domain, host, ssh, options = args
    assert (domain, host, ssh) == ("g", "h", "ssh -p 22")
    assert options.xl_argv() == ["-e", "-C", "g.cfg", "--debug", "-p", "-D"]
    assert migrate.XlMigrateOptions().xl_argv() == []


@pytest.mark.parametrize("argv", [["save", "-e", "g", "img"], ["restore", "-D", "img"],
                                  ["restore", "a", "b", "c"], ["save", "g"],
                                  ["migrate", "-d", "g", "h"]],
                         ids=" ".join)
def test_what_xl_would_not_take_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    for module, name in ((save, "run"), (restore, "run_restore"), (migrate, "run_migrate")):
        monkeypatch.setattr(module, name, lambda *a, **kw: pytest.fail("ran"))
    with pytest.raises(SystemExit) as end:
        cli.main(argv)
    assert end.value.code == Exit.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_receiver_command_mirrors_xl() -> None:
    """xl_migrate.c builds ``xl migrate-receive`` with -e, -d, -p in that order."""
    plain = migrate.XlMigrateOptions()
    assert plain.receiver_command("", "xsproto migrate-receive") == "xsproto migrate-receive"
    assert (migrate.XlMigrateOptions(paused=True, debug=True, no_daemon=True).receiver_command(
        "ssh -p 2222", "host b") == "exec ssh -p 2222 'host b' xsproto migrate-receive -e -d -p")
    assert plain.receiver_command("ssh", "h") == "exec ssh h xsproto migrate-receive"


def test_the_transport_carrying_the_grant() -> None:
    transport = migrate.transport_command("exec ssh h xsproto migrate-receive", GRANT, 3)
    assert "-m xsproto migrate-send --source-domid 3 --grant 33024+2048" in transport
    assert transport.endswith("'exec ssh h xsproto migrate-receive'")
    assert "--grant" not in migrate.transport_command("r", None, 3)


# inspect-image.

def test_inspect_renders_header_config_record_and_records() -> None:
    summary = summarize(io.BytesIO(synthetic.build_image(image_record=RECORD)))
    text = inspect_image.render(summary)
    assert "config: name guest, type pvh, memory 131072 kB" in text
    assert "base 33024 + granted 2048 pages, max 35072" in text
    assert "PAGE_DATA" in text and "12 records" in text
    data = inspect_image.to_json(summary)
    assert data["record"]["granted_pages"] == 2048
    assert data["pfns"] == 3
    assert [r["type"] for r in data["records"]][-1] == "END"
    stock = inspect_image.render(summarize(io.BytesIO(synthetic.build_image())))
    assert "xsproto record: none (stock image)" in stock


def test_record_in_the_image_matches_the_grant() -> None:
    out = Sink()
    relay.add_grant(io.BytesIO(synthetic.build_image()), out, GRANT, source_domid=3)
    record = find_record(read_header(io.BytesIO(bytes(out.data)))[0])
    assert record is not None
    assert (record.base_pages, record.granted_pages, record.max_pages) == (33024, 2048, 35072)


# Freezing negotiation while saving or migrating.

class FakeXenstore:
    def __enter__(self) -> FakeXenstore:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeHypervisor:
    def domain(self, domid: int) -> DomainInfo:
        return replace(LIVE, domid=domid)


class FakeXlSave:
    """Stands for ``xl save``: writes ``image`` into the pipe it is given, runs ``during``
    meanwhile (the domain is being saved), then exits with ``status``."""

    def __init__(self, calls: list[str], image: bytes, status: int = 0,
                 during: Callable[[], None] = lambda: None) -> None:
        self.calls, self.image, self.status, self.during = calls, image, status, during
        self.thread: threading.Thread | None = None

    def start(self, verb: str, args: list[str], *, feed: bool = False,
              pass_fds: tuple[int, ...] = ()) -> FakeXlSave:
        self.calls.append(f"xl {verb}")
        fd = os.dup(pass_fds[0])

        def write() -> None:
            with open(fd, "wb") as pipe, contextlib.suppress(BrokenPipeError):
                pipe.write(self.image)
                self.during()

        self.thread = threading.Thread(target=write)
        self.thread.start()
        return self

    def wait(self) -> int:
        assert self.thread is not None
        self.thread.join()
        return self.status

    def poll(self) -> int | None:
        return None if self.thread is not None and self.thread.is_alive() else self.status


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fakes of xenstore, Xen and xl under the image hooks; the calls they see, in order."""
    calls: list[str] = []
    monkeypatch.setattr(xenstore_records, "freeze",
                        lambda xs, domid, holder: calls.append(f"freeze {domid} {holder}"))
    monkeypatch.setattr(xenstore_records, "thaw", lambda xs, domid: calls.append(f"thaw {domid}"))

    def read_decision(xs: Any, domid: int) -> DecisionRecord:
        calls.append(f"read {domid}")
        return _decision()

    monkeypatch.setattr(xenstore_records, "read_decision", read_decision)
    monkeypatch.setattr(xl, "domid_of", lambda domain: 3)
    for module in (save, migrate):
        monkeypatch.setattr(module, "Xenstore", lambda path: FakeXenstore())
        monkeypatch.setattr(module, "Hypervisor", FakeHypervisor)
    return calls


@pytest.mark.parametrize("status", [0, 1], ids=["xl-succeeds", "xl-fails"])
def test_save_freezes_negotiation_before_reading_the_grant_and_thaws_after(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: int) -> None:
    monkeypatch.setattr(xl, "start", FakeXlSave(hooks, synthetic.build_image(), status).start)
    if status:
        with pytest.raises(xl.XlFailed):
            save.run("guest", tmp_path / "img", [], xenstore=None)
    else:
        assert save.run("guest", tmp_path / "img", [], xenstore=None) == 0
    assert hooks == [f"freeze 3 pid {os.getpid()} save", "read 3", "xl save", "thaw 3"]


@pytest.mark.parametrize("status", [0, 1], ids=["xl-succeeds", "xl-fails"])
def test_migrate_freezes_negotiation_before_reading_the_grant_and_thaws_after(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    def run(verb: str, args: list[str]) -> None:
        hooks.append(f"xl {verb}")
        if status:
            raise xl.XlFailed(verb, status)

    monkeypatch.setattr(xl, "run", run)
    options = migrate.XlMigrateOptions()
    if status:
        with pytest.raises(xl.XlFailed):
            migrate.run_migrate("guest", "h", "ssh", options, xenstore=None)
    else:
        assert migrate.run_migrate("guest", "h", "ssh", options, xenstore=None) == 0
    assert hooks == [f"freeze 3 pid {os.getpid()} migrate", "read 3", "xl migrate", "thaw 3"]


# What a save leaves on disk.

def _saved_image(image: bytes) -> bytes:
    """What ``xsproto save`` writes for ``image`` of domain 3, granted GRANT."""
    out = Sink()
    relay.add_grant(io.BytesIO(image), out, GRANT, source_domid=3)
    return bytes(out.data)


@pytest.mark.parametrize("target", ["dir", "missing/img", "file/img"],
                         ids=["a-directory", "missing-parent", "parent-is-a-file"])
def test_save_refuses_a_target_it_cannot_write_before_suspending_anything(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], target: str) -> None:
    """A plain ``xl save`` destroys the domain once the image is written: if the image
    cannot be put in place afterwards, both are lost. Nothing starts before the check."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setattr(xl, "start", FakeXlSave(hooks, synthetic.build_image()).start)
    assert cli.main(["save", "guest", str(tmp_path / target)]) == Exit.ERROR
    assert hooks == []
    assert str(tmp_path / target) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dir", "file"]


def test_save_keeps_the_image_when_it_cannot_be_put_in_place(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """xl succeeded, so the domain is gone: the temporary file is the only copy."""
    target = tmp_path / "img"
    image = synthetic.build_image()
    fake = FakeXlSave(hooks, image, during=target.mkdir)  # the target turns into a directory
    monkeypatch.setattr(xl, "start", fake.start)
    with pytest.raises(ImageKept) as err:
        save.run("guest", target, [], xenstore=None)
    kept = [p for p in tmp_path.iterdir() if p != target]
    assert [err.value.path] == kept
    assert str(kept[0]) in str(err.value)
    assert kept[0].read_bytes() == _saved_image(image)
    assert hooks[-1] == "thaw 3"


def test_save_keeps_what_xl_wrote_when_xl_succeeded_on_a_stream_it_cannot_check(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = synthetic.build_image()
    monkeypatch.setattr(xl, "start", FakeXlSave(hooks, image[:-100]).start)
    with pytest.raises(ImageKept, match="truncated") as err:
        save.run("guest", tmp_path / "img", [], xenstore=None)
    assert list(tmp_path.iterdir()) == [err.value.path]
    assert err.value.path.read_bytes() == _saved_image(image)[:-100]


def test_failed_xl_save_leaves_no_file(hooks: list[str], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    """xl failed, so it resumed the domain: a partial image is worth nothing."""
    monkeypatch.setattr(xl, "start", FakeXlSave(hooks, synthetic.build_image(), 1).start)
    with pytest.raises(xl.XlFailed):
        save.run("guest", tmp_path / "img", [], xenstore=None)
    assert list(tmp_path.iterdir()) == []


def test_save_keeps_guest_memory_private_until_the_image_is_whole(
        hooks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A save killed -9 leaves its temporary file: only its owner may read it."""
    modes: list[int] = []

    def look() -> None:
        modes.extend(stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir())

    image = synthetic.build_image()
    monkeypatch.setattr(xl, "start", FakeXlSave(hooks, image, during=look).start)
    umask = os.umask(0o027)
    try:
        save.run("guest", tmp_path / "img", [], xenstore=None)
    finally:
        os.umask(umask)
    assert modes == [0o600]
    assert stat.S_IMODE((tmp_path / "img").stat().st_mode) == 0o640  # xl's 0644 & ~umask
    assert (tmp_path / "img").read_bytes() == _saved_image(image)


# Replacement configs (xl's restore CONFIG FILE, save DOM FILE CONFIG, migrate -C CONFIG):
# checked against the image's record before xl starts; nothing changes when refused.

OTHER_NAME = "name = 'clone'\nmemory = 128\n"
LESS_MEMORY = "name = 'guest'\nmemory = 64\n"


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither xl nor the hypervisor may be touched."""
    for name in ("start", "run"):
        monkeypatch.setattr(xl, name, lambda *a, **kw: pytest.fail("xl started"))
    monkeypatch.setattr(restore, "Hypervisor", lambda: pytest.fail("Xen touched"))


@pytest.mark.parametrize(("text", "error"), [
    (OTHER_NAME, "name = 'clone' is not 'guest', the domain whose 2048 granted pages the "
                 "image carries"),
    (LESS_MEMORY, "memory = 64 gives 65536 kB, less than the 131072 kB of the image's own "
                  "config (target_memkb)"),
    ("name = 'guest'\nmemory = 128 128\n", ""),
], ids=["other-name", "less-memory", "syntax-error"])
def test_restore_refuses_a_replacement_that_does_not_fit_before_xl_starts(
        nothing_starts: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
        error: str) -> None:
    image, config = tmp_path / "img", tmp_path / "g.cfg"
    image.write_bytes(_carrying(2048))
    config.write_text(text)
    assert cli.main(["restore", "-p", str(config), str(image)]) == Exit.ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"xsproto: {config}") and error in err
    assert len(err.splitlines()) == 1


def _restored_with(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def restore_with(src: Any, receiver: restore.Receiver, admission: Any,
                     **kw: Any) -> restore.Restored:
        seen.update(args=receiver.args, name=kw["name"])
        return restore.Restored(None, 0, None)

    monkeypatch.setattr(restore, "restore_with", restore_with)
    return seen


@pytest.mark.parametrize(("image", "text", "name"), [
    (_carrying(2048), "name = 'guest'\nmemory = 256\nuuid = '" + synthetic.DEFAULT_UUID
     + "'\n", "guest"),
    (synthetic.build_image(), OTHER_NAME, "clone"),  # nothing carried: xl's own business
], ids=["fits-the-grant", "stock-image"])
def test_restore_hands_a_fitting_replacement_to_xl(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, image: bytes, text: str,
        name: str) -> None:
    path, config = tmp_path / "img", tmp_path / "g.cfg"
    path.write_bytes(image)
    config.write_text(text)
    seen = _restored_with(monkeypatch)
    assert cli.main(["restore", "-e", str(config), str(path)]) == Exit.OK
    assert seen == {"args": ["-e", str(config), restore.STDIN_PATH], "name": name}


def test_a_failed_restore_cleans_up_by_the_replacements_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """xl names the new domain after the replacement: a stock image's own name is not it."""
    restoring, _ = _restoring("restore", False)
    restoring.names.add("clone")
    monkeypatch.setattr(restoring, "new_domains", lambda names: [9] if "clone" in names else [])
    destroyed: list[int] = []
    monkeypatch.setattr(xl, "destroy", destroyed.append)
    restoring.clean_up()
    assert destroyed == [9]


@pytest.fixture
def running_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Domain 3's libxl config, as ``xl list -l`` gives it: guest, 128 MiB."""
    monkeypatch.setattr(xl, "domain_config", lambda domid: synthetic.domain_config())


@pytest.mark.parametrize("verb", ["save", "migrate"])
@pytest.mark.parametrize("text", [OTHER_NAME, LESS_MEMORY], ids=["other-name", "less-memory"])
def test_save_and_migrate_refuse_a_replacement_that_does_not_fit_before_xl_starts(
        hooks: list[str], running_guest: None, nothing_starts: None, tmp_path: Path,
        text: str, verb: str) -> None:
    """Checked against the record the running domain's own config would carry."""
    config = tmp_path / "g.cfg"
    config.write_text(text)
    with pytest.raises(ReplacementRefused, match=str(config)):
        if verb == "save":
            save.run("guest", tmp_path / "img", ["-c"], config=str(config), xenstore=None)
        else:
            migrate.run_migrate("guest", "h", "ssh", migrate.XlMigrateOptions(config=str(config)),
                                xenstore=None)
    assert hooks == [f"freeze 3 pid {os.getpid()} {verb}", "read 3", "thaw 3"]
    assert list(tmp_path.iterdir()) == [config]


def test_save_passes_a_fitting_replacement_to_xl(
        hooks: list[str], running_guest: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    config = tmp_path / "g.cfg"
    config.write_text("name = 'guest'\nmemory = 128\n")
    fake = FakeXlSave(hooks, synthetic.build_image())
    argv: list[str] = []

    def start(verb: str, args: list[str], **kw: Any) -> FakeXlSave:
        argv.extend(args)
        return fake.start(verb, args, **kw)

    monkeypatch.setattr(xl, "start", start)
    assert save.run("guest", tmp_path / "img", ["-c"], config=str(config), xenstore=None) == 0
    assert argv[0] == "-c" and argv[1] == "3" and argv[3] == str(config)


def test_an_unreadable_replacement_is_refused_before_anything(
        hooks: list[str], tmp_path: Path) -> None:
    with pytest.raises(XsprotoError, match=r"no-such\.cfg: cannot read the domain config"):
        migrate.run_migrate("guest", "h", "ssh",
                            migrate.XlMigrateOptions(config=str(tmp_path / "no-such.cfg")),
                            xenstore=None)
    assert hooks == []
