"""Quantization with bounded memory (`sparsetrt quantize --stream`): the weights never all sit in memory.

The in-memory quantizer holds the fp32 model, Model Optimizer's fake-quant copy, the float source of every
Linear and the parity references: 8-10x the fp32 model. Here:
1. GPTQ (mask held) runs block by block through layer streaming (prune/streaming.py): each decoder block is read
   from the pruned checkpoint, quantized on inputs that reflect the earlier blocks' quantization, each Linear's
   integers and scales written into a shard of their own (QuantShards) as soon as its group is done, and the block
   dropped back to meta. Without GPTQ each
   Linear is rounded to nearest in blocks, read one at a time. Either way the integers are those of the in-memory
   run (tests/test_quant_stream.py): Model Optimizer's INT4 "max" calibration is blockwise max |w|, and with GPTQ
   the in-memory run hands GPTQ's scales to its quantizers and re-rounds the dequantized weight (requantize()).
   INT8 (W8A8): Model Optimizer calibrates one block at a time (calibrate_linears_streamed): SmoothQuant's
   statistics, the max ranges and a histogram's each come from the block's inputs in the pass of the whole model
   they come from in memory (float, calibration mode, fake-quant weights), carried from block to block, so the
   ranges, scales and integers are the in-memory run's bit for bit.
2. The vocabulary tables are rounded as in memory (INT8 per row, or INT4 blockwise without GPTQ), one at a time.
3. The fp16 ONNX is rewritten with onnx_ir (qdq_stream.py): every weight becomes a lazy INT4 initializer read from
   its shard when the file is saved, every untouched initializer is copied from the source .data file one at a
   time (INT8: with the activation Q/DQ and SmoothQuant's Mul); the 2:4 check then reads one quantized weight and
   one checkpoint weight at a time.
Not done here (each needs the whole model): AWQ, GPTQ under INT8 (its propagated inputs are not the ones Model
Optimizer's calibration pass sees), GPTQ on an INT4 lm_head, the parity references and the TensorRT-LLM
checkpoints; the manifest says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsetrt.checkpoint import CheckpointReader, empty_model, load_module
from sparsetrt.export import qmath
from sparsetrt.export.embeddings import vocabulary_tables
from sparsetrt.export.gptq import gptq_model
from sparsetrt.export.onnx_stream import checkpoint_key
from sparsetrt.export.qmath import LinearQuant
from sparsetrt.export.quantize import CalibrationPasses, calibrate_with, extract
from sparsetrt.export.settings import QuantSettings
from sparsetrt.modules import decoder_layers, layers_prefix, target_linears
from sparsetrt.prune.sequential import capture_first_layer_inputs, layer_output, progress_bar, to_device
from sparsetrt.prune.streaming import StreamedModel, StreamingHooks

NOT_STREAMED = "needs the whole model in memory; run quantize without --stream for it"


class QuantShards:
    """Integers (int8 holding INT8 or INT4 values, [out, in]), scales and SmoothQuant's input multipliers in
    safetensors files under `directory` (one per Linear under GPTQ, one per block otherwise), read back one Linear
    at a time; the per-tensor activation scales (one number each) stay in memory."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file_of: dict[str, Path] = {}
        self.blocks: dict[str, int | None] = {}
        self.mask_fixes: dict[str, int] = {}
        self.numels: dict[str, int] = {}
        self.input_scales: dict[str, float | None] = {}
        self.output_scales: dict[str, float | None] = {}
        self.has_pre_scale: dict[str, bool] = {}
        self.extras: dict[str, dict] = {}

    def write(self, tag: str, quants: dict[str, LinearQuant]) -> None:
        if not quants:
            return
        path = self.directory / f"{tag}.safetensors"
        tensors = {}
        for name, lq in quants.items():
            tensors[f"{name}.q"] = lq.q.cpu().contiguous()
            tensors[f"{name}.scale"] = lq.scale.cpu().float().contiguous()
            if lq.pre_scale is not None:
                tensors[f"{name}.pre_scale"] = lq.pre_scale.cpu().float().contiguous()
            self.file_of[name], self.blocks[name], self.mask_fixes[name] = path, lq.block, lq.mask_fixes
            self.numels[name] = lq.q.numel()
            self.input_scales[name], self.output_scales[name] = lq.input_scale, lq.output_scale
            self.has_pre_scale[name] = lq.pre_scale is not None
            self.extras[name] = lq.extra
        save_file(tensors, str(path))

    def get(self, name: str) -> LinearQuant:
        with safe_open(str(self.file_of[name]), framework="pt") as handle:
            q, scale = handle.get_tensor(f"{name}.q"), handle.get_tensor(f"{name}.scale")
        return LinearQuant(name, q, scale, self.blocks[name], self.input_scales[name], self.pre_scale(name),
                           self.mask_fixes[name], output_scale=self.output_scales[name], extra=self.extras[name])

    def pre_scale(self, name: str) -> torch.Tensor | None:
        """SmoothQuant's 1/s of Linear `name` (read on its own: the integers are not needed for it)."""
        if not self.has_pre_scale[name]:
            return None
        with safe_open(str(self.file_of[name]), framework="pt") as handle:
            return handle.get_tensor(f"{name}.pre_scale")


