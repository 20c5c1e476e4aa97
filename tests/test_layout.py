"""The layout's rules, checked on the source tree: packages listed for setuptools, imports at the top that point
one way, a CLI that starts without the heavy libraries, every command's help, package docstrings that list what
the package holds."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The layers, lowest first: a module may import its own layer and the layers before it, never one after.
# The core (errors, artifacts, layout, models, architectures, checkpoint, modules, memory, onnx_io, lazy) is what
# every stage shares; the stages run downstream; the orchestrators (the pipeline runner and config, variant
# building) and the CLI sit above everything and nothing imports them.
LAYERS = ("core", "calibration", "prune", "export", "build", "runtime", "pipeline", "cli")
# runtime rooms, lowest first: a module may import its own room and the rooms before it, never one after.
RUNTIME_LEVELS = {"settings": 0, "generate": 0, "measure": 0, "deployables": 0, "backends": 0,
                  "parity": 1, "prepare": 1, "serve": 2, "adaptive": 3, "bench": 4}
# Imports that stay inside a function, each for a reason its comment gives: importing is the availability test
# (TensorRT's PyPI stub raises while fetching libraries), a warning filter around the import, or an optional
# plotting library whose absence only skips plots. Anything else goes at the top (or through lazy_import).
LATE_IMPORTS = {
    "sparsetrt.build": {"tensorrt", "tensorrt_rtx"},
    "sparsetrt.export.quantize": {"modelopt.torch.quantization"},
    "sparsetrt.artifacts": {"matplotlib", "matplotlib.pyplot"},
}


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


def _imports(path: Path, module: str):
    """(absolute name, at the top?) of everything `path` imports: import statements (relative ones resolved) and
    lazy_import("...") calls, which name a module at the top and load it on first use."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = set()

    def mark(body):
        for node in body:
            top.add(id(node))
            if isinstance(node, (ast.If, ast.Try)):
                for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                              *(h.body for h in getattr(node, "handlers", []))):
                    mark(block)
            if isinstance(node, (ast.Assign, ast.Expr)):
                top.update(id(n) for n in ast.walk(node))

    mark(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base, id(node) in top
            for alias in node.names:
                yield f"{base}.{alias.name}", id(node) in top
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_import" and node.args
              and isinstance(node.args[0], ast.Constant)):
            yield node.args[0].value, id(node) in top


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of everything `path` imports, at the top or inside functions."""
    return {name for name, _ in _imports(path, module)}


def layer(name: str) -> str:
    """The layer of a first-party module name."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def runtime_room(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["sparsetrt", "runtime"] else None


def first_party(imports) -> set[str]:
    return {i for i in imports if i == "sparsetrt" or i.startswith("sparsetrt.")}


def violations_of(name: str, imports: set[str]) -> list[str]:
    """What `name` importing `imports` breaks (empty when it keeps every rule)."""
    found = []
    mine = LAYERS.index(layer(name))
    for target in first_party(imports):
        if target == "sparsetrt":  # the package itself: __version__ and the error type
            continue
        if LAYERS.index(layer(target)) > mine:
            found.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
        room, theirs = runtime_room(name), runtime_room(target)
        if room in RUNTIME_LEVELS and theirs in RUNTIME_LEVELS and RUNTIME_LEVELS[theirs] > RUNTIME_LEVELS[room]:
            found.append(f"{name} ({room}) imports {target} ({theirs})")
        if theirs == "bench" and room != "bench" and layer(name) != "cli":
            found.append(f"{name} imports {target} (only the CLI and tests use runtime/bench)")
    return found


def test_every_package_folder_is_listed_for_setuptools():
    """An unlisted sub-package is copied as data with only a warning: the wheel (and the images) would lack it."""
    packages, _ = setuptools_config()
    folders = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert folders - set(packages) == set(), "add these to [tool.setuptools] packages"
    for path in module_files().values():
        assert (path.parent / "__init__.py").is_file(), f"{path.parent} holds modules but no __init__.py"
    assert set(packages) - folders == set(), "listed packages without a folder"


def test_imports_point_one_way():
    """core <- calibration <- prune <- export <- build <- runtime <- pipeline <- cli, and the runtime rooms in
    their order: a module imports its own layer and the ones before it (lazy imports count)."""
    violations = []
    for name, path in module_files().items():
        violations += violations_of(name, imported_modules(path, name))
    for helper in (ROOT / "tests").glob("*.py"):
        if not helper.name.startswith("test_"):  # support modules serve every test: they may not reach into benches
            imports = imported_modules(helper, helper.stem)
            violations += [f"tests/{helper.name} imports {i}" for i in imports if runtime_room(i) == "bench"]
    assert violations == []


