"""The C client's build and installation, for the tests that run them.

``tools/bootstrap`` builds ``clients/c`` and installs it into the virtualenv (``make
install PREFIX=.venv``): the wrapper ``.venv/bin/xsproto-qemu`` beside ``xsproto``, and
the shim it preloads. The tests run what it built; they build nothing themselves (in the
lab's dom0 nothing written outlives the lab).
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "c"
BUILD = CLIENT / "build"
TEST_BINARIES = {"static": BUILD / "xsproto-test", "asan": BUILD / "asan" / "xsproto-test"}
"""The C test binary, statically linked, and its AddressSanitizer build."""
VENV = Path(sys.executable).parent.parent
WRAPPER = VENV / "bin" / "xsproto-qemu"
SHIM = VENV / "lib" / "xsproto" / "xsproto-qemu-shim.so"
REAL_QEMU = "/usr/libexec/xen-qemu-system-i386"
ASAN_OPTIONS = "detect_leaks=1:halt_on_error=1"


def require_build() -> None:
    """Fail unless the C build is current and installed where the tests expect it."""
    current = subprocess.run(["make", "-q", "-C", str(CLIENT), "all"], capture_output=True)
    if current.returncode != 0 or not SHIM.exists() or not filecmp.cmp(
            SHIM, BUILD / SHIM.name, shallow=False):
        pytest.fail("clients/c is not built, out of date or not installed: run tools/bootstrap")


def run_test_binary(build: str, *args: str | int,
                    timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``xsproto-test ARGS`` of one build (``static`` or ``asan``)."""
    return subprocess.run([str(TEST_BINARIES[build]), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "ASAN_OPTIONS": ASAN_OPTIONS})
