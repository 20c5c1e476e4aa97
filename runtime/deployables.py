"""The deployables in an artifacts tree (sparsetrt.layout.ArtifactsTree: the layout `sparsetrt run` writes).

  Deployable            one thing a backend can run: backend x precision x pattern x file (what `make bench`
                        measures, what the adaptive variant set is built from)
  discover_deployables  every Deployable whose files exist under a tree
  files_bytes           a deployable's bytes on disk
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sparsetrt.layout import QUANT_PRECISIONS, ArtifactsTree, onnx_files


@dataclass
class Deployable:
    backend: str      # pytorch | onnxruntime | tensorrt
    precision: str    # fp32 | fp16 | int8 | int4
    pattern: str      # dense | 2:4
    path: str         # checkpoint directory | .onnx | .engine
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # runner keyword arguments (semi_structured=True, threads=2, ...)

    @property
    def made_for(self) -> str:
        """An ONNX file's target: onnxruntime (its own fused graph) or tensorrt (the TensorRT-shaped graph)."""
        return "onnxruntime" if self.path.endswith(".ort.onnx") else "tensorrt"

    @property
    def label(self) -> str:
        extra = " semi-structured" if self.options.get("semi_structured") else ""
        if self.backend == "onnxruntime" and self.made_for == "tensorrt":
            extra += " (TensorRT graph)"
        return f"{self.backend} {self.precision} {self.pattern}{extra}"


def discover_deployables(artifacts: Path, cuda: bool = False, tensorrt_graphs: bool = False) -> list[Deployable]:
    """Every deployable whose files exist under `artifacts` (the layout `sparsetrt run` and `bench --dense` write).
    On ONNX Runtime, the file made for it where there is one; `tensorrt_graphs`: the TensorRT-shaped files too."""
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
            preferred = files.onnxruntime_file(precision)
            paths = [preferred] + ([files.onnx(precision)] if tensorrt_graphs and preferred != files.onnx(precision)
                                   else [])
            found += [Deployable("onnxruntime", precision, pattern, str(p), device) for p in paths if p.is_file()]
        for engine in files.engines():
            found.append(Deployable("tensorrt", engine.parent.name, pattern, str(engine), "cuda"))
    return found


def files_bytes(path: Path) -> int:
    """Bytes on disk of a deployable's model: the .onnx and its external data, an engine, or a checkpoint's
    weights."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
    return sum(f.stat().st_size for f in onnx_files(path))  # an engine has no .data beside it


