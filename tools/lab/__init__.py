"""The real-Xen lab: Debian's Xen 4.17, a dom0 running the host's own userland, in QEMU.

Only the standard library is used here, so the lab can boot before any virtualenv exists.
"""
