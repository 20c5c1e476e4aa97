"""One small runner per backend, Polygraphy-style: construct, then call. Chosen by name with `make_runner`.

Every runner speaks the exported decoder's interface (sparsetrt.export.onnx_export):
  step(input_ids, attention_mask, position_ids, cache) -> (logits of the last position [batch, vocab], cache)
  empty_cache(batch)                                    -> the cache a prefill starts from (past length 0)
  logits(input_ids, attention_mask)                     -> logits of every position (parity, perplexity)
  prefill(input_ids, attention_mask)                    -> (logits of every position, cache): the adaptive probe
The cache is whatever the backend keeps between steps (numpy arrays, torch tensors on the GPU, a DynamicCache).
Heavy libraries are imported when a runner is built, not when this module is imported. TensorRT itself is
only touched in sparsetrt.build.engine, the one seam that imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsetrt.errors import SparsetrtError

BACKENDS = ("pytorch", "onnxruntime", "tensorrt")


def position_ids_for(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` columns: count of real tokens before each one (left padding
    gets no position of its own, as in transformers' generate)."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    return np.maximum(positions[:, -new_tokens:], 0).astype(np.int64)


class TorchRunner:
    """The PyTorch reference: eager, fp32 unless told otherwise; on CUDA optionally with 2:4 Linears stored as
    torch.sparse semi-structured tensors, so cuSPARSELt's sparse tensor core kernels run."""

    backend = "pytorch"

    def __init__(self, model, tokenizer=None, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, dtype: str = "float32", device: str = "cpu",
                        semi_structured: bool = False) -> "TorchRunner":
        from sparsetrt.models import load_model

        runner = cls(*load_model(Path(checkpoint), dtype=dtype), device=device)
        if semi_structured:
            to_semi_structured(runner.model)
        return runner

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        import torch

        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return out.float().cpu().numpy()

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """(logits of every position [batch, seq, vocab], cache): a prefill that keeps the whole prompt's
        logits (the adaptive controller's probe reads them) and a cache to decode on from."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        import torch

        def tensor(a):
            return torch.as_tensor(a, dtype=torch.long, device=self.device)

        with torch.inference_mode():
            out = self.model(input_ids=tensor(input_ids), attention_mask=tensor(mask),
                             position_ids=tensor(position_ids_for(mask, input_ids.shape[1])),
                             past_key_values=self.empty_cache(input_ids.shape[0]), use_cache=True)
        return out.logits.float().cpu().numpy(), out.past_key_values

    def empty_cache(self, batch: int):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def step(self, input_ids, attention_mask, position_ids, cache):
        import torch

        def tensor(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.long, device=self.device)

        with torch.inference_mode():
            out = self.model(input_ids=tensor(input_ids), attention_mask=tensor(attention_mask),
                             position_ids=tensor(position_ids), past_key_values=cache, use_cache=True)
        return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def to_semi_structured(model) -> int:
    """Swap every 2:4-sparse Linear weight for torch's semi-structured sparse tensor (CUDA, SM >= 80, fp16/bf16/
    int8); returns how many were swapped. Weights that are not exactly 2:4 stay dense."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    from sparsetrt.prune.masks import nm_violations

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        raise SparsetrtError("semi-structured 2:4 weights need a CUDA GPU with compute capability >= 8.0 (Ampere)")
    swapped = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_cuda and nm_violations(module.weight.detach(), 2, 4)[0] == 0:
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            swapped += 1
    return swapped


