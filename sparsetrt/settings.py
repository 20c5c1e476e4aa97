"""Settings: every option of every stage declared once — its type, range, default and help — as a pydantic model.

The CLI builds each command's parser from its model (sparsetrt.cli.options), the pipeline config file validates
each section against the stage's model (sparsetrt.pipeline.config), and the Python API takes the model. A value
that does not fit is refused before any work with one line that names the option the way the user wrote it:
`--calib-samples` on the command line, `[calibration] samples` in a config file.

Conventions: strict types in files and code (a string is not a number, a number is not a boolean; the command
line's text is converted by the field's type), finite floats only, unknown keys refused. `option(...)` declares a
field with its help and how the command line spells it. A cross-field rule raises ValueError naming fields with
`named("awq")`: each is filled in with the option as the user wrote it. The groups
several commands share (model source, output, placement, progress) are one model each, here; the calibration
group lives with calibration.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sparsetrt.errors import SparsetrtError

# How the command line spells a field (option(style=...)):
#   flag      a bool: --name sets true          negate   a bool defaulting to true: --no-name sets false
#   value     one value                          nargs    a list: --name A B C          comma  a list: --name A,B,C
#   repeat    a list: --name A --name B          positional: the bare argument
STYLES = ("flag", "negate", "value", "nargs", "comma", "repeat", "positional")


class Settings(BaseModel):
    """The base of every settings model."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True,
                              validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def tuple_as_list(cls, value):
        """A tuple is as good a sequence as a list (code passes both; files and the command line give lists)."""
        return list(value) if isinstance(value, tuple) else value

    @field_validator("*")
    @classmethod
    def encodable_text(cls, value):
        """Text must be valid Unicode: a lone surrogate (bytes that were not UTF-8 on the command line, or "\\udfff"
        in JSON) would fail later in a tokenizer, a file name or a JSON writer, far from the option that brought it."""
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("must be valid UTF-8 text (it holds bytes that are not)") from None
                if "\x00" in item:  # no file name, argument or tokenizer takes one
                    raise ValueError("must not hold a NUL character")
        return value

    def config_dict(self) -> dict:
        """The values a config file or manifest records (command-line-only fields left out)."""
        return {name: (value.config_dict() if isinstance(value := getattr(self, name), Settings) else
                       _plain(value))
                for name, info in type(self).model_fields.items() if cli_extra(info).get("config", True)}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def option(default: Any = ..., help: str = "", *, flag: str | None = None, style: str | None = None,
           metavar: str | None = None, cli: bool = True, config: bool = True, **constraints) -> Any:
    """A settings field (`default`: a value, or a settings class for a nested group). `help`: for --help and the
    reference page; `flag`: the command line's spelling when it is
    not --FIELD-NAME; `style`: how the command line writes it (STYLES; default from the type); `cli=False`: config
    files and code only; `config=False`: the command line only (e.g. --no-progress); `constraints`: pydantic's
    (ge, gt, le, lt, min_length, ...)."""
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown option style {style}")
    extra = {"flag": flag, "style": style, "metavar": metavar, "cli": cli, "config": config}
    extra = {k: v for k, v in extra.items() if v is not None and v is not True}
    if default is ...:
        return Field(description=help, json_schema_extra=extra or None, **constraints)
    if isinstance(default, type) and issubclass(default, BaseModel):  # a nested group: its defaults, made when needed
        return Field(default_factory=default, description=help, json_schema_extra=extra or None, **constraints)
    factory = isinstance(default, (list, BaseModel))  # each instance gets its own copy
    return Field(default_factory=(lambda d=default: copy.deepcopy(d)) if factory else None,
                 **({} if factory else {"default": default}),
                 description=help, json_schema_extra=extra or None, **constraints)


def cli_extra(info) -> dict:
    return dict(info.json_schema_extra or {})


def nested_model(info) -> type[Settings] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Settings) else None


