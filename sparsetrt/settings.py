"""Settings: every option of every stage declared once — its type, range, default and help — as a pydantic model.

The CLI builds each command's parser from its models (sparsetrt.cli.options.add_settings), the pipeline config file
validates each section against the stage's model (sparsetrt.pipeline.config), and the Python API takes the model.
A value that does not fit is refused before any work with one line that names the option the way the user wrote it:
`--calib-samples` on the command line, `[calibration] samples` in a config file (`SettingsError.where`).

Conventions: strict types (a string is not a number, a number is not a boolean), finite floats only, unknown keys
refused; `option(...)` declares a field with its help and, where the command line spells it differently from the
config key, its flag. The groups several commands share (calibration, output, placement, progress) are one model
each, reused.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparsetrt.errors import SparsetrtError


class Settings(BaseModel):
    """The base of every settings model."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True,
                              validate_default=True)


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, **constraints) -> Any:
    """A settings field: `help` for --help and the reference page; `flag`: the command line's spelling when it is
    not --FIELD-NAME; `constraints`: pydantic's (ge, gt, le, lt, min_length, pattern, ...)."""
    extra = {k: v for k, v in (("flag", flag), ("metavar", metavar)) if v}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def flag_of(model: type[BaseModel], name: str) -> str:
    """The command line's spelling of field `name` of `model`."""
    extra = model.model_fields[name].json_schema_extra or {}
    return extra.get("flag") or "--" + name.replace("_", "-")


class SettingsError(SparsetrtError):
    """A value that does not fit its option, named as the user wrote it."""


def describe_error(error: dict) -> str:
    """One pydantic error, in the words this project uses for bad input."""
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
    words = {
        "int_type": f"must be an integer, not {shown}", "int_parsing": f"must be an integer, not {shown}",
        "float_type": f"must be a number, not {shown}", "float_parsing": f"must be a number, not {shown}",
        "finite_number": f"must be a finite number, not {shown}",
        "bool_type": f"must be true or false, not {shown}", "bool_parsing": f"must be true or false, not {shown}",
        "string_type": f"must be a string, not {shown}", "list_type": f"must be a list, not {shown}",
        "model_type": "must be a table/section", "dict_type": "must be a table/section",
        "extra_forbidden": "is not an option here",
        "greater_than_equal": f"must be >= {context.get('ge')}, not {shown}",
        "greater_than": f"must be > {context.get('gt')}, not {shown}",
        "less_than_equal": f"must be <= {context.get('le')}, not {shown}",
        "less_than": f"must be < {context.get('lt')}, not {shown}",
        "too_short": f"needs at least {context.get('min_length')} item(s), not {shown}",
        "literal_error": f"must be one of {context.get('expected', '?')}, not {shown}",
        "string_pattern_mismatch": f"must match {context.get('pattern')}, not {shown}",
    }
    if kind in words:
        return words[kind]
    message = error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def checked(model: type[BaseModel], data: dict, name_of) -> BaseModel:
    """`model` built from `data`, or a SettingsError naming the first bad value: `name_of(location)` turns pydantic's
    location (a tuple of field names) into the option as the user wrote it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            *parents, key = location
            allowed = ", ".join(fields_at(model, tuple(parents)))
            raise SettingsError(f"{name_of(tuple(parents))}: unknown key {key}; allowed: {allowed}") from None
        raise SettingsError(f"{name_of(location)} {describe_error(first)}") from None


def fields_at(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """The field names of the (nested) model at `path`."""
    for name in path:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