def test_imports_sit_at_the_top():
    """Every first-party import at the top of its module (a module's header says what it uses); a library
    imported inside a function only where LATE_IMPORTS says why."""
    late = []
    for name, path in module_files().items():
        for imported, at_top in _imports(path, name):
            if at_top or imported.startswith("__future__"):
                continue
            allowed = LATE_IMPORTS.get(name, set())
            if imported.startswith("sparsetrt") or imported not in allowed and imported.rpartition(".")[0] not in allowed:
                late.append(f"{name} imports {imported} inside a function")
    assert late == []


def test_the_rules_catch_wrong_way_and_late_imports(tmp_path):
    """The checker itself: a serve module importing an adaptive one, export importing runtime, the core importing a
    stage (lazily too) and a first-party import inside a function are all found."""
    wrong = tmp_path / "worker.py"
    wrong.write_text("def f():\n    from sparsetrt.runtime.adaptive.router import AdaptiveRunner\n")
    imports = imported_modules(wrong, "sparsetrt.runtime.serve.worker")
    assert violations_of("sparsetrt.runtime.serve.worker", imports)
    assert any(not top for _, top in _imports(wrong, "sparsetrt.runtime.serve.worker"))
    relative = tmp_path / "engine.py"
    relative.write_text("from ..runtime.backends import base\n")
    assert violations_of("sparsetrt.build.engine", imported_modules(relative, "sparsetrt.build.engine"))
    lazy = tmp_path / "models.py"
    lazy.write_text('from sparsetrt.lazy import lazy_import\nstage = lazy_import("sparsetrt.prune.stage")\n')
    assert violations_of("sparsetrt.models", imported_modules(lazy, "sparsetrt.models"))
    assert violations_of("sparsetrt.export.quant_stage", {"sparsetrt.runtime.parity.compare"})
    assert not violations_of("sparsetrt.cli.export", {"sparsetrt.runtime.parity.compare"})
    assert not violations_of("sparsetrt.pipeline.runner", {"sparsetrt.build.engine"})


def test_cli_starts_without_torch_or_onnxruntime():
    code = ("import sys, sparsetrt.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'transformers', 'modelopt', 'tensorrt_rtx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def command_names() -> list[tuple[str, str]]:
    """(what a user may type, the command it runs): every name and alias, groups' subcommands as 'bench perf'."""
    from sparsetrt.cli import runnable_commands

    pairs = []
    for words, command in runnable_commands():
        prefix = words.rpartition(" ")[0]
        pairs += [(f"{prefix} {name}".strip(), words) for name in (command.name, *command.aliases)]
    return pairs


@pytest.mark.parametrize("name,command", command_names())
def test_every_command_has_help(name, command, capsys):
    from sparsetrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*name.split(), "-h"])
    assert exit_info.value.code == 0
    assert f"usage: sparsetrt {command}" in capsys.readouterr().out


def test_help_lists_the_pipeline_first_and_the_benchmarks_as_one_line(capsys):
    from sparsetrt.cli import main

    with pytest.raises(SystemExit):
        main(["-h"])
    listing = capsys.readouterr().out
    commands = re.findall(r"^    (\S+)", listing, flags=re.M)
    assert commands[0] == "run" and commands[-1] == "bench"
    assert not any(c.startswith("bench-") for c in commands)


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
    assert main(["bench", "serve", "--model", "artifacts"]) == 2
    assert "`sparsetrt bench serve` needs uvicorn" in capsys.readouterr().err


def listed_names(docstring: str) -> list[str]:
    """The names a package docstring lists, one per line, two spaces in: '  name   what it is'."""
    return re.findall(r"^  ([a-z_]+)\s{2,}\S", docstring, flags=re.M)


PACKAGES_THAT_LIST_MODULES = ["sparsetrt.runtime.bench", "sparsetrt.runtime.serve", "sparsetrt.runtime.adaptive",
                              "sparsetrt.runtime.backends", "sparsetrt.runtime.parity", "sparsetrt.pipeline",
                              "sparsetrt.cli.bench"]


@pytest.mark.parametrize("package", PACKAGES_THAT_LIST_MODULES)
def test_package_docstrings_list_every_module(package):
    """A docstring that lists a package's modules lists each of them, and nothing else."""
    path = module_files()[package]
    modules = sorted(p.stem for p in path.parent.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert sorted(listed_names(ast.get_docstring(ast.parse(path.read_text()), clean=False))) == modules


def test_the_cli_docstring_lists_every_room_and_command():
    from sparsetrt.cli import ROOMS, commands

    doc = ast.get_docstring(ast.parse(module_files()["sparsetrt.cli"].read_text()), clean=False)
    rooms = dict(re.findall(r"^  ([a-z]+)\s{2,}(.+)$", doc, flags=re.M))
    assert list(rooms) == list(ROOMS)
    named = {w.strip("() ") for line in rooms.values() for w in re.split(r"[,\s]+", line) if w}
    assert {c.name for c in commands()} <= named