class GraphRunner:
    """Shared by the runners of the exported graph (ONNX Runtime, TensorRT): named inputs in, named outputs out.
    Subclasses provide `_run(feeds) -> outputs` and `_empty(shape)` in their own array type."""

    def __init__(self, graph: dict):
        from sparsetrt.export.onnx_export import past_names, present_names

        self.graph = graph
        self.past_names = past_names(graph["layers"])
        self.present_names = present_names(graph["layers"])

    def empty_cache(self, batch: int):
        shape = (batch, self.graph["kv_heads"], 0, self.graph["head_dim"])
        return [self._empty(shape) for _ in self.past_names]

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        feeds = {"input_ids": self._ids(input_ids), "attention_mask": self._ids(attention_mask),
                 "position_ids": self._ids(position_ids), **dict(zip(self.past_names, cache))}
        outputs = self._run(feeds)
        return outputs["logits"], [outputs[name] for name in self.present_names]

    def step(self, input_ids, attention_mask, position_ids, cache):
        logits, cache = self._forward(input_ids, attention_mask, position_ids, cache)
        return self._to_numpy(logits[:, -1]), cache

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        return self.prefill(input_ids, attention_mask)[0]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """(logits of every position [batch, seq, vocab], cache to decode on from)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        logits, cache = self._forward(input_ids, mask, position_ids_for(mask, input_ids.shape[1]),
                                      self.empty_cache(input_ids.shape[0]))
        return self._to_numpy(logits), cache

    def synchronize(self) -> None:
        pass


def graph_interface(graph) -> dict:
    """Layers, KV heads and head size of an exported decoder (an ONNX GraphProto), read from its inputs."""
    from sparsetrt.export.onnx_export import decoder_geometry

    return decoder_geometry({i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                             for i in graph.input})


class OnnxRuntimeRunner(GraphRunner):
    """ONNX Runtime on the CPU (or the first of `providers` that is installed)."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, providers=("CPUExecutionProvider",), threads: int | None = None):
        import onnx
        import onnxruntime as ort

        graph = onnx.load(str(onnx_path), load_external_data=False).graph  # structure only; read once
        super().__init__(graph_interface(graph))
        options = ort.SessionOptions()
        # ORT fuses DequantizeLinear(int4, blocked) + MatMul into its MatMulNBits kernel, which by default
        # quantizes activations to int8 (accuracy level 4): ~0.5 % error that the ONNX graph does not ask
        # for. Level 1 keeps float activations, so ORT computes what the file (and TensorRT) specifies.
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        if threads:
            options.intra_op_num_threads = threads
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        model = fold_table_dequantization(Path(onnx_path), graph)
        self.folded_tables = model is not None
        source = str(onnx_path) if model is None else model.SerializeToString()
        self.session = ort.InferenceSession(source, options, providers=chosen)
        self.providers = self.session.get_providers()
        past = next(i for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.cache_dtype = np.float16 if "float16" in past.type else np.float32

    def _ids(self, array):
        return np.asarray(array, dtype=np.int64)

    def _empty(self, shape):
        return np.zeros(shape, dtype=self.cache_dtype)

    def _run(self, feeds):
        names = ["logits", *self.present_names]
        return dict(zip(names, self.session.run(names, feeds)))

    @staticmethod
    def _to_numpy(array):
        return np.asarray(array).astype(np.float32, copy=False)


def fold_table_dequantization(onnx_path: Path, graph=None):
    """The model with weight-only DequantizeLinear nodes that feed no MatMul directly (the vocabulary table's:
    read by Gather and by Transpose -> MatMul) replaced by their float result, or None when there are none.

    Why: ONNX Runtime's CPU provider fuses DQ -> MatMul but not DQ -> Gather or DQ -> Transpose -> MatMul, and
    keeps DQ nodes out of constant folding (to preserve Q/DQ fusions), so it would dequantize the 28 M-entry
    SmolLM2 table on every decode step (73 % of an INT8 step, measured). Folding once at load is what TensorRT's
    builder does with constant weights; the file on disk stays quantized. Returns None for graphs over 1.5 GB
    (the protobuf limit applies to the in-memory copy); ORT then runs the file as it is. `graph`: the file's
    GraphProto without external data, when the caller has it already."""
    import onnx
    from onnx import numpy_helper

    from sparsetrt.export.onnx_export import onnx_files
    from sparsetrt.export.qdq_onnx import dequantized_weights
    from sparsetrt.prune.verify import consumers_of

    if graph is None:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers = consumers_of(graph)
    inits = {i.name for i in graph.initializer}
    tables = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and not any(user.op_type == "MatMul" for user, _ in consumers.get(n.output[0], []))]
    if not tables or sum(f.stat().st_size for f in onnx_files(onnx_path)) > 1.5e9:
        return None
    model = onnx.load(str(onnx_path), load_external_data=True)
    weights = dequantized_weights(onnx_path, model=model, only={n.output[0] for n in tables})
    folded = {n.output[0]: weights[n.input[0]][0].astype(_np_float(model, n)) for n in tables}
    kept = [n for n in model.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in folded)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in folded.items())
    used = {name for node in model.graph.node for name in node.input}
    survivors = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(survivors)
    return model


def _np_float(model, dq_node):
    """The float type a DequantizeLinear produces: its scale's type."""
    from onnx import helper

    scale = next(i for i in model.graph.initializer if i.name == dq_node.input[1])
    return helper.tensor_dtype_to_np_dtype(scale.data_type)


def make_runner(backend: str, path: str | Path, device: str = "auto", **kwargs):
    """A runner by name: pytorch (checkpoint dir), onnxruntime (.onnx file), tensorrt (.engine file)."""
    if backend == "pytorch":
        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        return TorchRunner.from_checkpoint(Path(path), device=device, **kwargs)
    if backend == "onnxruntime":
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device in ("auto", "cuda") else \
            ("CPUExecutionProvider",)
        return OnnxRuntimeRunner(Path(path), providers=providers, **kwargs)
    if backend == "tensorrt":
        from sparsetrt.build.engine import TensorRTRunner

        return TensorRTRunner(Path(path), **kwargs)
    raise SparsetrtError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
