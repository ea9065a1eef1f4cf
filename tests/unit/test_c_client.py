"""The C client on the host: its unit tests in both builds, the shape of what the build
makes, and the proof that QEMU's populate call binds to the shim (no Xen needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import clients

POPULATE = "xc_domain_populate_physmap_exact"
XENCTRL_VERSION = "VERS_4.17.0"


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    clients.require_build()


@pytest.mark.parametrize("build", sorted(clients.TEST_BINARIES))
def test_unit_tests_pass(build: str) -> None:
    done = clients.run_test_binary(build, "unit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("unit: ") and " 0 failed" in done.stdout


def needed(path: Path) -> set[str]:
    """The shared libraries an ELF file names (DT_NEEDED)."""
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.split()[:1] == ["NEEDED"]}


def test_the_test_binaries_carry_the_library_and_share_libxenstore() -> None:
    static, asan = (needed(clients.TEST_BINARIES[b]) for b in ("static", "asan"))
    assert "libxenstore.so.4" in static and "libxenstore.so.4" in asan
    assert not any(lib.startswith("libxsproto") for lib in static | asan)
    assert any(lib.startswith("libasan") for lib in asan)


def test_the_shim_exports_only_the_versioned_populate() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(clients.SHIM)],
                         capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in out.splitlines()} == {
        f"{POPULATE}@@{XENCTRL_VERSION}", XENCTRL_VERSION}


def bindings(argv: list[str]) -> str:
    """The dynamic linker's report of every symbol binding of ``argv`` (all bound at
    start: LD_BIND_NOW), for a run of ``-version``."""
    done = subprocess.run([*argv, "-version"], capture_output=True, text=True, check=True,
                          env={**os.environ, "LD_DEBUG": "bindings", "LD_BIND_NOW": "1"})
    assert "QEMU emulator version 7.2" in done.stdout
    return done.stderr


def binding(user: str, provider: str | Path) -> str:
    return (f"binding file {user} [0] to {provider} [0]: normal symbol `{POPULATE}' "
            f"[{XENCTRL_VERSION}]")


def test_qemu_binds_its_populate_call_to_the_shim_through_the_wrapper() -> None:
    stock = bindings([clients.REAL_QEMU])
    assert binding(clients.REAL_QEMU, "/lib/x86_64-linux-gnu/libxenctrl.so.4.17") in stock
    wrapped = bindings([str(clients.WRAPPER)])
    assert binding(clients.REAL_QEMU, clients.SHIM) in wrapped
