"""The hypervisor adapter: Xen's own ``xen.lowlevel.xc`` for reading and setting limits.

Xen keeps the limit; this module only reads it and sets it, in pages (x86: 4 KiB).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from xsproto.errors import HypervisorError
from xsproto.negotiation import DomainInfo

PAGE_KB = 4
SYSFS = Path("/sys/hypervisor")
DEBIAN_BINDINGS = "/usr/lib/xen-{version}/lib/python"
"""Where Debian's xen-utils-X.Y keeps Xen's Python bindings: a directory of Xen's own,
one per version, on no Python's default path."""


def debian_bindings(sysfs: Path = SYSFS) -> str | None:
    """The bindings directory of the running Xen's version, found the way Debian's
    ``xl`` finds its tools (/usr/lib/xen-common/bin/xen-utils-wrapper reads Xen's
    version in sysfs): bindings of another version do not speak this hypervisor's
    interface. None when no Xen runs."""
    try:
        version = ".".join((sysfs / "version" / part).read_text().strip()
                           for part in ("major", "minor"))
    except OSError:
        return None
    return DEBIAN_BINDINGS.format(version=version)


def import_xc(sysfs: Path = SYSFS) -> ModuleType:
    """``xen.lowlevel.xc``: from Python's path when a package put it there (as other
    distributions do), else from Debian's directory for the running Xen, added to the
    path here, so that no hand-made ``.pth`` file is needed."""
    try:
        from xen.lowlevel import xc
    except ImportError:
        where = debian_bindings(sysfs)
        if where is None:
            raise HypervisorError(f"xen.lowlevel.xc is not importable and {sysfs} shows no "
                                  "running Xen: run this in dom0 of a Xen host") from None
        if where not in sys.path:
            sys.path.append(where)  # after everything else: never shadows a package
        try:
            from xen.lowlevel import xc
        except ImportError as e:
            raise HypervisorError(f"xen.lowlevel.xc is not importable, not even from "
                                  f"{where}: install the xen-utils package of the running "
                                  "Xen") from e
    module: ModuleType = xc
    return module


def _xc() -> Any:
    xc = import_xc()
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
