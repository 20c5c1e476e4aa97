"""The pipeline config file (TOML or YAML), kept in git beside the code it drives.

Every section and key is optional; unknown keys and wrong types are refused with the key's path, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sparsetrt.errors import SparsetrtError


@dataclass
class ModelSection:
    source: str = "smollm2-135m"  # checkpoint directory, embedded name, or hub id (online only)
    trust_remote_code: bool = False


@dataclass
class CalibrationSection:
    corpus: str = "auto"  # auto = WikiText-2 valid when present, else Python's bundled docs text
    samples: int = 32
    seq_len: int = 512
    seed: int = 0


@dataclass
class SparseGPTSection:
    block_size: int = 128
    damping: float = 0.01
    mask_selection: str = "joint"


@dataclass
class PruneSection:
    method: str = "sparsegpt"
    pattern: str = "2:4"
    targets: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    batch_size: int = 8
    sparsegpt: SparseGPTSection = field(default_factory=SparseGPTSection)


@dataclass
class ExportSection:
    precisions: list = field(default_factory=lambda: ["fp32", "fp16"])
    opset: int = 21


@dataclass
class ParitySection:
    corpus: str = "auto"  # auto = WikiText-2 test when present, else Python's bundled docs text
    windows: int = 4
    seq_len: int = 512
    tolerances: list = field(default_factory=list)  # ["fp16.max_abs_error=0.5", ...]


@dataclass
class PipelineConfig:
    out: str = "artifacts"
    model: ModelSection = field(default_factory=ModelSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    prune: PruneSection = field(default_factory=PruneSection)
    export: ExportSection = field(default_factory=ExportSection)
    parity: ParitySection = field(default_factory=ParitySection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise SparsetrtError(f"config file {path} does not exist; see configs/demo.toml for an example")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise SparsetrtError(f"config file {path} must end in .toml, .yaml or .yml")
    except SparsetrtError:
        raise
    except Exception as exc:
        raise SparsetrtError(f"config file {path} does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SparsetrtError(f"config file {path} must hold a table/mapping at the top level")
    return from_dict(PipelineConfig, data, str(path))


def from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from `data`, checking keys and types recursively."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SparsetrtError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        key = f"{where}:{name}"
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise SparsetrtError(f"{key} must be a table/section")
            values[name] = from_dict(type(default), value, key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SparsetrtError(f"{key} must be true or false, not {value!r}")
            values[name] = value
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SparsetrtError(f"{key} must be an integer, not {value!r}")
            values[name] = value
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SparsetrtError(f"{key} must be a number, not {value!r}")
            values[name] = float(value)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SparsetrtError(f"{key} must be a list of strings, not {value!r}")
            values[name] = value
        else:
            if not isinstance(value, str):
                raise SparsetrtError(f"{key} must be a string, not {value!r}")
            values[name] = value
    return cls(**values)
