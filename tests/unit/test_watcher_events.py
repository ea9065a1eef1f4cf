"""The watcher's reading of watch events: one piece of work per thing asked, in order."""

from __future__ import annotations

from xsproto.agents.watcher import AREA_TOKEN, INTRODUCE_TOKEN, RELEASE_TOKEN, Work, works_in

AREA = "/local/domain/0/device-model/7/extra-pages"


def test_a_request_written_and_given_permissions_is_one_piece_of_work() -> None:
    batch = [(AREA, AREA_TOKEN), (AREA, AREA_TOKEN)]
    assert works_in(batch) == [Work("request", 0, 7)]


def test_order_is_kept_and_each_thing_is_done_once() -> None:
    batch = [("@releaseDomain", RELEASE_TOKEN), (AREA, AREA_TOKEN),
             ("/local/domain/3/device-model/9/extra-pages", AREA_TOKEN),
             ("@releaseDomain", RELEASE_TOKEN), ("@introduceDomain", INTRODUCE_TOKEN)]
    assert works_in(batch) == [Work("release"), Work("request", 0, 7), Work("request", 3, 9),
                               Work("introduce")]
    assert [w.path for w in works_in(batch)][:2] == ["@releaseDomain", AREA]


def test_other_nodes_and_unknown_tokens_ask_for_nothing() -> None:
    batch = [("/local/domain/0/device-model/7/state", AREA_TOKEN),
             ("/local/domain/0/device-model", AREA_TOKEN),
             (f"{AREA}/pages", AREA_TOKEN),
             (f"{AREA}/request-id/x", AREA_TOKEN),
             ("/local/domain/0/device-model/7/extra-pages-x", AREA_TOKEN),
             (AREA, "someone-else")]
    assert works_in(batch) == []
