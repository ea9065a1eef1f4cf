"""A simulated host for the test suite: xenstored, Xen and the agents, in one process.

A test tool, never a product path: nothing under ``xsproto/`` imports it
(tests/unit/test_sim_xenstore.py checks). ``xenstore`` and ``xen`` implement the
``xsproto.io`` Protocols, ``faults`` names the points where an agent can crash or be
overtaken, ``host`` drives the real watcher and device-model code over them, and
``semantics`` holds the rules the simulator claims of the real daemons, which
tests/lab/test_sim_semantics.py checks against them. See README.md.
"""
