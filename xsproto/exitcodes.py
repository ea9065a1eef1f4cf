"""Exit statuses of the ``xsproto`` command that scripts can rely on."""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # an operation failed (xenstore, hypervisor, a bad image, ...)
    USAGE = 2  # bad command line (argparse's own status)
    REJECTED = 3  # the toolstack rejected the request; the reason is on stderr
    TIMEOUT = 4  # no decision arrived in time
    DRIFT = 5  # status: Xen's limit is not what a record says is in force (reconcile)
