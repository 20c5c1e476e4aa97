"""Layer streaming: process a checkpoint whose weights never all sit in memory at once.

The model is built on the meta device (accelerate's init_empty_weights, buffers such as the rotary frequencies
stay real), only the input embedding is read in, and each decoder block is read from the checkpoint's safetensors
(memory-mapped; bf16/fp16 on disk, fp32 while it is processed) just before sequential_update reaches it, then
written into the output checkpoint as a shard of its own and dropped back to meta. Everything outside the blocks
(final norm, lm_head) is copied tensor by tensor. Peak memory is one block in fp32 and its statistics, the
embedding, and the calibration activations, whatever the depth.

The math is sequential_update's, unchanged: a streamed run writes the same tensors as loading the whole model
(tests/test_streaming.py compares them bit for bit).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import GenerationConfig

from sparsetrt.checkpoint import CheckpointReader, ShardWriter, empty_model, load_module
from sparsetrt.modules import decoder_layers, layers_prefix
from sparsetrt.prune.sequential import LayerHooks

SMALL_SHARD_BYTES = 256 << 20  # tensors outside the blocks below this share one shard; larger ones get their own


class StreamedModel:
    """A checkpoint opened for layer streaming: `model` (meta blocks, real input embedding) for the calibration
    capture, `hooks(out)` for sequential_update, then `finish()` writes what lies outside the blocks."""

    def __init__(self, checkpoint: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False):
        self.checkpoint = Path(checkpoint)
        self.dtype = dtype
        self.device = torch.device(device)
        self.reader = CheckpointReader(self.checkpoint)
        self.model = empty_model(self.checkpoint, dtype, trust_remote_code)
        self.layers = decoder_layers(self.model)
        self.layers_prefix = layers_prefix(self.model)
        self.embedding = self.model.get_input_embeddings()
        prefix = next(name for name, mod in self.model.named_modules() if mod is self.embedding)
        load_module(self.embedding, prefix, self.reader, dtype)  # the capture runs it, on the host
        # what lies outside the blocks, copied at the end: big tensors (embedding, lm_head) one shard each, so
        # no more than one of them is in memory at a time
        inside = f"{self.layers_prefix}."
        rest = [n for n in self.reader.names() if not n.startswith(inside)]
        big = [n for n in rest if self.reader.nbytes(n, dtype) > SMALL_SHARD_BYTES]
        self.rest_shards = [[n] for n in big] + ([[n for n in rest if n not in big]] if len(big) < len(rest) else [])
        self.hidden = None  # (plan, order) once a hidden order is chosen: folded into every tensor read after

    def read(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """A tensor of the checkpoint as this run's model has it (the hidden order folded in once chosen)."""
        tensor = self.reader.get(name, self.dtype, device)
        return self.hidden[0].fold_tensor(name, tensor, self.hidden[1]) if self.hidden else tensor

    def hooks(self, out: Path) -> "StreamingHooks":
        return StreamingHooks(self, self.writer_for(out, len(self.layers)))

    def writer_for(self, out: Path, blocks: int) -> ShardWriter:
        """The output's shard writer: `blocks` shards of blocks, then those of what lies outside them."""
        self.writer = ShardWriter(Path(out), blocks + len(self.rest_shards), self.dtype)
        return self.writer

    def finish(self, out: Path, config=None) -> None:
        """Write the tensors outside the blocks (embedding, final norm, lm_head: unchanged, as the checkpoint
        stores them), the config (the model's, or `config` for a reshaped one) and the generation config, and the
        shard index."""
        for names in self.rest_shards:
            self.writer.write({name: self.read(name) for name in names})
        self.writer.finish()
        config = config or self.model.config
        config.dtype = self.dtype  # what loading the whole model in this dtype and saving it records
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(out)
        if self.model.can_generate():
            with contextlib.suppress(OSError):  # a checkpoint without generation_config.json writes none
                GenerationConfig.from_pretrained(self.checkpoint, local_files_only=True).save_pretrained(out)


class StreamingHooks(LayerHooks):
    """Read block `index` from the checkpoint onto the device before it is processed; write it and drop it back
    to meta after."""

    def __init__(self, streamed: StreamedModel, writer: ShardWriter):
        super().__init__(streamed.device)
        self.streamed, self.writer = streamed, writer

    def captured(self) -> None:
        self.streamed.embedding.to("meta")  # only the capture needed it; finish() copies it from the checkpoint

    def load(self, index: int, layer: torch.nn.Module) -> None:
        s = self.streamed
        prefix = f"{s.layers_prefix}.{index}"
        load_module(layer, prefix, s.reader, s.dtype, self.device)
        if s.hidden:
            s.hidden[0].fold(layer, s.hidden[1], prefix)

    def fold_hidden(self, model: torch.nn.Module, plan, perm: torch.Tensor) -> None:
        super().fold_hidden(model, plan, perm)  # what is in memory now: the input embedding
        self.streamed.hidden = (plan, perm)  # every block as it is read, and what finish() copies

    def keep_weight(self, name: str, module: torch.nn.Linear, columns: torch.Tensor | None = None):
        # Each Linear is updated once, by its own group, so before that update its weight is still what load()
        # read (its input channels reordered by `columns` when a permutation was folded in): read it again later
        # rather than hold a copy.
        key, s = f"{name}.weight", self.streamed
        if key not in s.reader.file_of:
            return super().keep_weight(name, module, columns)
        if columns is None:
            return lambda: s.read(key, self.device)
        return lambda: s.read(key, self.device)[:, columns.to(self.device)]

    def done(self, index: int, layer: torch.nn.Module) -> None:
        prefix = f"{self.streamed.layers_prefix}.{index}"
        self.writer.write({f"{prefix}.{name}": t for name, t in layer.state_dict().items()})
        layer.to("meta")

    def release(self, index: int, layer: torch.nn.Module) -> None:
        layer.to("meta")  # read-only pass: nothing to write


