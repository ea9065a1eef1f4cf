"""The hypervisor adapter: Xen's own ``xen.lowlevel.xc`` for reading and setting limits.

Xen keeps the limit; this module only reads it and sets it, in pages (x86: 4 KiB).
"""

from __future__ import annotations

import errno
from typing import Any

from xsproto.errors import HypervisorError
from xsproto.negotiation import DomainInfo

PAGE_KB = 4


def _xc() -> Any:
    try:
        from xen.lowlevel import xc
    except ImportError as e:
        raise HypervisorError("xen.lowlevel.xc is not importable: install xen-utils-4.17 and "
                              "put /usr/lib/xen-4.17/lib/python on the path") from e
    try:
        return xc.xc()
    except xc.Error as e:
        raise HypervisorError(f"cannot open the hypervisor interface: {e}") from e


class Hypervisor:
    """A handle on Xen's domain control interface (needs dom0 or a privileged domain)."""

    def __init__(self, xc: Any = None) -> None:
        """``xc``: an ``xen.lowlevel.xc.xc()`` handle; one is opened when none is given."""
        self._xc = _xc() if xc is None else xc

    def domain(self, domid: int) -> DomainInfo:
        """What Xen says about ``domid`` now; ``exists`` is False when there is none."""
        try:
            infos: list[dict[str, Any]] = self._xc.domain_getinfo(domid, 1)
        except Exception as e:  # xc.Error: ESRCH when no domain has an id >= domid
            if e.args[:1] == (errno.ESRCH,):
                return DomainInfo(domid=domid, exists=False)
            raise HypervisorError(f"cannot read domain info: {e}", domid=domid) from e
        if not infos or infos[0]["domid"] != domid:
            return DomainInfo(domid=domid, exists=False)
        info = infos[0]
        return DomainInfo(
            domid=domid,
            exists=True,
            # Only dying is dead. A shut-down domain may be suspended for ``xl save -c``,
            # a checkpoint or a migration that fails and resumes it: its grant stands.
            dying=bool(info["dying"]),
            max_pages=int(info["maxmem_kb"]) // PAGE_KB,
            tot_pages=int(info["mem_kb"]) // PAGE_KB,
        )

    def domids(self) -> list[int]:
        """The domains that are not dying. Xen can keep a dying domain for a while (until
        dom0 drops its last mapping), but it never runs again, and xenstored fires
        ``@releaseDomain`` once, when it first sees it dying: count it as gone then."""
        return [int(i["domid"]) for i in self._xc.domain_getinfo(0, 65536) if not i["dying"]]

    def set_max_pages(self, domid: int, pages: int) -> None:
        try:
            self._xc.domain_setmaxmem(domid, pages * PAGE_KB)
        except Exception as e:  # xc.Error, which is not importable at type-check time
            raise HypervisorError(f"cannot set max_pages to {pages}: {e}", domid=domid) from e

    def free_pages(self) -> int:
        physinfo: dict[str, Any] = self._xc.physinfo()
        return int(physinfo["free_memory"]) // PAGE_KB
