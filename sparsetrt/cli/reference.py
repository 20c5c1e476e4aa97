"""docs/settings.md, generated from the settings models: every option of every command and every key of the
pipeline config, with its type, range and default (`make docs` writes it; a test keeps it current)."""

from __future__ import annotations

from typing import get_args, get_origin

import annotated_types

from sparsetrt.cli import runnable_commands
from sparsetrt.pipeline.config import PipelineConfig, config_name
from sparsetrt.settings import choices_of, cli_extra, flag_of, style_of, walk

HEADER = """# Settings reference

Generated from the settings models (`make docs`; `tests/test_settings.py` fails when it is stale). Every option is
declared once, in the stage's settings model: the command line, the pipeline config file and the Python API are
built from or checked against it. A value that does not fit is refused before any work with one line naming the
option as you wrote it (exit code 2); `--check` on any command validates everything and prints the plan without
writing anything.

Conventions: numbers must be finite (no NaN or infinity), text must be valid UTF-8, unknown config keys are
refused, and a config file's values keep their TOML/YAML types (a quoted number is text, not a number).
"""


def type_text(annotation) -> str:
    """An annotation in words: "integer", "list of number", "one of a, b"."""
    if choices := choices_of(annotation):
        text = "one of " + ", ".join(f"`{c}`" for c in choices)
        return f"list: {text}" if get_origin(annotation) is list else text
    origin, args = get_origin(annotation), [a for a in get_args(annotation) if a is not type(None)]
    if origin is list:
        return "list of " + (type_text(args[0]) if args else "values")
    if origin is dict:
        return "table"
    if args and len(args) < len(get_args(annotation)):  # X | None
        return type_text(args[0]) + " (optional)"
    if getattr(annotation, "__metadata__", None):
        return type_text(get_args(annotation)[0])
    return {int: "integer", float: "number", str: "text", bool: "true/false"}.get(annotation, str(annotation))


def range_text(info) -> str:
    parts = []
    metadata = list(info.metadata)
    for args in get_args(info.annotation):  # list[Annotated[int, Field(ge=1)]]: the items' bounds
        for inner in get_args(args)[1:] if getattr(args, "__metadata__", None) else ():
            metadata += list(getattr(inner, "metadata", [inner]))
    for m in metadata:
        for kind, sign in ((annotated_types.Ge, ">="), (annotated_types.Gt, ">"), (annotated_types.Le, "<="),
                           (annotated_types.Lt, "<")):
            if isinstance(m, kind):
                parts.append(f"{sign} {getattr(m, sign_field(kind))}")
        if isinstance(m, annotated_types.MinLen) and m.min_length:
            parts.append(f"at least {m.min_length} item(s)" if get_origin(info.annotation) is list else "not empty")
    return ", ".join(parts)


def sign_field(kind) -> str:
    return {annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le", annotated_types.Lt: "lt"}[kind]


def default_text(info, command_line: bool = False) -> str:
    if info.is_required():
        return "required"
    if command_line and style_of(info) in ("flag", "negate"):
        return "off"  # a flag: what it does happens only when it is given
    value = info.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "(none)"
    return "(none)" if value is None else f"{value}"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    lines = [HEADER, "## Commands", ""]
    for words, command in runnable_commands():
        lines += [f"### `sparsetrt {words}`", "", command.help, "",
                  "| option | type | range | default | what |", "|---|---|---|---|---|"]
        for path, info in walk(command.settings):
            if cli_extra(info).get("cli") is False:
                continue
            name = path[-1].upper() if style_of(info) == "positional" else flag_of(path, info)
            kind = "flag" if style_of(info) in ("flag", "negate") else type_text(info.annotation)
            lines.append(f"| `{name}` | {cell(kind)} | {cell(range_text(info))} | "
                         f"{cell(default_text(info, command_line=True))} | {cell(info.description or '')} |")
        lines.append("")
    lines += ["## Pipeline config (`sparsetrt run --config`)", "",
              "Sections are the stages' settings; `[engine]` is another spelling of `[build]`; `extends = \"other.toml\"` "
              "starts from another file.", "", "| key | type | range | default | what |", "|---|---|---|---|---|"]
    for path, info in walk(PipelineConfig):
        if cli_extra(info).get("config") is False:
            continue
        lines.append(f"| `{config_name(path)}` | {cell(type_text(info.annotation))} | {cell(range_text(info))} | "
                     f"{cell(default_text(info))} | {cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(markdown(), end="")


if __name__ == "__main__":
    main()
