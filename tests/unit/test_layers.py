"""The package's layers import only downward, and each adapter alone imports its library.

1. the pure core (``xsproto.*`` outside the packages below, ``xsproto.stream``);
2. the adapters (``xsproto.adapters``);
3. the programs (``xsproto.agents``);
4. the command line (``xsproto.cli``, ``xsproto.__main__``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xsproto.stream import synthetic

PACKAGE = Path(__file__).resolve().parents[2] / "xsproto"

#: A library and the one module allowed to import it.
ADAPTED = {"pyxs": "xsproto.adapters.xenstore", "xen": "xsproto.adapters.hypervisor",
           "subprocess": "xsproto.adapters.xl"}
#: Libraries the pure core never imports (they do I/O or start processes).
NOT_IN_CORE = {"pyxs", "xen", "subprocess", "socket", "ctypes", "select", "threading"}
#: Imported by every program that talks to xenstore or Xen: never by --help or
#: inspect-image, which pay Python's start-up and little more.
HEAVY = ("pyxs", "xen", "pydantic", "tenacity", "xsproto.adapters.xenstore",
         "xsproto.adapters.hypervisor")


def layer(module: str) -> int:
    if module in ("xsproto.cli", "xsproto.__main__"):
        return 4
    if module.startswith("xsproto.agents"):
        return 3
    if module.startswith("xsproto.adapters"):
        return 2
    return 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file, nested ones included."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # ``from xsproto import paths`` imports a module
                yield f"{base}.{alias.name}", node.lineno


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_tree_has_every_layer() -> None:
    assert {layer(module_name(p)) for p in sources()} == {1, 2, 3, 4}


@pytest.mark.parametrize("path", sources(), ids=lambda p: module_name(p))
def test_imports_go_only_downward(path: Path) -> None:
    me = module_name(path)
    known = {module_name(p) for p in sources()}
    for target, line in imports(path):
        if target in known:
            assert layer(target) <= layer(me), (
                f"{me}:{line} (layer {layer(me)}) imports {target} (layer {layer(target)})")


@pytest.mark.parametrize("path", sources(), ids=lambda p: module_name(p))
def test_each_library_is_imported_by_its_adapter_only(path: Path) -> None:
    me = module_name(path)
    for target, line in imports(path):
        top = target.split(".")[0]
        if top in ADAPTED:
            assert me == ADAPTED[top], f"{me}:{line} imports {target}; only {ADAPTED[top]} may"
        if layer(me) == 1:
            assert top not in NOT_IN_CORE, f"{me}:{line}: the pure core imports {target}"


def test_nothing_installs_a_generic_top_level_name() -> None:
    setup = (PACKAGE.parent / "setup.cfg").read_text(encoding="utf-8")
    include = setup.split("[options.packages.find]")[1].split("[")[0]
    assert include.split() == ["include", "=", "xsproto", "xsproto.*"]


def _modules_after(*argv: str) -> set[str]:
    """The modules a real ``xsproto`` run has imported by the time it exits."""
    code = ("import sys\nfrom xsproto.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=True)
    return set(out.stderr.split())


@pytest.mark.parametrize("argv", [["--help"], ["save", "--help"], ["--version"]],
                         ids=" ".join)
def test_help_imports_only_the_command_line(argv: list[str]) -> None:
    loaded = _modules_after(*argv)
    assert not [m for m in loaded if m.startswith(HEAVY)]
    assert not [m for m in loaded if m.startswith(("xsproto.agents", "xsproto.adapters"))]


def test_inspect_image_needs_no_xenstore_or_hypervisor(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(synthetic.build_image())
    loaded = _modules_after("inspect-image", str(image))
    assert "xsproto.agents.inspect_image" in loaded
    assert not [m for m in loaded if m.startswith(HEAVY)]
    # Its text output needs neither the JSON documents' declarations nor logging (a
    # third of its start-up, measured by tools/bench_startup.py).
    assert not loaded & {"xsproto.outputs", "xsproto.policy", "xsproto.logs", "logging"}
    assert "xsproto.outputs" in _modules_after("inspect-image", "--json", str(image))