def walk(model: type[Settings], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, FieldInfo) of every leaf field of `model`, nested groups flattened, in declaration order."""
    for name, info in model.model_fields.items():
        inner = nested_model(info)
        if inner is not None:
            yield from walk(inner, path + (name,))
        else:
            yield path + (name,), info


def style_of(info) -> str:
    """How the command line writes the field (see STYLES)."""
    declared = cli_extra(info).get("style")
    if declared:
        return declared
    if base_type(info.annotation) is bool:
        return "negate" if info.default is True else "flag"
    return "nargs" if get_origin(info.annotation) is list else "value"


def flag_of(path: tuple[str, ...], info) -> str:
    """The command line's spelling of a field: its declared flag, else --LAST-NAME."""
    return cli_extra(info).get("flag") or "--" + ("no-" if style_of(info) == "negate" else "") + \
        path[-1].replace("_", "-")


def base_type(annotation) -> Any:
    """int for int, list[int] and int | None; str for a Literal of strings; the annotation otherwise."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return type(args[0])
    if get_origin(annotation) in (list, tuple) or (args and type(None) in get_args(annotation)):
        return base_type(args[0])
    return annotation


def choices_of(annotation) -> tuple | None:
    """The values a Literal (or a list of one) allows."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    args = get_args(annotation)
    return choices_of(args[0]) if get_origin(annotation) in (list, tuple) and args else None


class SettingsError(SparsetrtError):
    """A value that does not fit its option, named as the user wrote it."""


def describe_error(error: dict) -> str:
    """One pydantic error, in the words this project uses for bad input."""
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    shown = _shown(value)
    words = {
        "int_type": f"must be an integer, not {shown}", "int_parsing": f"must be an integer, not {shown}",
        "int_from_float": f"must be an integer, not {shown}",
        "float_type": f"must be a number, not {shown}", "float_parsing": f"must be a number, not {shown}",
        "finite_number": f"must be a finite number, not {shown}",
        "bool_type": f"must be true or false, not {shown}", "bool_parsing": f"must be true or false, not {shown}",
        "string_type": f"must be text, not {shown}", "list_type": f"must be a list, not {shown}",
        "model_type": f"must be a table/section, not {shown}", "model_attributes_type":
        f"must be a table/section, not {shown}", "dict_type": f"must be a table/section, not {shown}",
        "extra_forbidden": "is not an option here", "missing": "is required",
        "greater_than_equal": f"must be >= {_bound(context.get('ge'))}, not {shown}",
        "greater_than": f"must be > {_bound(context.get('gt'))}, not {shown}",
        "less_than_equal": f"must be <= {_bound(context.get('le'))}, not {shown}",
        "less_than": f"must be < {_bound(context.get('lt'))}, not {shown}",
        "too_short": f"needs at least {context.get('min_length')} item(s), not {shown}",
        "too_long": f"takes at most {context.get('max_length')} item(s)",
        "string_too_short": "must not be empty", "string_too_long":
        f"must be at most {context.get('max_length')} characters",
        "literal_error": f"must be one of {context.get('expected', '?')}, not {shown}",
        "string_unicode": f"must be valid UTF-8 text, not {shown}",
    }
    if kind in words:
        return words[kind]
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[:1].lower() + message[1:]


def _bound(value) -> str:
    """0.0 -> "0", 1e6 -> "1000000", 0.5 -> "0.5"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _shown(value) -> str:
    text = repr(value)
    if isinstance(value, (dict, list)) and len(text) > 60:
        return type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def checked(model: type[Settings], data: Any, name_of: Callable[[tuple[str, ...]], str], strict: bool = True):
    """`model` built from `data`, or a SettingsError naming the first bad value: `name_of(path)` turns a field path
    (a tuple of field names; () for the whole model) into the option as the user wrote it. `strict=False`: text
    from the command line, converted by each field's type."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise SettingsError(first_error(model, exc, name_of)) from None


