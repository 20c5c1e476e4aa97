"""ONNX export of the decoder with KV cache: one graph serves prefill and decode.

Inputs   input_ids [batch, sequence], attention_mask [batch, total_sequence] (past + new, 0 = padding),
         position_ids [batch, sequence], past_key_values.{i}.key|value [batch, kv_heads, past_sequence, head_dim]
Outputs  logits [batch, sequence, vocab], present.{i}.key|value [batch, kv_heads, past_sequence + sequence, head_dim]
Prefill feeds a past of length 0 (empty tensors), decode feeds the previous step's presents. One merged graph
(instead of a prefill/decode pair) halves the export time (~2 min per precision for SmolLM2 on 2 CPUs), the
files on disk and the TensorRT build; TensorRT gets one optimization profile per phase (sparsetrt.build).
position_ids are an input, not computed in the graph, so left-padded batches need no graph logic.

We use torch.onnx's dynamo exporter (torch.export + onnxscript): it handles transformers' current attention,
rotary and cache code when the cache object is built inside the traced forward from plain tensors (exporting
a DynamicCache argument is what fails in pytorch #155862 / optimum #1747). onnx-ir writes weights as external
data, so the 2 GB protobuf limit never bites. The exporter folds each Linear's transpose into its weight (an
(in, out) initializer named like `val_41`); the sparsity verifier accounts for that.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from transformers import DynamicCache

from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import DEFAULT_OPSET
from sparsetrt.onnx_io import load_onnx, past_names, present_names

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
# Part of the export fingerprint: artifacts of an older graph layout are redone (/2: full-length presents on
# sliding-window layers).
GRAPH_FORMAT = "decoder-kv/2"


def cache_geometry(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


class DecoderWithCache(torch.nn.Module):
    """The HF model with a flat, export-friendly signature: tensors in, tensors out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        # Full-length cache layers on every layer, sliding-window ones included: the graph's contract is present =
        # past + new (the runners grow attention_mask by one column per step), and the sliding window is applied
        # by the attention mask, as transformers does during a prefill. DynamicCache(config=...) would crop the
        # sliding layers' presents to window - 1, out of step with the mask (Gemma 2 crashed past 256 tokens).
        cache = DynamicCache()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers[: self.num_layers]:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def file_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    return next(o.version for o in load_onnx(path).opset_import if o.domain in ("", "ai.onnx"))


def export_decoder(model: torch.nn.Module, path: Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                   verbose: bool = False) -> Path:
    """Export `model` (left untouched) to `path` with weights in `path`.data; returns `path`."""
    if precision not in PRECISIONS:
        raise SparsetrtError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    program = trace_decoder(_as_dtype(model, PRECISIONS[precision]), PRECISIONS[precision], opset, verbose)
    save_program(program, path)
    return path


def trace_decoder(model: torch.nn.Module, dtype: torch.dtype, opset: int, verbose: bool = False,
                  optimize: bool = True):
    """torch.onnx's program of DecoderWithCache(`model`) (its weights in `dtype`) with the dynamic axes of the
    graph's contract. `optimize=False` leaves the graph as traced (the streamed export folds weights itself)."""
    wrapper = DecoderWithCache(model).eval()
    layers, kv_heads, head_dim = cache_geometry(model.config)
    max_len = int(getattr(model.config, "max_position_embeddings", 4096) or 4096)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=1, max=max_len)
    past_len = torch.export.Dim("past_sequence", min=0, max=max_len)
    total = torch.export.Dim("total_sequence", min=1, max=2 * max_len)
    # Example sizes > 1 and distinct, so torch.export specialises none of them away.
    b, s, p = 2, 5, 3
    example = (torch.ones(b, s, dtype=torch.long), torch.ones(b, p + s, dtype=torch.long),
               torch.arange(p, p + s).expand(b, s).contiguous(),
               *[torch.zeros(b, kv_heads, p, head_dim, dtype=dtype) for _ in range(2 * layers)])
    quiet = contextlib.nullcontext() if verbose else _quiet()
    with quiet, torch.no_grad(), _module_tensors_kept(model):
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            optimize=optimize,
            opset_version=opset,
            input_names=["input_ids", "attention_mask", "position_ids", *past_names(layers)],
            output_names=["logits", *present_names(layers)],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                            tuple({0: batch, 2: past_len} for _ in range(2 * layers))),
            verbose=False,
        )
    if program is None:
        raise SparsetrtError("torch.onnx.export returned no program; upgrade torch (>= 2.6)")
    return program


def save_program(program, path: Path) -> None:
    """The graph to `path`, every weight to `path`.data (written one tensor at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)


def keeps_fp32(module: torch.nn.Module, buffer: str) -> bool:
    """Whether a buffer stays fp32 in a half-precision export: the inv_freq of a rope whose forward rewrites it in
    place from fp32 attributes (longrope picks its long or short set, dynamic rope grows it). A cast buffer makes
    that copy change dtype, which the exporter refuses; the rope math is fp32 either way."""
    kinds = getattr(module, "rope_type", None)
    kinds = kinds.values() if isinstance(kinds, dict) else [kinds]
    return buffer.endswith("inv_freq") and any(isinstance(k, str) and (k == "longrope" or "dynamic" in k)
                                               for k in kinds)


def _as_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    if next(model.parameters()).dtype == dtype:
        return model
    cast = copy.deepcopy(model)
    kept = [(module, name, value) for module in cast.modules() for name, value in module._buffers.items()
            if value is not None and keeps_fp32(module, name)]
    cast.to(dtype)
    for module, name, value in kept:
        module._buffers[name] = value.float()
    return cast


@contextlib.contextmanager
def _module_tensors_kept(model: torch.nn.Module):
    """Put back every module's buffers and plain tensor attributes after a trace. torch.export runs forward on
    fake tensors, and a forward that caches a tensor on its module (longrope's long_inv_freq, dynamic rope's
    inv_freq) would leave a fake one behind: the next copy or forward of the model then fails."""
    saved = [(module, dict(module._buffers), {k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)})
             for module in model.modules()]
    try:
        yield
    finally:
        for module, buffers, tensors in saved:
            module._buffers.clear()
            module._buffers.update(buffers)
            for name in [k for k, v in vars(module).items() if isinstance(v, torch.Tensor) and k not in tensors]:
                delattr(module, name)
            for name, value in tensors.items():
                setattr(module, name, value)


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


