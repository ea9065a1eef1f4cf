"""``xsproto status --follow``: which areas it watches, against the simulated xenstored
(which, like both real daemons, refuses a watch registered twice)."""

from __future__ import annotations

from tests.sim.xenstore import Store
from xsproto import paths
from xsproto.agents.status import FOLLOW_TOKEN, watch_new_areas


def test_areas_are_watched_once_each_across_rounds() -> None:
    """The lab's follower died on its second round: dom0's area was watched again (EEXIST)."""
    store = Store()
    xs = store.connect(0)
    xs.write(paths.dm_domid_path(5), b"7")
    xs.write("/local/domain/7/domid", b"7")
    watched: set[int] = set()
    watch_new_areas(xs, watched)
    watch_new_areas(xs, watched)
    assert watched == {0, 7}
    assert sorted(xs.watches) == [(paths.device_model_area(0), FOLLOW_TOKEN),
                                  (paths.device_model_area(7), FOLLOW_TOKEN)]
