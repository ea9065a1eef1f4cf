"""xsproto: negotiate a device model's extra guest pages through xenstore.

The device model asks, the toolstack decides and raises ``max_pages`` in Xen (the one
place the limit lives), and save/restore/migration carry the negotiated value ahead of
the libxc stream. The protocol core is sans-IO; I/O lives in thin adapters.
"""

__version__ = "0.1.0"