def requantize(name: str, q: torch.Tensor, scale: torch.Tensor, block: int, mask: torch.Tensor | None) -> LinearQuant:
    """GPTQ's integers as the in-memory run ends up with them: there Model Optimizer's quantizer gets amax =
    scale x 7 (set_weight_amax) and extract() rounds the dequantized weight with it; the same here, so both
    runs write the same integers and scales bit for bit."""
    weight = qmath.dequantize(q, scale, block)
    amax = (scale.float() * qmath.INT4_MAX).reshape(-1)
    q, scale = qmath.quantize_blockwise(weight, amax, block)
    q, fixes = qmath.keep_mask_zeros(q, mask)
    return LinearQuant(name, q, scale, block, None, None, fixes)


def rounded_to_nearest(name: str, weight: torch.Tensor, block: int, mask: torch.Tensor | None) -> LinearQuant:
    """Model Optimizer's INT4 "max" calibration: per-block amax = max |w|, then round to nearest."""
    q, scale = qmath.quantize_blockwise(weight, qmath.blockwise_amax(weight, block), block)
    q, fixes = qmath.keep_mask_zeros(q, mask)
    return LinearQuant(name, q, scale, block, None, None, fixes)


def quantize_linears_streamed(checkpoint: Path, settings: QuantSettings, windows: torch.Tensor, sparse: set[str],
                              shards: QuantShards, batch_size: int = 4, device: str = "cpu", progress: bool = True,
                              trust_remote_code: bool = False) -> dict[str, float]:
    """Quantize every decoder Linear of `checkpoint` into `shards`, one block in memory at a time. `sparse`: the
    pruned modules (their zeros are the mask held). Returns {name: GPTQ error} (empty without GPTQ)."""
    block = settings.block_size
    if not settings.use_gptq:
        reader = CheckpointReader(checkpoint)
        model = empty_model(checkpoint, torch.float32, trust_remote_code)
        linears, prefix = list(target_linears(model)), layers_prefix(model)
        for index in range(len(decoder_layers(model))):
            names = [n for n in linears if n.startswith(f"{prefix}.{index}.")]
            quants = {}
            for name in names:
                weight = reader.get(f"{name}.weight", torch.float32)
                quants[name] = rounded_to_nearest(name, weight, block, (weight != 0) if name in sparse else None)
            shards.write(f"block-{index:05d}", quants)
        return {}

    streamed = StreamedModel(checkpoint, device, torch.float32, trust_remote_code)
    errors: dict[str, float] = {}
    masks: dict[str, torch.Tensor] = {}

    class QuantizingHooks(StreamingHooks):
        """Streaming's hooks, but a finished block is only dropped: its Linears left as integers, one by one."""

        def done(self, index: int, layer: torch.nn.Module) -> None:
            layer.to("meta")

    def mask_of(name: str, module: torch.nn.Linear):
        if name not in sparse:
            return None
        masks[name] = (module.weight.detach() != 0).cpu()  # the pruned weight, as read: GPTQ has not touched it yet
        return masks[name]

    def write(name: str, q: torch.Tensor, scale: torch.Tensor, error: float) -> None:
        errors[name] = error
        shards.write(name, {name: requantize(name, q, scale, block, masks.pop(name, None))})

    gptq_model(streamed.model, windows, target_linears(streamed.model), mask_of, qmath.INT4_MAX, block,
               batch_size=batch_size, progress=progress, hooks=QuantizingHooks(streamed, None), sink=write)
    return errors


