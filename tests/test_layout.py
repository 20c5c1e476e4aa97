"""The layout's rules, checked on the source tree: packages listed for setuptools, imports that point one way,
a CLI that starts without the heavy libraries, every command's help."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# runtime rooms, lowest first: a module may import its own room and the rooms before it, never one after.
RUNTIME_LEVELS = {"generate": 0, "measure": 0, "deployables": 0, "backends": 0,
                  "parity": 1, "serve": 2, "adaptive": 3, "bench": 4}


def setuptools_config() -> tuple[list[str], dict[str, str]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config["package-dir"]


def module_files() -> dict[str, Path]:
    """Every installed module's dotted name -> its file, following the package-dir mapping."""
    _, dirs = setuptools_config()
    found = {}
    for package, folder in dirs.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found.setdefault(name.removesuffix(".__init__"), path)
    return found


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of everything `path` imports, at the top or inside functions (relative imports resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def runtime_room(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["sparsetrt", "runtime"] else None


def test_every_package_folder_is_listed_for_setuptools():
    """An unlisted sub-package is copied as data with only a warning: the wheel (and the images) would lack it."""
    packages, _ = setuptools_config()
    folders = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert folders - set(packages) == set(), "add these to [tool.setuptools] packages"
    for path in module_files().values():
        assert (path.parent / "__init__.py").is_file(), f"{path.parent} holds modules but no __init__.py"
    assert set(packages) - folders == set(), "listed packages without a folder"


def test_imports_point_one_way():
    violations = []
    for name, path in module_files().items():
        imports = {i for i in imported_modules(path, name) if i.startswith("sparsetrt.")}
        room = runtime_room(name)
        if name.startswith("sparsetrt.build"):
            violations += [f"{name} imports {i} (build/ never imports runtime/)" for i in imports if runtime_room(i)]
        if room is not None:
            level = RUNTIME_LEVELS[room]
            violations += [f"{name} ({room}) imports {i} ({runtime_room(i)})" for i in imports
                           if runtime_room(i) in RUNTIME_LEVELS and RUNTIME_LEVELS[runtime_room(i)] > level]
        if room != "bench" and not name.startswith("sparsetrt.cli"):
            violations += [f"{name} imports {i} (only the CLI and tests use runtime/bench)" for i in imports
                           if runtime_room(i) == "bench"]
    for helper in (ROOT / "tests").glob("*.py"):
        if not helper.name.startswith("test_"):  # support modules serve every test: they may not reach into benches
            imports = imported_modules(helper, helper.stem)
            violations += [f"tests/{helper.name} imports {i}" for i in imports if runtime_room(i) == "bench"]
    assert violations == []


def test_the_rule_catches_a_wrong_way_import(tmp_path):
    """The checker itself: a serve module importing an adaptive one, and build/ importing runtime/, are found."""
    wrong = tmp_path / "worker.py"
    wrong.write_text("def f():\n    from sparsetrt.runtime.adaptive.router import AdaptiveRunner\n")
    imports = imported_modules(wrong, "sparsetrt.runtime.serve.worker")
    assert "sparsetrt.runtime.adaptive.router" in imports
    assert RUNTIME_LEVELS[runtime_room("sparsetrt.runtime.adaptive.router")] > RUNTIME_LEVELS["serve"]
    relative = tmp_path / "engine.py"
    relative.write_text("from ..runtime.backends import base\n")
    assert "sparsetrt.runtime.backends.base" in imported_modules(relative, "sparsetrt.build.engine")


def test_cli_starts_without_torch_or_onnxruntime():
    code = ("import sys, sparsetrt.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def command_names() -> list[tuple[str, str]]:
    """(what a user may type, the command it runs): every name and alias."""
    from sparsetrt.cli import commands

    return [(name, c.name) for c in commands() for name in (c.name, *c.aliases)]


@pytest.mark.parametrize("name,command", command_names())
def test_every_command_has_help(name, command, capsys):
    from sparsetrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([name, "-h"])
    assert exit_info.value.code == 0
    assert f"usage: sparsetrt {command}" in capsys.readouterr().out


def test_a_command_whose_dependency_is_missing_is_listed_and_says_why(capsys, monkeypatch):
    import importlib.util

    from sparsetrt.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(SystemExit):
        main(["-h"])
    listing = " ".join(capsys.readouterr().out.split())
    assert "serve" in listing and "[unavailable: needs uvicorn" in listing
    assert main(["serve", "--model", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs uvicorn, which is not installed (pip install uvicorn)" in err
