"""Reading and writing checkpoints one tensor at a time, for every stage that must not hold a whole model.

  CheckpointReader        the tensors of a safetensors checkpoint (one file or shards), read one at a time, large
                          ones in row chunks
  empty_model             the model with every parameter on the meta device (no memory), real buffers
  load_module             give a meta module its weights from the checkpoint
  ShardWriter             an output checkpoint written shard by shard, with its index
  streamed_forward_model  a model for evaluation whose blocks read their weights just before their forward and
                          drop them after (a distillation teacher larger than memory)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from sparsetrt.architectures import auto_config, remote_code
from sparsetrt.errors import SparsetrtError
from sparsetrt.modules import decoder_layers

INDEX_FILE = "model.safetensors.index.json"


class CheckpointReader:
    """The tensors of a safetensors checkpoint (one file or shards), read one at a time. Each read maps the file
    and unmaps it again: a mapping left open would keep every page read so far resident (and in the RSS)."""

    def __init__(self, checkpoint: Path):
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
        if name not in self.file_of:
            raise SparsetrtError(f"{self.checkpoint} has no tensor '{name}'; the checkpoint is incomplete")
        file = str(self.file_of[name])
        with safe_open(file, framework="pt") as handle:
            view = handle.get_slice(name)
            shape = view.get_shape()
            stored = _SAFETENSORS_DTYPES.get(view.get_dtype())
            if stored is None or len(shape) < 2 or _nbytes(shape, stored) <= READ_CHUNK_BYTES:
                tensor = handle.get_tensor(name)
                return finite(self.checkpoint, name, tensor.to(device=device, dtype=dtype or tensor.dtype, copy=True))
        out = torch.empty(shape, dtype=dtype or stored)
        for start, stop in self.row_chunks(name):
            out[start:stop].copy_(self.rows(name, start, stop))
        return finite(self.checkpoint, name, out.to(device))

    def header(self, name: str) -> tuple[list[int], torch.dtype | None]:
        """(shape, dtype as stored; None for a dtype torch lacks) of tensor `name`, from its file's header."""
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
                yield finite(self.checkpoint, name, self.rows(name, start, stop, dtype))
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

def finite(checkpoint: Path, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, refused when it holds NaN or infinities: a corrupt checkpoint is named as such, before the
    numbers it would poison are blamed on something else (a singular Hessian, a failed parity)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise SparsetrtError(f"{checkpoint}: weight {name} holds NaN or infinite values; the checkpoint is corrupt "
                             "(re-save or re-download it)")
    return tensor


READ_CHUNK_BYTES = 64 << 20  # a tensor above this is read in row chunks of about this size

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _nbytes(shape, dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()


def empty_model(checkpoint: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """The model of `checkpoint` with every parameter on the meta device (no memory) and real buffers."""
    trust_remote_code = remote_code(trust_remote_code)
    config = auto_config(checkpoint, trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # init_empty_weights re-registers every parameter on meta, undoing the ties made while building
    return model.eval()


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