def quantize_tables_streamed(checkpoint: Path, settings: QuantSettings, shards: QuantShards,
                             trust_remote_code: bool = False) -> dict[str, str]:
    """The vocabulary tables rounded as the in-memory run rounds them (no statistics needed), one at a time, each
    into `shards` once done (an untied 8B model's two INT8 tables are 1 GiB, held to the end otherwise).
    Returns {table: its checkpoint tensor name}."""
    if settings.embeddings == "float":
        return {}
    reader = CheckpointReader(checkpoint)
    model = empty_model(checkpoint, torch.float32, trust_remote_code)
    aliases = dict(model.named_parameters(remove_duplicate=False))
    keys = {}
    for name, users in vocabulary_tables(model).items():
        keys[name] = key = checkpoint_key(f"{name}.weight", aliases, reader)
        # Every row is quantized on its own (per-row INT8 scale, INT4 blocks along the row), so row chunks give
        # the whole table's integers while only a chunk is in float (an 8B table is 2.1 GB in fp32, and the
        # rounding's temporaries would be two more of it).
        q = scale = None
        for start, stop in reader.row_chunks(key):
            weight = reader.rows(key, start, stop, torch.float32)
            if settings.embeddings == "int8":
                block = None
                q_rows, scale_rows = qmath.quantize_per_channel(weight, weight.abs().amax(1))
            else:
                block = qmath.int4_block_size(weight.shape[1], settings.block_size, settings.block_fallback)
                q_rows, scale_rows = qmath.quantize_blockwise(weight, qmath.blockwise_amax(weight, block), block)
            if q is None:
                rows = reader.header(key)[0][0]
                q = torch.empty((rows, *q_rows.shape[1:]), dtype=q_rows.dtype)
                scale = torch.empty((rows, *scale_rows.shape[1:]), dtype=scale_rows.dtype)
            q[start:stop], scale[start:stop] = q_rows, scale_rows
        shards.write(f"table-{len(keys):02d}", {name: LinearQuant(name, q, scale, block, None, None,
                                                                 extra={"shared_by": users})})
        del q, scale
    return keys


def calibrate_linears_streamed(checkpoint: Path, settings: QuantSettings, windows: torch.Tensor, sparse: set[str],
                               shards: QuantShards, batch_size: int = 4, device: str = "cpu", progress: bool = True,
                               trust_remote_code: bool = False) -> None:
    """INT8 (W8A8): Model Optimizer's calibration of every decoder Linear of `checkpoint` into `shards`, one block
    in memory at a time. Each pass calibration makes over the whole model in memory (quantize.CalibrationPasses)
    is a stream of block inputs here: block k runs on its stream and its outputs become block k+1's, so every
    block sees what it sees in the whole model's pass (tests/test_quant_stream.py: the same file bit for bit)."""
    streamed = StreamedModel(checkpoint, device, torch.float32, trust_remote_code)
    layers, prefix = streamed.layers, streamed.layers_prefix
    linears = list(target_linears(streamed.model))
    with torch.no_grad():
        first = to_device(capture_first_layer_inputs(streamed.model, layers, windows, batch_size), streamed.device)
    streamed.embedding.to("meta")  # only the capture needed it
    streams = dict.fromkeys(("smooth", "calibrate", "histogram"), first)
    bar = progress_bar(len(layers), f"calibrating {settings.precision} (streamed)", progress)
    for index in range(len(layers)):
        inner = f"{prefix}.{index}."
        names = {name.removeprefix(inner): name for name in linears if name.startswith(inner)}
        load_module(layers[index], f"{prefix}.{index}", streamed.reader, torch.float32, streamed.device)
        block_modules = dict(layers[index].named_modules())
        masks = {short: (block_modules[short].weight.detach() != 0) for short, name in names.items() if name in sparse}
        outputs: dict[str, list] = {}
        passes = CalibrationPasses(*(_block_pass(streams[kind], outputs, kind) for kind in ("smooth", "calibrate",
                                                                                             "histogram")))
        layers[index] = block = calibrate_with(layers[index], {s: block_modules[s] for s in names}, settings, passes)
        converted = dict(block.named_modules())  # Model Optimizer's quantized Linears
        quants = extract({short: converted[short] for short in names}, settings, masks)
        shards.write(f"block-{index:05d}", {names[short]: dataclasses.replace(lq, name=names[short])
                                            for short, lq in quants.items()})
        # a pass the settings do not make (no SmoothQuant, max ranges) is never read again: any stream will do
        streams = {kind: outputs.get(kind, outputs["calibrate"]) for kind in streams}
        block.to("meta")
        bar.update(1)
    bar.close()


def _block_pass(stream: list, outputs: dict, kind: str):
    """One calibration pass over one block: it runs on `stream` ([(hidden, layer kwargs)] per batch) and leaves
    its outputs, the next block's stream of that kind, in outputs[kind]."""
    def run(block: torch.nn.Module) -> None:
        with torch.no_grad():
            outputs[kind] = [(layer_output(block(hidden, **kwargs)), kwargs) for hidden, kwargs in stream]
    return run
