"""Path builders and the strict path parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xsproto import paths
from xsproto.errors import ProtocolError
from xsproto.paths import DecisionPath, RequestPath

domids = st.integers(min_value=0, max_value=0x7FEF)


def test_builders() -> None:
    assert paths.request_node(0, 5) == "/local/domain/0/device-model/5/extra-pages"
    assert paths.request_node(7, 5) == "/local/domain/7/device-model/5/extra-pages"
    assert paths.decision_node(5) == "/libxl/5/extra-pages"
    assert paths.dm_domid_path(5) == "/local/domain/5/image/device-model-domid"


@pytest.mark.parametrize("bad", [-1, 0x7FF0, True, 1.0, "1"])
def test_builders_reject_non_domids(bad: object) -> None:
    with pytest.raises(ValueError):
        paths.decision_node(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        paths.request_node(0, bad)  # type: ignore[arg-type]


def test_decision_permissions() -> None:
    assert paths.decision_permissions(0) == ("n0",)
    assert paths.decision_permissions(3) == ("n0", "r3")


@given(domids, domids)
def test_request_paths_round_trip(m: int, d: int) -> None:
    path = paths.request_node(m, d)
    assert paths.parse(path) == RequestPath(m, d)
    assert paths.parse(path.encode()) == RequestPath(m, d)


@given(domids)
def test_decision_paths_round_trip(d: int) -> None:
    assert paths.parse(paths.decision_node(d)) == DecisionPath(d)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/libxl/5",
        "/libxl/5/extra-pages/",
        "/libxl/5/extra-pages/pages",
        "/libxl/5/extra-pages/version",
        "/libxl/5/extra-pages/state/x",
        "/libxl/05/extra-pages",
        "/libxl/-5/extra-pages",
        "/libxl/+5/extra-pages",
        "/libxl/ 5/extra-pages",
        "/libxl/32752/extra-pages",
        "/libxl/\u0665/extra-pages",
        "libxl/5/extra-pages",
        "/libxl//extra-pages",
        "/local/domain/0/device-model/5/extra-pages/state",
        "/local/domain/0/device-model/5/extra-pages/request-id",
        "/local/domain/0/device-model/5/extra-pages/x/y",
        "/local/domain/0/device-model/5/extra-pages/Pages",
        "/local/domain/0/device-model/5",
        "/local/domain/x/device-model/5/extra-pages",
        "/local/domain/0/device-model/5/extra-pages/pages\x00",
        "/local/domain/5/image/device-model-domid",
        "/libxl/5/extra-pages" + "/x" * 2000,
    ],
)
def test_parse_rejects(path: str) -> None:
    with pytest.raises(ProtocolError):
        paths.parse(path)


def test_parse_rejects_non_ascii_bytes() -> None:
    with pytest.raises(ProtocolError, match="not ASCII"):
        paths.parse(b"/libxl/\xff/extra-pages")


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_protocol_error(path: str) -> None:
    try:
        parsed = paths.parse(path)
    except ProtocolError:
        return
    rebuilt = (
        paths.request_node(parsed.dm_domid, parsed.domid)
        if isinstance(parsed, RequestPath)
        else paths.decision_node(parsed.domid)
    )
    assert path == rebuilt
