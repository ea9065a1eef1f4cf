"""The lab's pure parts: command line, initramfs manifests and archive, configs."""

from __future__ import annotations

import gzip
import lzma
import re
import shlex
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.lab import attacker, cli, fetch, guests, initramfs, qemu

FILES = fetch.LabFiles(Path("/c/xen.elf"), Path("/c/vmlinuz"), Path("/c/dom0.gz"),
                       Path("/c/guest.gz"), Path("/c/vmlinux"))


def test_run_parses_command_after_double_dash() -> None:
    args = cli.build_parser().parse_args(
        ["run", "--xenstored", "ocaml", "--memory", "4096", "--", "xl", "list", "-l"])
    assert (args.xenstored, args.memory, args.argv) == ("ocaml", 4096, ["--", "xl", "list", "-l"])


def test_run_rejects_unknown_xenstored() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--xenstored", "go", "--", "true"])


def test_run_without_command_is_a_usage_error() -> None:
    assert cli.main(["run"]) == 2


def test_guest_parser() -> None:
    args = cli.build_parser().parse_args(["guest", "create", "g1", "--type", "pv"])
    assert (args.guest_verb, args.name, args.type, args.memory) == ("create", "g1", "pv", 128)


def test_dom0_manifest_loads_modules_in_order(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    mods = [tmp_path / "a.ko", tmp_path / "b.ko"]
    for m in mods:
        m.write_bytes(b"ko")
    entries = {e.path: e for e in initramfs.dom0_manifest(busybox, mods)}
    assert entries["modules.order"].data == b"a.ko\nb.ko"
    assert stat.S_ISREG(entries["init"].mode) and entries["init"].mode & 0o111
    assert entries["bin/sh"].target == "busybox"
    assert {"modules/a.ko", "modules/b.ko", "bin/switch_root"} <= entries.keys()


def test_newc_archive_layout() -> None:
    data = initramfs.newc_bytes([initramfs.directory("d"),
                                 initramfs.file("d/f", data=b"hello")])
    assert data.startswith(b"070701")
    assert b"d/f\0" in data and b"hello" in data
    assert b"TRAILER!!!\0" in data
    assert len(data) % 4 == 0


ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
def test_kernel_elf_is_the_bzimage_payload(compress: Callable[[bytes], bytes]) -> None:
    # A setup header that happens to hold both magics, the payload, then a trailer.
    bzimage = b"MZ\xfd7zXZ\x00\x1f\x8b\x08" + bytes(500) + compress(ELF) + b"\x00trailer"
    assert fetch.kernel_elf(bzimage) == ELF


def test_kernel_elf_refuses_a_bzimage_without_one() -> None:
    with pytest.raises(ValueError, match="no xz or gzip"):
        fetch.kernel_elf(b"MZ" + lzma.compress(b"not an ELF"))


def test_write_newc_is_gzip_and_atomic(tmp_path: Path) -> None:
    out = tmp_path / "i.gz"
    initramfs.write_newc([initramfs.file("x", data=b"1")], out)
    assert gzip.decompress(out.read_bytes()).startswith(b"070701")
    assert not list(tmp_path.glob("*.tmp"))


def test_qemu_argv_boots_xen_with_dom0_modules(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(qemu.BootConfig(FILES, tmp_path, memory_mb=4096, dom0_memory_mb=1024))
    assert argv[argv.index("-kernel") + 1] == "/c/xen.elf"
    assert argv[argv.index("-m") + 1] == "4096"
    assert "dom0_mem=1024M,max:1024M" in argv[argv.index("-append") + 1]
    kernel, initrd = argv[argv.index("-initrd") + 1].split(",")
    assert kernel.startswith("/c/vmlinuz ") and "xenlab.stage2=" in kernel
    assert initrd == "/c/dom0.gz"
    assert "-no-reboot" in argv and "tcg" in argv
    assert any(a.startswith(f"local,path={tmp_path},mount_tag=xenlab") for a in argv)


@pytest.mark.parametrize(("memory", "dom0", "xenstored"), [(1024, 1024, "c"), (3072, 1024, "x")])
def test_boot_config_rejects_bad_shapes(tmp_path: Path, memory: int, dom0: int,
                                        xenstored: str) -> None:
    with pytest.raises(ValueError):
        qemu.BootConfig(FILES, tmp_path, memory_mb=memory, dom0_memory_mb=dom0,
                        xenstored=xenstored)


def test_command_script_keeps_env_cwd_and_quoting() -> None:
    script = qemu.command_script(["echo", "a b", "$HOME"], "/work/x y",
                                 {"CI": "true", "PWD": "/elsewhere", "A-B": "skip"})
    lines = script.splitlines()
    assert "export CI=true" in lines
    assert not any("PWD" in line or "A-B" in line for line in lines)
    assert f"cd {shlex.quote('/work/x y')} || exit 125" in lines
    assert lines[-1] == "exec echo 'a b' '$HOME'"


def test_guest_config() -> None:
    text = guests.guest_config("g1", kind="pvh", memory_mb=128, files=FILES)
    assert 'type = "pvh"' in text and "memory = 128" in text
    assert 'kernel = "/c/vmlinux"' in text and 'ramdisk = "/c/guest.gz"' in text


@pytest.mark.parametrize(("name", "kind", "memory"),
                         [("g 1", "pvh", 128), ("g1", "hvm", 128), ("g1", "pv", 8), ("", "pv", 64)])
def test_guest_config_rejects_bad_input(name: str, kind: str, memory: int) -> None:
    with pytest.raises(ValueError):
        guests.guest_config(name, kind=kind, memory_mb=memory, files=FILES)


def test_hvm_config_is_paused_qemu_with_nic_roms() -> None:
    text = guests.hvm_config("h1", nics=2, device_model="/opt/bin/xsproto-qemu")
    for line in ('type = "hvm"', "memory = 128", 'vga = "stdvga"', "vnc = 0",
                 'serial = "pty"', 'device_model_version = "qemu-xen"',
                 'device_model_override = "/opt/bin/xsproto-qemu"'):
        assert line in text.splitlines()
    rom = f"e1000,romfile={guests.NIC_ROM}"
    assert f'device_model_args_hvm = ["-device", "{rom}", "-device", "{rom}"]' in text
    assert "device_model_override" not in guests.hvm_config("h1", nics=0)
    assert 'on_crash = "destroy"' in text.splitlines()
    kept = guests.hvm_config("h1", nics=0, after_fault="preserve").splitlines()
    assert 'on_crash = "preserve"' in kept and 'on_reboot = "preserve"' in kept


@pytest.mark.parametrize(("name", "nics"), [("a b", 1), ("h1", -1), ("h1", 17)])
def test_hvm_config_rejects_bad_input(name: str, nics: int) -> None:
    with pytest.raises(ValueError):
        guests.hvm_config(name, nics=nics)
    with pytest.raises(ValueError, match="restart"):
        guests.hvm_config("h1", nics=0, after_fault="restart")


def test_triple_faults_are_read_from_xens_console() -> None:
    dmesg = ("(XEN) d22v0 Triple fault - invoking HVM shutdown action 1\n"
             "(XEN) *** Dumping Dom22 vcpu#0 state: ***\n"
             "(XEN) CONTEXT: hvm guest (d14v0)\n"
             "(XEN) d105v1 Triple fault - invoking HVM shutdown action 1\n")
    assert guests.triple_faults_in(dmesg) == {22, 105}
    assert guests.triple_faults_in("(XEN) Freed 656kB init memory\n") == set()


LDD = """\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibxenstore.so.4 => /lib/x86_64-linux-gnu/libxenstore.so.4 (0x00007f0b1c0e3000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b1bf02000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0b1c10f000)
"""


def test_the_attackers_libraries_are_what_ldd_names() -> None:
    assert attacker.libraries_in(LDD) == [
        Path("/lib/x86_64-linux-gnu/libxenstore.so.4"), Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2")]


def test_attacker_manifest_carries_the_client_its_libraries_and_the_attack() -> None:
    libs = attacker.libraries_in(LDD)
    entries = attacker.manifest(Path("/usr/bin/xenstore"), libs)
    by_path = {e.path: e for e in entries}
    order = [e.path for e in entries]
    assert by_path["bin/xenstore"].source == Path("/usr/bin/xenstore")
    assert by_path["bin/xenstore-write"].target == "xenstore"
    assert by_path["lib/x86_64-linux-gnu/libc.so.6"].source == libs[1]
    for lib in ("lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"):
        assert stat.S_ISDIR(by_path[str(Path(lib).parent)].mode)
        assert order.index(str(Path(lib).parent)) < order.index(lib)
    assert order.index("lib") < order.index("lib/x86_64-linux-gnu")
    assert by_path["init"].data == attacker.ATTACK_INIT.encode()
    assert by_path["init"].mode & 0o111


def test_the_attack_script_is_valid_shell() -> None:
    subprocess.run(["sh", "-n"], input=attacker.ATTACK_INIT, text=True, check=True)


def test_the_attacks_console_lines_are_read_back() -> None:
    console = ("[    2.1] xen: console\r\n"
               "xsattack: self=5 other=7\r\n"
               "xsattack: write /libxl/5/extra-pages ERR EACCES\r\n"
               "xsattack: write /local/domain/5/device-model/5/extra-pages OK\n"
               "xsattack: perms /local/domain/5/device-model/7/extra-pages ERR EPERM\n"
               "[    9.0] random: crng init done\n"
               "xsattack: junk /local/domain/5/device-model ok=450 refused=50 seconds=3\n"
               "xsattack: write /local/domain/5/device-model/fill-12 ERR ENOSPC\n"
               "xsattack: filled /local/domain/5/device-model keys=12\n"
               "xsattack: rewrites rounds=9 own=9 other=9 seconds=4 stop=asked\n"
               "xsattack: done\n")
    log = attacker.read_log(console)
    assert log.answers == {
        ("write", "/libxl/5/extra-pages"): "ERR EACCES",
        ("write", "/local/domain/5/device-model/5/extra-pages"): "OK",
        ("perms", "/local/domain/5/device-model/7/extra-pages"): "ERR EPERM",
        ("write", "/local/domain/5/device-model/fill-12"): "ERR ENOSPC"}
    assert log.counts["junk /local/domain/5/device-model"] == {
        "ok": "450", "refused": "50", "seconds": "3"}
    assert log.counts["filled /local/domain/5/device-model"] == {"keys": "12"}
    assert log.counts["rewrites"]["stop"] == "asked"
    assert log.saw("done") and log.saw("self=5 other=7") and not log.saw("flood start")


def test_hidden_in_dom0_are_the_mounts_dom0_stage2_makes() -> None:
    script = qemu.STAGE2.read_text()
    points = set(re.findall(r"mount -t \S+ (?:-o \S+ )?\S+ (/\S*)", script))
    (looped,) = re.findall(r"for d in ([^;]+); do mount", script)
    points |= set(looped.split())
    outermost = {p for p in points if not any(p != q and p.startswith(q + "/") for q in points)}
    assert outermost == set(qemu.HIDDEN_IN_DOM0)


@pytest.mark.parametrize(("path", "mount"), [("/tmp/clone", "/tmp"), ("/var/lib/x", "/var/lib"),
                                             ("/var/libx", None), ("/work/x", None)])
def test_hidden_in_dom0(path: str, mount: str | None) -> None:
    assert qemu.hidden_in_dom0(Path(path)) == mount


def test_run_refuses_up_front_in_a_directory_dom0_cannot_see(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_fetch(*args: object) -> None:
        raise AssertionError("xenlab fetched before refusing")

    monkeypatch.setattr(fetch, "fetch", no_fetch)
    monkeypatch.chdir(tmp_path)  # pytest's tmp_path is under /tmp, like a clone there
    assert cli.main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert f"the working directory {tmp_path} is under /tmp" in err
    assert "Put the project elsewhere" in err
    # bootstrap's first lab step refuses too, before any download, for a cache dom0 can't see
    assert cli.main(["--cache", str(tmp_path / "cache"), "fetch"]) == 2
    assert f"the lab's cache {tmp_path / 'cache'} is under /tmp" in capsys.readouterr().err