def first_error(model: type[Settings], exc: ValidationError, name_of) -> str:
    """The first of pydantic's errors as one line, named with `name_of`."""
    first = exc.errors()[0]
    location = tuple(str(part) for part in first["loc"] if not isinstance(part, int))
    message = describe_error(first)
    if first["type"] == "extra_forbidden":
        *parents, key = location
        where = name_of(tuple(parents))
        allowed = ", ".join(fields_at(model, tuple(parents)))
        return f"{where + ': ' if where else ''}unknown key {key!r}; allowed: {allowed}"
    at_field = is_leaf(model, location)
    owner = location[:-1] if at_field else location
    if NAMED.search(message):  # a rule that names its fields itself
        return fill_names(message, lambda field: name_of(owner + tuple(field.split("."))))
    where = name_of(location)
    if at_field or first["type"] not in ("value_error", "assertion_error"):
        return f"{where} {message}" if where else message
    return f"{where}: {message}" if where else message


NAMED = re.compile("\x00([a-z_][a-z0-9_.]*)\x00")


def named(field: str) -> str:
    """A field's name inside a rule's message, filled in with the option as the user wrote it ("--awq" on the
    command line, "[quantize] awq" in a config file); a dotted name reaches into a nested group. (The marker is a
    character no repr() of the user's input can hold.)"""
    return f"\x00{field}\x00"


def fill_names(message: str, name_of_field: Callable[[str], str]) -> str:
    return NAMED.sub(lambda m: name_of_field(m.group(1)), message)


def is_leaf(model: type[Settings], path: tuple[str, ...]) -> bool:
    """Whether `path` ends at a field that is not a nested group."""
    for name in path:
        info = model.model_fields.get(name)
        if info is None:
            return False
        inner = nested_model(info)
        if inner is None:
            return True
        model = inner
    return False


def fields_at(model: type[Settings], path: tuple[str, ...]) -> list[str]:
    """The field names of the (nested) model at `path`."""
    for name in path:
        inner = nested_model(model.model_fields[name]) if name in model.model_fields else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


# One answer to "which seeds": every command, config key and the server's requests take these (torch and numpy
# seed generators from any of them).
SEED_MAX = 2**63 - 1

# Groups several commands share.

DEVICE = re.compile(r"cpu|auto|cuda(:[0-9]+)?")


class RemoteCode(Settings):
    """Model code: whether the command may run code a checkpoint ships.

    Every command that reads a checkpoint takes --trust-remote-code and it decides for the whole command
    (sparsetrt.architectures.remote_code), so no stage takes a checkpoint another refuses."""

    trust_remote_code: bool = option(False, "run the model code a checkpoint ships (config.json's auto_map) and take "
                                            "a family outside the verified ones, with a warning")


def trusts_remote_code(settings: Settings) -> bool:
    """Whether any group of a command's settings asks for the checkpoint's own code."""
    return any(isinstance(value, RemoteCode) and value.trust_remote_code
               or isinstance(value, Settings) and trusts_remote_code(value)
               for value in (getattr(settings, name) for name in type(settings).model_fields))


class ModelSource(RemoteCode):
    """[model]: the checkpoint the pipeline starts from."""

    source: str = option("smollm2-135m", "checkpoint directory, 'smollm2-135m' (embedded), or a hub id (online only)",
                         flag="--model", min_length=1)


class Output(Settings):
    """--out and --overwrite: a stage's output directory, refused when it holds a different run."""

    out: str = option(..., "output directory (written atomically)", min_length=1, config=False)
    overwrite: bool = option(False, "replace an output directory that holds a different run", config=False)


class Placement(Settings):
    """Where a layer-by-layer stage keeps the model; neither changes what it writes."""

    stream: bool = option(False, "read one decoder block at a time from the checkpoint's safetensors and write it "
                                 "out when done: memory bounded by one block, not the model (same result)")
    device: str = option("cpu", "where the block being processed and its statistics live: cpu, cuda, cuda:N or auto",
                         )

    known_device = field_validator("device")(classmethod(lambda cls, value: device_spelling(value)))


def device_spelling(value: str) -> str:
    """A device as every command spells it (whether this machine has it is checked when the work is planned:
    sparsetrt.devices)."""
    if not DEVICE.fullmatch(value):
        raise ValueError(f"must be cpu, cuda, cuda:N or auto, not {value!r}")
    return value


class Progress(Settings):
    progress: bool = option(True, "progress bars and per-step lines (--no-progress: none)", config=False)


class Check(Settings):
    check: bool = option(False, "check every setting and print the plan, then exit without writing anything",
                         config=False)
