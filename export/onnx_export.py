"""ONNX export of the prefill graph: input_ids (+ attention_mask) -> logits, dynamic batch and sequence.

We use torch.onnx's dynamo exporter (torch.export + onnxscript): it handles transformers' current
attention and rotary code, and onnx-ir writes weights as external data, so the 2 GB protobuf limit never
bites. The exporter folds each Linear's transpose into its weight (an (in, out) initializer named like
`val_41`); the sparsity verifier accounts for that.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from pathlib import Path

import torch

from sparsetrt.errors import SparsetrtError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_OPSET = 21  # blocked DequantizeLinear (INT4) needs >= 21; TensorRT 10 parses opset 21


class LogitsOnly(torch.nn.Module):
    """The HF model with a fixed, export-friendly signature and no KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def onnx_file_name(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def export_prefill(model: torch.nn.Module, path: Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                   verbose: bool = False) -> Path:
    """Export `model` (left untouched) to `path` with weights in `path`.data; returns `path`."""
    if precision not in PRECISIONS:
        raise SparsetrtError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    wrapper = LogitsOnly(_as_dtype(model, PRECISIONS[precision])).eval()
    max_len = int(getattr(model.config, "max_position_embeddings", 4096) or 4096)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=1, max=max_len)
    example = torch.ones(2, 8, dtype=torch.long)  # size 1 would be specialised away by torch.export
    quiet = contextlib.nullcontext() if verbose else _quiet()
    with quiet, torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example, torch.ones_like(example)),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            verbose=False,
        )
    if program is None:
        raise SparsetrtError("torch.onnx.export returned no program; upgrade torch (>= 2.6)")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)
    return path


def _as_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    if next(model.parameters()).dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(dtype)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and many warnings; keep the user's terminal readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external-data file(s)."""
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


def timed_export(model, path: Path, precision: str, opset: int) -> float:
    start = time.perf_counter()
    export_prefill(model, path, precision, opset, verbose=bool(os.environ.get("SPARSETRT_VERBOSE")))
    return time.perf_counter() - start
