"""``xsproto reconcile``: settle drift by hand, as the watcher does on its own (an admin's
``xl mem-max`` left Xen's limit different from the recorded base + granted)."""

from __future__ import annotations

import json

from xsproto import paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.watcher import Watcher, load_policy
from xsproto.exitcodes import Exit
from xsproto.policy import OnDrift

FORMAT = 1
"""Version of the ``--json`` output (schemas/reconcile-output.schema.json)."""


def run(domid: int | None, action: str | None, *, policy_file: str | None, as_json: bool,
        xenstore: str | None) -> int:
    policy = load_policy(policy_file)
    how = OnDrift(action) if action else policy.on_drift
    with Xenstore(xenstore) as xs:
        watcher = Watcher(xs, Hypervisor(), policy)
        domids = [domid] if domid is not None else xenstore_records.domids_under(
            xs, paths.DECISION_ROOT)
        done = {d: watcher.settle_drift(d, how) for d in domids}
    settled = {d: what for d, what in done.items() if what is not None}
    if as_json:
        print(json.dumps({"format": FORMAT, "action": how.value,
                          "settled": [{"domid": d, "action": what}
                                      for d, what in settled.items()]}))
    else:
        for d, what in settled.items():
            print(f"domain {d}: {'reapplied the record' if what == 'reapply' else 'adopted'}"
                  f" ({paths.decision_dir(d)})")
        if not settled:
            print("no drift")
    return Exit.OK
