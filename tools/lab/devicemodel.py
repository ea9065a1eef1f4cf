"""A test device model: populates extra guest pages the way QEMU does for option ROMs.

QEMU calls libxenctrl's ``xc_domain_populate_physmap_exact``; Xen refuses once the
domain would exceed its max_pages. The Python binding has no populate call, so this
uses ctypes on libxenctrl itself. Runs in the lab's dom0 only.
"""

from __future__ import annotations

import ctypes

LIBXENCTRL = "libxenctrl.so.4.17"
#: Guest frame where extra pages go: far above a small test guest's RAM, below 4 GiB.
DEFAULT_START_PFN = 0x80000


class PopulateError(OSError):
    """Xen refused to populate the pages (errno says why: ENOMEM/EBUSY when over the limit)."""


def populate(domid: int, count: int, *, start_pfn: int = DEFAULT_START_PFN) -> None:
    """Populate ``count`` 4 KiB pages at ``start_pfn``.. in ``domid``, all or nothing."""
    lib = ctypes.CDLL(LIBXENCTRL, use_errno=True)
    lib.xc_interface_open.restype = ctypes.c_void_p
    lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    lib.xc_interface_close.argtypes = [ctypes.c_void_p]
    lib.xc_domain_populate_physmap_exact.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_ulong, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_ulong)]
    xch = lib.xc_interface_open(None, None, 0)
    if not xch:
        raise PopulateError(ctypes.get_errno(), "cannot open libxenctrl")
    try:
        pfns = (ctypes.c_ulong * count)(*range(start_pfn, start_pfn + count))
        rc = lib.xc_domain_populate_physmap_exact(xch, domid, count, 0, 0, pfns)
        if rc != 0:
            err = ctypes.get_errno()
            raise PopulateError(err, f"domain {domid}: populating {count} pages at pfn "
                                     f"{start_pfn:#x} failed")
    finally:
        lib.xc_interface_close(xch)
