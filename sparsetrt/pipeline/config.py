"""The pipeline config file (TOML or YAML), kept in git beside the code it drives.

Every section and key is optional; unknown keys and wrong types are refused with the key's path, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import yaml

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.schedule import ScheduleSettings


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
class ShrinkSection:
    """Structured pruning before `prune` (sparsetrt.prune.shrink): a fraction keeps that share, an integer sets the
    size; all "1.0" = no shrink stage."""
    SIZES = ("mlp", "heads", "kv_heads", "layers")  # numbers in the file (0.75, 26), held as text

    mlp: str = "1.0"
    heads: str = "1.0"
    kv_heads: str = "1.0"
    layers: str = "1.0"
    importance: str = "activation"      # activation | taylor | magnitude
    depth_importance: str = "cosine"    # cosine | loss
    stream: bool = False                # one decoder block in memory at a time (same result; activation/magnitude)
    device: str = "cpu"                 # with stream: where the block being scored lives: cpu | cuda | cuda:N | auto

    def enabled(self) -> bool:
        return any(getattr(self, k) not in ("1.0", "1") for k in self.SIZES)


@dataclass
class PruneSection:
    method: str = "sparsegpt"
    pattern: str = "2:4"
    targets: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    batch_size: int = 8
    sparsegpt: SparseGPTSection = field(default_factory=SparseGPTSection)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    stream: bool = False                # one decoder block in memory at a time (same result)
    device: str = "cpu"                 # where the block being pruned lives: cpu | cuda | cuda:N | auto


@dataclass
class ExportSection:
    precisions: list = field(default_factory=lambda: ["fp32", "fp16"])
    opset: int = 21
    stream: bool = False                # trace on fake tensors, write weights one at a time (same files)
    targets: list = field(default_factory=lambda: ["tensorrt"])  # + "onnxruntime": model.ort.onnx beside them


@dataclass
class QuantizeSection:
    precision: str = "none"             # none | int8 (W8A8) | int4 (W4A16)
    calibrator: str = "max"             # INT8 activations: max | percentile | entropy
    percentile: float = 99.99
    smoothquant_alpha: float = -1.0     # INT8: 0 = off, -1 = auto (0.85 unless gptq = "on")
    block_size: int = 128               # INT4 (TensorRT: 64 or 128; 64 when 128 does not divide the model)
    awq: bool = False                   # INT4: AWQ-lite scale search
    gptq: str = "auto"                  # GPTQ rounding with the mask held: on | off | auto (on for INT4)
    activations: str = "auto"           # exported graph that gets the Q/DQ nodes: auto (fp32 INT8, fp16 INT4) | fp16 | fp32
    embeddings: str = "auto"            # embedding + lm_head, weight-only: auto (int8) | float | int8 | int4
    tp: list = field(default_factory=lambda: [1])  # TensorRT-LLM checkpoints, one per tensor-parallel size
    gemm_outputs: bool = False          # INT8: Q/DQ after every GEMM too (INT8 in and out; see the README)
    batch_size: int = 4
    stream: bool = False                # one decoder block in memory (same file; no parity / TensorRT-LLM)
    targets: list = field(default_factory=lambda: ["tensorrt"])  # + "onnxruntime": model.<p>.ort.onnx beside it
    ort_compute: str = "int8"           # the ONNX Runtime target's MatMulNBits: int8 activations (fastest) | fp32


@dataclass
class ParitySection:
    corpus: str = "auto"  # auto = WikiText-2 test when present, else Python's bundled docs text
    windows: int = 4
    generate_tokens: int = 32  # greedy tokens compared token for token on 10 prompts (0 = skip)
    seq_len: int = 512
    tolerances: list = field(default_factory=list)  # ["fp16.max_abs_error=0.5", ...]


@dataclass
class BuildSection:
    """[build] (also spelled [engine]): the TensorRT engines the run ends with."""
    precisions: list = field(default_factory=list)  # engines to build: fp16 | fp32 | int8 | int4 ([] = none)
    builder: str = "auto"                           # auto | tensorrt (GPU) | rtx (TensorRT-RTX, no GPU needed)
    targets: list = field(default_factory=list)     # TensorRT-RTX compute capabilities ([] = sm80, sm86)
    max_batch: int = 4
    max_input_len: int = 512
    max_output_len: int = 128


@dataclass
class PipelineConfig:
    out: str = "artifacts"
    model: ModelSection = field(default_factory=ModelSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    shrink: ShrinkSection = field(default_factory=ShrinkSection)
    prune: PruneSection = field(default_factory=PruneSection)
    export: ExportSection = field(default_factory=ExportSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    parity: ParitySection = field(default_factory=ParitySection)
    build: BuildSection = field(default_factory=BuildSection)

    def to_dict(self) -> dict:
        """What the run's fingerprint is taken of (and run.json records)."""
        data = dataclasses.asdict(self)
        # [build] keeps its earlier name here, so runs made before the section was renamed are still recognised
        data = {("engine" if key == "build" else key): value for key, value in data.items()}
        if not self.shrink.enabled():  # configs without a shrink stage keep the fingerprint they always had
            data.pop("shrink")
        for where in ("stream", "device"):  # where pruning (or shrinking) runs does not change what it writes
            data["prune"].pop(where)
            data.get("shrink", {}).pop(where, None)
        data["export"].pop("stream")  # nor does streaming the export
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


def load_config(path: str | Path) -> PipelineConfig:
    data = _load_raw(Path(path), depth=0)
    for alias, name in SECTION_ALIASES.items():
        if alias in data:
            if name in data:
                raise SparsetrtError(f"{path}: [{alias}] and [{name}] are one section; keep one of them")
            data[name] = data.pop(alias)
    return from_dict(PipelineConfig, data, str(path))


def _load_raw(path: Path, depth: int) -> dict:
    """The file's table; `extends = "other.toml"` (relative to this file) starts from another config."""
    if not path.is_file():
        raise SparsetrtError(f"config file {path} does not exist; see configs/demo.toml for an example")
    text = path.read_text(encoding="utf-8")
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
        raise SparsetrtError(f"{path}:extends must name one config file (and chains stop at 5)")
    return _merge(_load_raw(path.parent / base, depth + 1), data)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
        elif isinstance(default, list) and default and isinstance(default[0], int):
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise SparsetrtError(f"{key} must be a list of integers, not {value!r}")
            values[name] = value
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SparsetrtError(f"{key} must be a list of strings, not {value!r}")
            values[name] = value
        elif name in getattr(cls, "SIZES", ()) and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = str(value)  # 0.75 keeps a share, 26 sets the size: kept as written
        else:
            if not isinstance(value, str):
                raise SparsetrtError(f"{key} must be a string, not {value!r}")
            values[name] = value
    return cls(**values)
