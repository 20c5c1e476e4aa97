"""Export with bounded memory: the graph is traced on fake tensors and each weight goes from the checkpoint's
safetensors into the external-data file one tensor at a time, in the target precision.

The in-memory export (onnx_export.export_decoder) holds the fp32 model, its fp16 copy, and onnxscript's folded
numpy copy of every Linear's transpose: ~3.3x the fp32 model at peak, ~100 GB for an 8B model. Here:
1. the model is built under a FakeTensorMode (shapes and dtypes only, no storage) and traced by the same
   torch.onnx call with the optimizer off; non-persistent buffers (rotary frequencies) are the real ones of a
   meta-device skeleton, cast as `model.to(dtype)` casts them;
2. every initializer's fake value is replaced by one that reads its tensor from the checkpoint: small tensors
   (<= onnxscript's constant-folding input limit) are read at once, so the optimizer folds and deduplicates them
   exactly as in memory; a large weight whose only consumer is a Transpose (every Linear) becomes an
   onnx_ir.LazyTensor of its transpose, named and annotated as onnxscript's own folding names it; any other
   large weight (an embedding, a tied head) a LazyTensor of itself;
3. torch.onnx's own optimizer runs (it never reads a LazyTensor: all of them are above its size limits), and the
   save writes each LazyTensor chunk by chunk (CheckpointChunks), so part of one weight at a time is in memory.
The result has the in-memory export's nodes and initializers (names, dtypes, values;
tests/test_export_stream.py); only the order of initializers in the file differs.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from onnxscript.optimizer._constant_folding import DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT as FOLD_LIMIT
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from transformers import AutoModelForCausalLM

from sparsetrt.checkpoint import CheckpointReader, empty_model
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.onnx_export import PRECISIONS, keeps_fp32, save_program, trace_decoder

WRAPPER_PREFIX = "model."  # DecoderWithCache holds the HF model as .model: its initializers are named model.<key>
FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"  # the provenance onnxscript's constant folding records


def export_decoder_streamed(checkpoint: Path, path: Path, precision: str = "fp32", opset: int = 21,
                            verbose: bool = False, trust_remote_code: bool = False) -> Path:
    """Export the checkpoint at `checkpoint` to `path` (+ `path`.data) without loading its weights at once."""
    if precision not in PRECISIONS:
        raise SparsetrtError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    reader = CheckpointReader(checkpoint)
    model, buffers = fake_model(checkpoint, dtype, trust_remote_code)
    program = trace_decoder(model, dtype, opset, verbose, optimize=False)
    source_weights(program.model.graph, model, buffers, reader, dtype)
    with contextlib.nullcontext() if verbose else _quiet_optimizer():
        program.optimize()  # what torch.onnx.export(optimize=True) runs, on the graph it would have had
    save_program(program, path)
    return path


def fake_model(checkpoint: Path, dtype: torch.dtype, trust_remote_code: bool = False):
    """(model, buffers): the checkpoint's model with fake parameters in `dtype`, and its buffers' real values as
    an fp16 export has them (computed in fp32 at construction, floating ones cast but those keeps_fp32 names)."""
    skeleton = empty_model(checkpoint, torch.float32, trust_remote_code)
    buffers = {}
    for module_name, module in skeleton.named_modules():
        for name, b in module._buffers.items():
            if b is not None:
                cast = b.is_floating_point() and not keeps_fp32(module, name)
                buffers[f"{module_name}.{name}" if module_name else name] = b.to(dtype) if cast else b
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = AutoModelForCausalLM.from_config(skeleton.config, dtype=dtype, trust_remote_code=trust_remote_code)
    for module_name, module in model.named_modules():
        for name in module._buffers:
            full = f"{module_name}.{name}" if module_name else name
            if module._buffers[name] is not None:
                module._buffers[name] = fake.from_tensor(buffers[full])
    return model.eval(), buffers


def source_weights(graph, model: torch.nn.Module, buffers: dict, reader, dtype: torch.dtype) -> None:
    """Give every initializer of the traced graph (fake values) its data from the checkpoint (see module doc)."""
    aliases = dict(model.named_parameters(remove_duplicate=False))
    for name, value in list(graph.initializers.items()):
        if not isinstance(getattr(value.const_value, "raw", None), FakeTensor):
            continue  # a constant the trace made itself (real data already)
        key = name.removeprefix(WRAPPER_PREFIX)
        if key in buffers:
            value.const_value = ir.Tensor(buffers[key].numpy(), name=name)
            continue
        key = checkpoint_key(key, aliases, reader)
        fake = value.const_value
        if fake.size <= FOLD_LIMIT:
            value.const_value = ir.Tensor(reader.get(key, dtype).numpy(), name=name)
            continue
        uses = value.uses()
        node = uses[0].node if len(uses) == 1 else None
        if node is not None and node.op_type == "Transpose" and list(node.attributes["perm"].as_ints()) == [1, 0]:
            # fold it as onnxscript would (its output becomes the initializer, same name), but lazily
            folded = node.outputs[0]
            shape = ir.Shape([fake.shape[1], fake.shape[0]])
            replacement = ir.Value(name=folded.name, shape=shape, type=ir.TensorType(fake.dtype),
                                   const_value=_lazy(reader, key, dtype, fake.dtype, shape, transpose=True))
            replacement.metadata_props[FOLDED_FROM] = repr([name])
            folded.replace_all_uses_with(replacement)
            graph.remove(node, safe=True)
            graph.initializers.pop(name)
            graph.register_initializer(replacement)
        else:
            value.const_value = _lazy(reader, key, dtype, fake.dtype, fake.shape, transpose=False)


def checkpoint_key(key: str, aliases: dict, reader) -> str:
    """The checkpoint's name for parameter `key` (a tied head is stored under its embedding's name)."""
    if key in reader.file_of:
        return key
    param = aliases.get(key)
    stored = [n for n, p in aliases.items() if p is param and n in reader.file_of] if param is not None else []
    if not stored:
        raise SparsetrtError(f"the ONNX graph needs '{key}', which {reader.checkpoint} does not hold; export this "
                             "model without --stream")
    return stored[0]


def _lazy(reader, key: str, dtype: torch.dtype, ir_dtype, shape, transpose: bool):
    # cache=False: evaluated while saving, then dropped
    return ir.LazyTensor(lambda: CheckpointChunks(reader, key, dtype, transpose), dtype=ir_dtype, shape=shape)


class CheckpointChunks:
    """What a lazy weight evaluates to: checkpoint tensor `key` cast to `dtype` (transposed if folded), which the
    save writes into the external-data file chunk by chunk (onnx_ir calls tofile; CheckpointReader.chunks), so
    part of it is in memory rather than all of it (an 8B lm_head read whole in fp32 is 2 GiB, and its transpose 2
    more: the peak of the streamed fp32 export). The bytes are the whole tensor's (each value is only cast), which
    tests/test_export_stream.py checks with chunks smaller than a row."""

    def __init__(self, reader, key: str, dtype: torch.dtype, transpose: bool):
        self.reader, self.key, self.dtype, self.transpose = reader, key, dtype, transpose

    def chunks(self):
        return self.reader.chunks(self.key, self.dtype, self.transpose)

    def tofile(self, file) -> None:
        for chunk in self.chunks():
            file.write(memoryview(chunk.numpy()).cast("B"))

    def numpy(self):
        return np.concatenate([chunk.numpy() for chunk in self.chunks()])

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def tobytes(self) -> bytes:
        return self.numpy().tobytes()


@contextlib.contextmanager
def _quiet_optimizer():
    log = logging.getLogger("onnxscript")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
