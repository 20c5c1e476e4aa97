"""The pipeline config file (TOML or YAML), kept in git beside the code it drives.

Each section is the settings model of its stage (the same declaration the stage's command builds its options
from): every key is optional, unknown keys, wrong types, values out of range and rules across sections are refused
with the key as the file spells it (`[prune] method`) before any stage starts.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import yaml
from pydantic import model_validator

from sparsetrt.build.settings import BuildSettings
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import ExportSettings, QuantizeSettings
from sparsetrt.layout import RUN_MANIFEST
from sparsetrt.prune.settings import PruneSettings, ShrinkSettings
from sparsetrt.runtime.settings import ParitySettings
from sparsetrt.settings import ModelSource, Settings, checked, named, option


class PipelineConfig(Settings):
    """A run: [shrink ->] prune -> export -> parity [-> quantize] [-> build], into one artifacts directory."""

    out: str = option("artifacts", "the artifacts directory", min_length=1)
    model: ModelSource = option(ModelSource, "[model]")
    calibration: CalibrationSettings = option(CalibrationSettings, "[calibration]")
    shrink: ShrinkSettings = option(ShrinkSettings, "[shrink]")
    prune: PruneSettings = option(PruneSettings, "[prune]")
    export: ExportSettings = option(ExportSettings, "[export]")
    quantize: QuantizeSettings = option(QuantizeSettings, "[quantize]")
    parity: ParitySettings = option(ParitySettings, "[parity]")
    build: BuildSettings = option(BuildSettings, "[build]")

    @model_validator(mode="after")
    def sections_agree(self) -> "PipelineConfig":
        """The rules across sections: what one stage needs from another's output."""
        precision = self.quantize.precision
        for p in self.build.precisions:
            if p in ("fp32", "fp16") and p not in self.export.precisions:
                raise ValueError(f"{named('build.precisions')} {p} needs {p} in {named('export.precisions')}")
            if p in ("int8", "int4") and precision != p:
                raise ValueError(f"{named('build.precisions')} {p} needs {named('quantize.precision')} = \"{p}\"")
        if precision != "none":
            graph = self.quantize.resolved().activations
            if graph not in self.export.precisions:
                raise ValueError(f"{named('quantize.precision')} {precision} puts its Q/DQ nodes on the {graph} "
                                 f"graph: add {graph} to {named('export.precisions')} (or set "
                                 f"{named('quantize.activations')})")
        return self

    def run_manifest(self) -> str:
        """run.json for a float run, run-int8.json / run-int4.json for a quantized one (they share the stages)."""
        return RUN_MANIFEST if self.quantize.precision == "none" else f"run-{self.quantize.precision}.json"

    def to_dict(self) -> dict:
        """What the run's fingerprint is taken of (and run.json records)."""
        data = self.config_dict()
        # [build] keeps its earlier name here, so runs made before the section was renamed are still recognised
        data["engine"] = data.pop("build")
        if not self.shrink.enabled():  # configs without a shrink stage keep the fingerprint they always had
            data.pop("shrink")
        for where in ("stream", "device"):  # where pruning (or shrinking) runs does not change what it writes
            data["prune"].pop(where)
            data.get("shrink", {}).pop(where, None)
        data["export"].pop("stream")  # nor does streaming the export
        data["quantize"].pop("device")  # nor where quantize works
        if self.quantize.block_fallback:  # configs made before the key could be written keep their print
            data["quantize"].pop("block_fallback")
        # runs made before the ONNX Runtime target existed keep their fingerprint
        if self.export.targets == ["tensorrt"]:
            data["export"].pop("targets")
        if self.quantize.targets == ["tensorrt"]:
            data["quantize"].pop("targets")
            data["quantize"].pop("ort_compute")
        if not self.quantize.stream:  # a streamed quantize writes fewer artifacts; configs without it keep their print
            data["quantize"].pop("stream")
        return data


SECTION_ALIASES = {"engine": "build"}  # the spelling users already type -> the section's name


def validated(config: PipelineConfig) -> PipelineConfig:
    """`config` checked as a whole again: a field assigned after it was built is checked on its own, the rules
    across sections only here (a run does this before anything else)."""
    return checked(PipelineConfig, config.model_dump(), config_name)


def config_name(path: tuple[str, ...]) -> str:
    """A field path as a config file spells it: ("prune", "schedule", "levels") -> "[prune.schedule] levels"."""
    if not path:
        return ""
    if len(path) == 1:
        return f"[{path[0]}]" if path[0] in PipelineConfig.model_fields and path[0] != "out" else path[0]
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """The config file, validated (with `overrides`, e.g. {"out": ...} from the command line, applied first)."""
    data = _load_raw(Path(path), depth=0)
    for alias, name in SECTION_ALIASES.items():
        if alias in data:
            if name in data:
                raise SparsetrtError(f"{path}: [{alias}] and [{name}] are one section; keep one of them")
            data[name] = data.pop(alias)
    data.update(overrides or {})
    try:
        return checked(PipelineConfig, data, config_name)
    except SparsetrtError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _load_raw(path: Path, depth: int) -> dict:
    """The file's table; `extends = "other.toml"` (relative to this file) starts from another config."""
    if not path.is_file():
        raise SparsetrtError(f"config file {path} does not exist; see configs/demo.toml for an example")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SparsetrtError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise SparsetrtError(f"config file {path} must end in .toml, .yaml or .yml")
    except SparsetrtError:
        raise
    except Exception as exc:
        raise SparsetrtError(f"config file {path} does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SparsetrtError(f"config file {path} must hold a table/mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or depth > 4:
        raise SparsetrtError(f"{path}: extends must name one config file (and chains stop at 5)")
    return _merge(_load_raw(path.parent / base, depth + 1), data)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
