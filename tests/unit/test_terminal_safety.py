"""Text a guest, its device model or an image carries is shown escaped, never obeyed by
the admin's terminal (issue 7: status and inspect-image printed it raw)."""

from __future__ import annotations

import io

from xsproto.agents import inspect_image, status
from xsproto.outputs import DomainStatus, StatusOutput
from xsproto.records import DecisionState, Origin
from xsproto.stream import summarize, synthetic
from xsproto.values import escaped

ESCAPE = "\x1b]0;owned\x07\x1b[2J"


def test_escaped_keeps_printable_ascii_and_shows_the_rest() -> None:
    assert escaped("web-1 ok") == "web-1 ok"
    assert escaped(ESCAPE) == "\\x1b]0;owned\\x07\\x1b[2J"
    assert escaped(b"a\\b\xff") == "a\\\\b\\xff"
    assert escaped("\u2603") == "\\u2603"


def test_status_table_escapes_what_peers_wrote() -> None:
    row = DomainStatus(
        domid=5, name=f"web{ESCAPE}", dm_domid=0, requested_pages=None, request_id=None,
        pending=False, state=DecisionState.REJECTED, origin=Origin.REQUEST, base_pages=1,
        granted_pages=0, recorded_max_pages=1, xen_max_pages=1, xen_tot_pages=1,
        drift=False, problem=f"request: pages: not a canonical decimal: {ESCAPE}")
    text = status.render(StatusOutput(watcher=None, domains=(row,)))
    assert "\x1b" not in text and "\x07" not in text
    assert "web\\x1b]0;o" in text


def test_inspect_image_escapes_the_config_name() -> None:
    config = synthetic.domain_config()
    config["c_info"]["name"] = f"guest{ESCAPE}"
    text = inspect_image.render(summarize(io.BytesIO(synthetic.build_image(config=config))))
    assert "\x1b" not in text and "guest\\x1b" in text
