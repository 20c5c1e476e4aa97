"""A command's options, built from its settings model (sparsetrt.settings): each field one option, its help, its
default and its spelling declared once there. The values come back as the validated model, with any refusal named
by the flag the user typed."""

from __future__ import annotations

import argparse

from sparsetrt.settings import (
    Settings,
    SettingsError,
    base_type,
    checked,
    choices_of,
    cli_extra,
    flag_of,
    nested_model,
    style_of,
    walk,
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its refusals as one `sparsetrt: error:` line (exit 2) instead of a usage block."""

    def error(self, message: str):
        raise SettingsError(f"{message} (see `{self.prog} --help`)")


def add_settings(parser: argparse.ArgumentParser, model: type[Settings]) -> None:
    """One option per command-line field of `model` (nested groups flattened, each under its own heading)."""
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    for path, info in walk(model):
        extra = cli_extra(info)
        if extra.get("cli") is False:
            continue
        owner = _group_model(model, path[:-1])
        title = (owner.__doc__ or "").strip().split("\n")[0].rstrip(".") if path[:-1] else ""
        target = parser if not title else groups.setdefault(path[:-1], parser.add_argument_group(title))
        _add_field(target, path, info)


def _group_model(model: type[Settings], path: tuple[str, ...]) -> type[Settings]:
    for name in path:
        model = nested_model(model.model_fields[name])
    return model


def _add_field(parser, path: tuple[str, ...], info) -> None:
    dest = ".".join(path)
    style = style_of(info)
    extra = cli_extra(info)
    choices = choices_of(info.annotation)
    metavar = extra.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else path[-1].upper())
    help_text = info.description or ""
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if style not in ("flag", "negate") and default not in (None, "", []):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text += f" (default: {shown})"
    help_text = help_text.replace("%", "%%")
    if style == "positional":
        parser.add_argument(dest, metavar=metavar or path[-1].upper(), help=help_text,
                            nargs=None if info.is_required() else "?", default=None)
        return
    flag = flag_of(path, info)
    if style in ("flag", "negate"):
        parser.add_argument(flag, dest=dest, action="store_const", const=style == "flag", default=None,
                            help=help_text)
        return
    kwargs = {"dest": dest, "default": None, "metavar": metavar, "help": help_text}
    if info.is_required():
        kwargs["required"] = True
    if style == "nargs":
        kwargs["nargs"] = "+" if _min_length(info) else "*"
    elif style == "repeat":
        kwargs["action"] = "append"
    parser.add_argument(flag, **kwargs)


def _min_length(info) -> int:
    return max((getattr(m, "min_length", 0) or 0 for m in info.metadata), default=0)


def settings_from(args: argparse.Namespace, model: type[Settings]):
    """The validated `model` from the parsed command line: the options given (text, converted by each field's
    type), the model's defaults for the rest."""
    data: dict = {}
    fields = dict(walk(model))
    for path, info in fields.items():
        value = getattr(args, ".".join(path), None)
        if value is None:
            continue
        if style_of(info) == "comma":
            value = [item.strip() for item in value.split(",") if item.strip()]
        kind = base_type(info.annotation)
        if kind in (int, float):  # numbers as numbers, so a refusal shows 0, not '0'
            value = [_number(v, kind) for v in value] if isinstance(value, list) else _number(value, kind)
        node = data
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return checked(model, data, lambda path: _flag(fields, path), strict=False)


def _number(text, kind):
    """`text` as an int or float when it is one (else the text, for the model to refuse by name)."""
    if not isinstance(text, str):
        return text
    try:
        return kind(text)
    except ValueError:
        return text


def _flag(fields: dict, path: tuple[str, ...]) -> str:
    info = fields.get(path)
    if info is None:
        return ""
    return path[-1].upper() if style_of(info) == "positional" else flag_of(path, info)
