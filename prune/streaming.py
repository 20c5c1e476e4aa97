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
import json
from pathlib import Path

import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.sequential import LayerHooks, decoder_layers

INDEX_FILE = "model.safetensors.index.json"


class CheckpointReader:
    """The tensors of a safetensors checkpoint (one file or shards), read one at a time. Each read maps the file
    and unmaps it again: a mapping left open would keep every page read so far resident (and in the RSS)."""

    def __init__(self, checkpoint: Path):
        from safetensors import safe_open

        self.checkpoint = Path(checkpoint)
        files = sorted(self.checkpoint.glob("*.safetensors"))
        if not files:
            raise SparsetrtError(f"{self.checkpoint} has no .safetensors weights: layer streaming reads safetensors "
                                 "(convert the checkpoint with save_pretrained, or run this stage without --stream)")
        self.file_of: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                self.file_of.update(dict.fromkeys(handle.keys(), file))

    def names(self) -> list[str]:
        return list(self.file_of)

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """A copy of the tensor (never a view into the map: pruning writes into it), cast and placed.

        A large tensor is read in row chunks straight into its cast copy, the file mapped once per chunk: reading
        it whole held the mapped pages, the on-disk copy and the cast copy at once (an 8B embedding: 1 GB mapped
        + 1 GB bf16 + 2 GB fp32, the peak of a streamed run). The values are the same casts either way."""
        from safetensors import safe_open

        if name not in self.file_of:
            raise SparsetrtError(f"{self.checkpoint} has no tensor '{name}'; the checkpoint is incomplete")
        file = str(self.file_of[name])
        with safe_open(file, framework="pt") as handle:
            view = handle.get_slice(name)
            shape = view.get_shape()
            stored = _SAFETENSORS_DTYPES.get(view.get_dtype())
            if stored is None or len(shape) < 2 or _nbytes(shape, stored) <= READ_CHUNK_BYTES:
                tensor = handle.get_tensor(name)
                return tensor.to(device=device, dtype=dtype or tensor.dtype, copy=True)
        out = torch.empty(shape, dtype=dtype or stored)
        for start, stop in self.row_chunks(name):
            out[start:stop].copy_(self.rows(name, start, stop))
        return out.to(device)

    def header(self, name: str) -> tuple[list[int], torch.dtype | None]:
        """(shape, dtype as stored; None for a dtype torch lacks) of tensor `name`, from its file's header."""
        from safetensors import safe_open

        with safe_open(str(self.file_of[name]), framework="pt") as handle:
            view = handle.get_slice(name)
            return view.get_shape(), _SAFETENSORS_DTYPES.get(view.get_dtype())

    def row_chunks(self, name: str) -> list[tuple[int, int]]:
        """(start, stop) row ranges of tensor `name` of about READ_CHUNK_BYTES each."""
        shape, stored = self.header(name)
        rows = max(1, READ_CHUNK_BYTES // max(1, _nbytes(shape[1:], stored or torch.float32)))
        return [(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]

    def rows(self, name: str, start: int, stop: int, dtype: torch.dtype | None = None,
             columns: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows start:stop of tensor `name` (only columns[0]:columns[1] of them if given), cast to `dtype`; the file
        is mapped only while they are read."""
        from safetensors import safe_open

        with safe_open(str(self.file_of[name]), framework="pt") as handle:
            view = handle.get_slice(name)
            chunk = view[start:stop] if columns is None else view[start:stop, columns[0]:columns[1]]
        return chunk if dtype is None else chunk.to(dtype)

    def chunks(self, name: str, dtype: torch.dtype, transpose: bool = False):
        """Consecutive row chunks (C order) of tensor `name` cast to `dtype`, or of its transpose (a 2-D tensor), of
        about READ_CHUNK_BYTES each: what writes or hashes a large tensor without holding it (an 8B vocabulary
        table is 2 GiB in fp32, its transpose 2 more). A chunk of the transpose is a band of the tensor's columns,
        gathered row chunk by row chunk, so the file is mapped a row chunk at a time either way."""
        row_chunks = self.row_chunks(name)
        if not transpose:
            for start, stop in row_chunks:
                yield self.rows(name, start, stop, dtype)
            return
        rows, cols = self.header(name)[0]
        width = max(1, READ_CHUNK_BYTES // (rows * dtype.itemsize))
        for first in range(0, cols, width):
            band = torch.empty((min(first + width, cols) - first, rows), dtype=dtype)
            for start, stop in row_chunks:
                band[:, start:stop] = self.rows(name, start, stop, dtype, (first, first + width)).t()
            yield band

    def nbytes(self, name: str, dtype: torch.dtype) -> int:
        return _nbytes(self.header(name)[0], dtype)


READ_CHUNK_BYTES = 64 << 20  # a tensor above this is read in row chunks of about this size
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _nbytes(shape, dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()


def empty_model(checkpoint: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """The model of `checkpoint` with every parameter on the meta device (no memory) and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # init_empty_weights re-registers every parameter on meta, undoing the ties made while building
    return model.eval()


def layers_prefix(model: torch.nn.Module) -> str:
    """The module name of `model`'s decoder block list (e.g. "model.layers"): block k's tensors are "<prefix>.k.*"."""
    layers = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def load_module(module: torch.nn.Module, prefix: str, reader: CheckpointReader, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> None:
    """Give `module` (on meta) its weights from the checkpoint: every parameter and persistent buffer under
    `prefix`, cast to `dtype`, on `device`."""
    state = {name: reader.get(f"{prefix}.{name}", dtype, device) for name in module.state_dict()}
    module.load_state_dict(state, assign=True, strict=True)


class ShardWriter:
    """The output checkpoint written shard by shard (model-0000k-of-0000n.safetensors + the index file), so a
    block's weights leave memory as soon as they are final."""

    def __init__(self, out: Path, shards: int, dtype: torch.dtype):
        self.out, self.shards, self.dtype = Path(out), shards, dtype
        self.written = 0
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.written += 1
        if self.written > self.shards:
            raise SparsetrtError(f"internal: more than the {self.shards} shards planned")
        name = f"model-{self.written:05d}-of-{self.shards:05d}.safetensors"
        tensors = {k: v.detach().to("cpu", self.dtype).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(self.out / name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            self.weight_map[key] = name
            self.total_size += tensor.numel() * tensor.element_size()

    def finish(self) -> None:
        if self.written != self.shards:
            raise SparsetrtError(f"internal: {self.written} shards written of {self.shards}")
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


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
            self.writer.write({name: self.reader.get(name, self.dtype) for name in names})
        self.writer.finish()
        config = config or self.model.config
        config.dtype = self.dtype  # what loading the whole model in this dtype and saving it records
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(out)
        if self.model.can_generate():
            from transformers import GenerationConfig

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
        load_module(layer, f"{s.layers_prefix}.{index}", s.reader, s.dtype, self.device)

    def keep_weight(self, name: str, module: torch.nn.Linear):
        # Each Linear is updated once, by its own group, so before that update its weight is still what load()
        # read: read it again later rather than hold a copy.
        key, s = f"{name}.weight", self.streamed
        if key not in s.reader.file_of:
            return super().keep_weight(name, module)
        return lambda: s.reader.get(key, s.dtype, self.device)

    def done(self, index: int, layer: torch.nn.Module) -> None:
        prefix = f"{self.streamed.layers_prefix}.{index}"
        self.writer.write({f"{prefix}.{name}": t for name, t in layer.state_dict().items()})
        layer.to("meta")


def streamed_forward_model(checkpoint: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                           trust_remote_code: bool = False) -> torch.nn.Module:
    """The model of `checkpoint` for evaluation only (a distillation teacher): on the meta device, each decoder block
    and each weight-holding module outside the blocks (embedding, final norm, lm_head) reading its weights from the
    checkpoint just before its forward runs and dropping them after. Memory is one block in `dtype` and the
    activations; each forward reads the whole checkpoint once (from the page cache when it fits). The outputs are
    those of the model loaded whole in `dtype`: the same casts of the same tensors run through the same modules."""
    reader = CheckpointReader(Path(checkpoint))
    model = empty_model(Path(checkpoint), dtype, trust_remote_code)
    layers = decoder_layers(model)
    inside = {id(m) for layer in layers for m in layer.modules()}
    units = list(layers) + [m for m in model.modules() if id(m) not in inside
                            and next(m.parameters(recurse=False), None) is not None]
    names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    # a tied lm_head has no tensor of its own in the checkpoint: it reads the one its parameter is tied to
    stored = {id(p): name for name, p in model.named_parameters(remove_duplicate=False) if name in reader.file_of}
    covered = set()
    for unit in units:
        params = dict(unit.named_parameters(remove_duplicate=False))
        keys = {local: stored.get(id(params[local])) if local in params else f"{names[id(unit)]}.{local}"
                for local in unit.state_dict()}
        missing = [f"{names[id(unit)]}.{local}" for local, key in keys.items() if key is None or key not in reader.file_of]
        if missing:
            raise SparsetrtError(f"{checkpoint} has no tensor '{missing[0]}'; the checkpoint is incomplete")
        covered |= {id(p) for p in params.values()}
        unit.register_forward_pre_hook(_reader_of(keys, reader, dtype, device))
        unit.register_forward_hook(_drop_weights)
    left = [name for name, p in model.named_parameters() if id(p) not in covered]
    if left:
        raise SparsetrtError(f"cannot stream this architecture's forward: '{left[0]}' lies in no decoder block or "
                             "leaf module; run without streaming")
    return model


def _drop_weights(module, args, output) -> None:
    module.to("meta")  # returns the module, which a forward hook must not (its return value replaces the output)


def _reader_of(keys: dict[str, str], reader: CheckpointReader, dtype: torch.dtype, device):
    def load(module, args):
        module.load_state_dict({local: reader.get(key, dtype, device) for local, key in keys.items()},
                               assign=True, strict=True)
    return load
