"""Weight-only quantization of the vocabulary tables: the input embedding and the lm_head.

On small models these dominate the file: SmolLM2-135M's tied 49152 x 576 table is 57 MB of its 274 MB fp16
ONNX file, as much as all of its INT4 decoder Linears together. Measured on the 2:4 SmolLM2 (8 WikiText-2
test windows, README): INT8 per row costs nothing (ppl x1.0002), INT4 in blocks of 64 costs x1.15 rounded to
nearest and x1.04 with GPTQ on the lm_head's inputs — almost all of it through the lm_head, not the lookup.
So the default is INT8 and INT4 is an explicit choice (`--embeddings int4`).

A table is quantized along its hidden axis, per row ([vocab, hidden] layout): for the lm_head that is per
output channel (INT8) or per block of inputs (INT4), TensorRT's weight-only forms; for the embedding lookup
each token's vector has its own scales. Tied tables (one tensor for both) are quantized once, with the
lm_head's statistics, and stay one tensor in every artifact.
"""

from __future__ import annotations

import torch

from sparsetrt.calibration.stats import collect_input_stats
from sparsetrt.errors import SparsetrtError
from sparsetrt.export import qmath
from sparsetrt.export.gptq import gptq_quantize
from sparsetrt.export.qmath import LinearQuant
from sparsetrt.export.settings import QuantSettings


def vocabulary_tables(model) -> dict[str, list[str]]:
    """{module holding a distinct table: every module that uses that tensor} for the input embedding and the
    lm_head (one entry when they are tied, named after the lm_head)."""
    names = {id(m): n for n, m in model.named_modules()}
    tables: dict[int, list[str]] = {}
    for module in (model.get_output_embeddings(), model.get_input_embeddings()):
        if module is None or getattr(module, "weight", None) is None:
            continue
        tables.setdefault(id(module.weight), []).append(names[id(module)])
    return {users[0]: users for users in tables.values()}


def lm_head_hessian(model, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """XᵀX / n of the lm_head's inputs (the final hidden states) on `windows`, the model as it is now."""
    head = model.get_output_embeddings()
    passes = [lambda batch=batch: model(input_ids=batch, use_cache=False) for batch in windows.split(batch_size)]
    with torch.no_grad():
        stats, _ = collect_input_stats({"lm_head": head}, passes, want_hessian=True)
    return stats["lm_head"].hessian


def quantize_embeddings(model, settings: QuantSettings, windows: torch.Tensor, batch_size: int = 4) -> dict[str, LinearQuant]:
    """Quantize the vocabulary tables as `settings.embeddings` says; the model's tensors become their
    dequantized values (ties kept). Returns {table: LinearQuant} in the [vocab, hidden] layout."""
    settings = settings.resolved()
    if settings.embeddings == "float":
        return {}
    modules = dict(model.named_modules())
    out = {}
    for name, users in vocabulary_tables(model).items():
        weight = modules[name].weight.detach().float()
        hidden = weight.shape[1]
        if settings.embeddings == "int8":
            q, scale = qmath.quantize_per_channel(weight, weight.abs().amax(1))
            block = None
        else:
            try:
                block = qmath.int4_block_size(hidden, settings.block_size, settings.block_fallback)
            except SparsetrtError as exc:
                raise SparsetrtError(f"{name} (the vocabulary table): {exc}; or use --embeddings int8") from None
            if settings.use_gptq and model.get_output_embeddings() is modules[name]:
                q, scale, _ = gptq_quantize(weight, lm_head_hessian(model, windows, batch_size), None,
                                            qmath.INT4_MAX, block)
            else:
                q, scale = qmath.quantize_blockwise(weight, qmath.blockwise_amax(weight, block), block)
        out[name] = LinearQuant(name, q, scale, block, None, None, extra={"shared_by": users})
    apply_tables(model, out)
    return out


def apply_tables(model, tables: dict[str, LinearQuant]) -> None:
    """Write each table's dequantized values into `model` in place (a tied tensor is written once)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, lq in tables.items():
            weight = modules[name].weight
            if tuple(weight.shape) != tuple(lq.q.shape):
                raise SparsetrtError(f"{name}: table {tuple(lq.q.shape)} does not fit the model's {tuple(weight.shape)}")
            weight.copy_(qmath.dequantize(lq.q, lq.scale, lq.block).to(weight.dtype))
