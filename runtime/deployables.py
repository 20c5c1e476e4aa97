"""The artifacts tree `sparsetrt run` writes, and the deployables in it.

  ArtifactsTree(root)   every path of the layout, named once:
                          pruned/                 the 2:4 checkpoint (its tokenizer serves every file below)
                          onnx/model[.fp16].onnx  float decoders (sparsetrt export)
                          parity/                 PyTorch vs ONNX Runtime report (sparsetrt parity)
                          int8/ int4/             Q/DQ decoders + TensorRT-LLM checkpoints (sparsetrt quantize)
                          engines/<precision>/    TensorRT engines (sparsetrt engine)
                          dense/                  the same files for the unpruned source (bench baseline)
  Deployable            one thing a backend can run: backend x precision x pattern x file (what `make bench`
                        measures, what the adaptive variant set is built from)
  discover_deployables  every Deployable whose files exist under a tree
  prepare_dense         the dense baseline's files, exported and quantized like the 2:4 run's
  prepare_like_runs     the same for any checkpoint (a shrunk variant) into a tree of its own
  files_bytes, tokenizer_dir_for
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sparsetrt.errors import SparsetrtError
from sparsetrt.export import FLOAT_PRECISIONS, QUANT_PRECISIONS


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

    def onnx(self, precision: str) -> Path:
        """The decoder of `precision`: fp32/fp16 under onnx/, int8/int4 in their quantize directory."""
        from sparsetrt.export.onnx_export import onnx_file_name

        if precision in FLOAT_PRECISIONS:
            return self.onnx_dir / onnx_file_name(precision)
        if precision in QUANT_PRECISIONS:
            return self.quant_dir(precision) / onnx_file_name(precision)
        raise SparsetrtError(f"unknown precision '{precision}'; use one of "
                             f"{', '.join(FLOAT_PRECISIONS + QUANT_PRECISIONS)}")

    def engine_dir(self, precision: str) -> Path:
        return self.root / "engines" / precision

    def engine(self, precision: str) -> Path:
        from sparsetrt.build.engine import ENGINE_FILE

        return self.engine_dir(precision) / ENGINE_FILE

    def engines(self) -> list[Path]:
        from sparsetrt.build.engine import ENGINE_FILE

        return sorted((self.root / "engines").glob(f"*/{ENGINE_FILE}"))

    def is_exported(self) -> bool:
        """Whether `sparsetrt export` finished here (what makes a directory an artifacts tree to serve)."""
        from sparsetrt.export.stage import EXPORT_MANIFEST

        return (self.onnx_dir / EXPORT_MANIFEST).is_file()

    def dense_checkpoint(self) -> Path:
        """The checkpoint the pruned model came from (its sparsity.json says which)."""
        from sparsetrt.artifacts import read_json
        from sparsetrt.prune.verify import SPARSITY_MANIFEST

        manifest = self.pruned / SPARSITY_MANIFEST
        if not manifest.is_file():
            raise SparsetrtError(f"{manifest} does not exist: run `make demo` (or `sparsetrt run`) first")
        return Path(read_json(manifest)["source_checkpoint"])


@dataclass
class Deployable:
    backend: str      # pytorch | onnxruntime | tensorrt
    precision: str    # fp32 | fp16 | int8 | int4
    pattern: str      # dense | 2:4
    path: str         # checkpoint directory | .onnx | .engine
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # runner keyword arguments (semi_structured=True, threads=2, ...)

    @property
    def label(self) -> str:
        extra = " semi-structured" if self.options.get("semi_structured") else ""
        return f"{self.backend} {self.precision} {self.pattern}{extra}"


def discover_deployables(artifacts: Path, cuda: bool = False) -> list[Deployable]:
    """Every deployable whose files exist under `artifacts` (the layout `sparsetrt run` and `bench --dense` write)."""
    tree = ArtifactsTree(artifacts)
    device = "cuda" if cuda else "cpu"
    found = []
    for pattern, files, checkpoint in (("dense", tree.dense, tree.dense_checkpoint()), ("2:4", tree, tree.pruned)):
        dtype = "fp16" if cuda else "fp32"  # fp16 on the CPU is emulated: not a deployment anyone runs
        found.append(Deployable("pytorch", "fp32", pattern, str(checkpoint), device))
        if cuda:
            found.append(Deployable("pytorch", dtype, pattern, str(checkpoint), device, {"dtype": "float16"}))
            if pattern == "2:4":
                found.append(Deployable("pytorch", dtype, pattern, str(checkpoint), device,
                                        {"dtype": "float16", "semi_structured": True}))
        for precision in ("fp32", *QUANT_PRECISIONS):
            if files.onnx(precision).is_file():
                found.append(Deployable("onnxruntime", precision, pattern, str(files.onnx(precision)), device))
        for engine in files.engines():
            found.append(Deployable("tensorrt", engine.parent.name, pattern, str(engine), "cuda"))
    return found


def prepare_dense(artifacts: Path, progress: bool = True) -> Path:
    """The dense baseline's deployables in artifacts/dense/: the source checkpoint exported and quantized with the
    settings of the 2:4 runs (artifacts/int8, artifacts/int4), so dense and 2:4 differ only by the pruning."""
    tree = ArtifactsTree(artifacts)
    prepare_like_runs(tree.dense_checkpoint(), tree.dense, tree, progress=progress)
    return tree.dense.root


def prepare_like_runs(source: Path, files: ArtifactsTree, runs: ArtifactsTree, floats=FLOAT_PRECISIONS,
                      precisions=QUANT_PRECISIONS, progress: bool = True) -> list[str]:
    """`source` (any checkpoint of the same tokenizer: the dense model, a shrunk one) exported into files/onnx/ and
    quantized into files/<precision>/ with the settings the 2:4 runs under `runs` used (each quantized precision
    only where such a run exists). Finished files are reused. Returns the precisions now under `files`."""
    from sparsetrt.artifacts import read_json
    from sparsetrt.export.quant_stage import QUANT_MANIFEST, quantize_checkpoint
    from sparsetrt.export.stage import export_checkpoint

    export_checkpoint(source, files.onnx_dir, precisions=list(floats), reuse=True)
    done = list(floats)
    for precision in precisions:
        manifest = runs.quant_dir(precision) / QUANT_MANIFEST
        if not manifest.is_file():
            continue
        run = read_json(manifest)["settings"]
        quantize_checkpoint(source, files.onnx_dir, files.quant_dir(precision), run["quant"], calib=run["calib"],
                            calib_samples=run["calib_samples"], calib_seq_len=run["calib_seq_len"], seed=run["seed"],
                            tp_sizes=(), parity_corpus=run["parity"]["corpus"], parity_windows=run["parity"]["windows"],
                            parity_seq_len=run["parity"]["seq_len"], reuse=True, progress=progress)
        done.append(precision)
    return done


def files_bytes(path: Path) -> int:
    """Bytes on disk of a deployable's model: the .onnx and its external data, an engine, or a checkpoint's
    weights."""
    from sparsetrt.export.onnx_export import onnx_files

    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
    return sum(f.stat().st_size for f in onnx_files(path))  # an engine has no .data beside it


def tokenizer_dir_for(model: Path) -> Path:
    """The checkpoint directory itself, or the pruned checkpoint of the artifacts tree an ONNX/engine sits in."""
    model = Path(model)
    if model.is_dir():
        return model
    for parent in model.parents:
        if (ArtifactsTree(parent).pruned / "tokenizer_config.json").is_file():
            return ArtifactsTree(parent).pruned
    raise SparsetrtError(f"cannot find a tokenizer for {model}; pass --tokenizer CHECKPOINT_DIR")
