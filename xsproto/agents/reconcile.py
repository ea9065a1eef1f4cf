"""``xsproto reconcile``: settle drift by hand, as the watcher does on its own (an admin's
``xl mem-max`` left Xen's limit different from the recorded base + granted)."""

from __future__ import annotations

import json
import sys

from xsproto import fields, paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.watcher import Watcher, load_policy
from xsproto.exitcodes import Exit
from xsproto.outputs import ReconcileOutput, Settled
from xsproto.policy import OnDrift


def run(domid: int | None, action: str | None, *, policy_file: str | None, as_json: bool,
        xenstore: str | None) -> int:
    policy = load_policy(policy_file)
    how = OnDrift(action) if action else policy.on_drift
    with Xenstore(xenstore) as xs:
        watcher = Watcher(xs, Hypervisor(), policy)
        domids = [domid] if domid is not None else xenstore_records.domids_under(
            xs, paths.DECISION_ROOT)
        done = {d: watcher.settle_drift(d, how) for d in domids}
        left = [d for d in domids if watcher.drifted(d)]
    settled = {d: what for d, what in done.items() if what is not None}
    if as_json:
        print(json.dumps(fields.dump(ReconcileOutput(action=how, settled=tuple(
            Settled(domid=d, action=OnDrift(what)) for d, what in settled.items())))))
    else:
        for d, what in settled.items():
            print(f"domain {d}: {'reapplied the record' if what == 'reapply' else 'adopted'}"
                  f" ({paths.decision_node(d)})")
        if not settled and not left:
            print("no drift")
    for d in left:  # e.g. the record moved on while it was being adopted: run it again
        print(f"xsproto: domain {d}: Xen's limit still differs from the record "
              f"({paths.decision_node(d)})", file=sys.stderr)
    return Exit.DRIFT if left else Exit.OK
