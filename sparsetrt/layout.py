"""Where every stage's files live: the manifest each stage writes, the files beside it, and the artifacts tree.

Each stage writes one directory holding a JSON manifest (its stage name, a fingerprint of its inputs and
settings, what it wrote and how it was checked). The names are here, once, so that a stage reading another's
output, the runtime and the CLI never import the stage that writes it just for a file name.

  ArtifactsTree(root)   every path of the layout `sparsetrt run` writes:
                          shrunk/                 the structurally pruned checkpoint ([shrink] in the config)
                          pruned/                 the 2:4 checkpoint (its tokenizer serves every file below)
                          onnx/model[.fp16].onnx  float decoders (sparsetrt export)
                          parity/                 PyTorch vs ONNX Runtime report (sparsetrt parity)
                          int8/ int4/             Q/DQ decoders + TensorRT-LLM checkpoints (sparsetrt quantize)
                          engines/<precision>/    TensorRT engines (sparsetrt build)
                          dense/                  the same files for the unpruned source (benchmark baseline)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparsetrt.artifacts import read_json
from sparsetrt.errors import SparsetrtError

# The manifest of each stage's directory.
SPARSITY_MANIFEST = "sparsity.json"      # prune
STRUCTURE_MANIFEST = "structure.json"    # shrink
DISTILL_MANIFEST = "distill.json"        # distill
EXPORT_MANIFEST = "export.json"          # export
QUANT_MANIFEST = "quantize.json"         # quantize
PARITY_MANIFEST = "parity.json"          # parity
ENGINE_MANIFEST = "engine.json"          # build (an engine)
VARIANT_MANIFEST = "variants.json"       # variants
RUN_MANIFEST = "run.json"                # run (run-int8.json, run-int4.json for the quantized configs)

# Files beside the manifests.
ENGINE_FILE = "model.engine"
LAYERS_FILE = "layers.json"
BUILD_LOG = "build.log"

FLOAT_PRECISIONS = ("fp32", "fp16")   # `sparsetrt export`: float decoders
QUANT_PRECISIONS = ("int8", "int4")   # `sparsetrt quantize`: Q/DQ decoders
# What a decoder file is made for: TensorRT (the exported graph and its Q/DQ rewrite: standard ops, what TensorRT
# parses; ONNX Runtime runs it too), or ONNX Runtime (its CPU provider's fused ops; fp32 activations).
TARGETS = ("tensorrt", "onnxruntime")
ORT_PRECISIONS = ("fp32", "int8", "int4")  # the ONNX Runtime target keeps float activations in fp32


def run_manifest_name(precision: str) -> str:
    """run.json for a float run, run-<precision>.json for a quantized one (both share one artifacts tree)."""
    return RUN_MANIFEST if precision == "none" else f"run-{precision}.json"


def onnx_file_name(precision: str, target: str = "tensorrt") -> str:
    """The decoder file of `precision` inside its stage directory: model[.PRECISION][.ort].onnx."""
    stem = "model" if precision == "fp32" else f"model.{precision}"
    return f"{stem}.ort.onnx" if target == "onnxruntime" else f"{stem}.onnx"


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external-data file, where there is one."""
    path = Path(path)
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


@dataclass(frozen=True)
class ArtifactsTree:
    """The paths of one artifacts directory (they need not exist yet)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def pruned(self) -> Path:
        return self.root / "pruned"

    @property
    def shrunk(self) -> Path:
        """The structurally pruned checkpoint `prune` starts from when the config has a [shrink] stage."""
        return self.root / "shrunk"

    @property
    def onnx_dir(self) -> Path:
        return self.root / "onnx"

    @property
    def parity_dir(self) -> Path:
        return self.root / "parity"

    @property
    def dense(self) -> "ArtifactsTree":
        """The dense baseline's files (onnx/, int8/, int4/, engines/), laid out like the 2:4 ones."""
        return ArtifactsTree(self.root / "dense")

    def quant_dir(self, precision: str) -> Path:
        return self.root / precision

    def onnx(self, precision: str, target: str = "tensorrt") -> Path:
        """The decoder of `precision` made for `target`: fp32/fp16 under onnx/, int8/int4 in their quantize
        directory."""
        if precision in FLOAT_PRECISIONS:
            return self.onnx_dir / onnx_file_name(precision, target)
        if precision in QUANT_PRECISIONS:
            return self.quant_dir(precision) / onnx_file_name(precision, target)
        raise SparsetrtError(f"unknown precision '{precision}'; use one of "
                             f"{', '.join(FLOAT_PRECISIONS + QUANT_PRECISIONS)}")

    def onnxruntime_file(self, precision: str) -> Path:
        """What ONNX Runtime runs for `precision`: the file made for it where the run wrote one, else the
        TensorRT-shaped file (which ONNX Runtime runs too, slower)."""
        made_for_it = self.onnx(precision, "onnxruntime")
        return made_for_it if made_for_it.is_file() else self.onnx(precision)

    def engine_dir(self, precision: str) -> Path:
        return self.root / "engines" / precision

    def engine(self, precision: str) -> Path:
        return self.engine_dir(precision) / ENGINE_FILE

    def engines(self) -> list[Path]:
        return sorted((self.root / "engines").glob(f"*/{ENGINE_FILE}"))

    def is_exported(self) -> bool:
        """Whether `sparsetrt export` finished here (what makes a directory an artifacts tree to serve)."""
        return (self.onnx_dir / EXPORT_MANIFEST).is_file()

    def dense_checkpoint(self) -> Path:
        """The checkpoint the pruned model came from (its sparsity.json says which)."""
        manifest = self.pruned / SPARSITY_MANIFEST
        if not manifest.is_file():
            raise SparsetrtError(f"{manifest} does not exist: run `make demo` (or `sparsetrt run`) first")
        return Path(read_json(manifest)["source_checkpoint"])


def tokenizer_dir_for(model: Path) -> Path:
    """The checkpoint directory itself, or the pruned checkpoint of the artifacts tree an ONNX/engine sits in."""
    model = Path(model)
    if model.is_dir():
        return model
    for parent in model.parents:
        if (ArtifactsTree(parent).pruned / "tokenizer_config.json").is_file():
            return ArtifactsTree(parent).pruned
    raise SparsetrtError(f"cannot find a tokenizer for {model}; pass --tokenizer CHECKPOINT_DIR")
