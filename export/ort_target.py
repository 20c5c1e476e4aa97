"""The ONNX Runtime target: a decoder made for ONNX Runtime's CPU provider, from the same checkpoint and the same
integers and scales as the TensorRT-shaped file beside it.

The TensorRT-shaped files (fp32/fp16 export, the Q/DQ rewrite) are what TensorRT needs; ONNX Runtime runs them,
but slowly: fp16 activations through inserted Casts, RMSNorm as five ops, rotary and attention as dozens of small
ops with a cache grown by Concat. This module writes the graph ONNX Runtime's own tools write for a decoder
(ONNX Runtime GenAI's model builder: the same contrib ops, read from its source), with our weights:

  embedding     Gather (a quantized table: Gather of its rows, then (q - zero point) x scale)
  per block     SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (residual add + RMSNorm in one)
                QKV as one MatMul (fused where the three share an input format), RotaryEmbedding on Q and K with
                per-token position ids, GroupQueryAttention over the KV cache, o_proj, the MLP with gate/up fused
  linears       fp32: MatMul; INT4: MatMulNBits (the Q/DQ file's integers and block scales, repacked);
                INT8: the Q/DQ file's static W8A8 (pre-scale, QuantizeLinear/DequantizeLinear, int8 weights)
  lm_head       Gemm (transB: the embedding's table read once) or MatMulNBits over the quantized table

Its inputs and outputs are the exported decoder's (input_ids, attention_mask, position_ids, past_key_values.* ->
logits, present.*, left padding in the mask), so every runner, the generation loop and the batching server use
it unchanged; the mask becomes one additive attention bias shared by every block.

Why a graph of our own and not a rewrite of the exported one: ONNX Runtime's transformer optimizer
(onnxruntime.transformers.optimizer, model types gpt2 and qwen3) fuses only the norms of our dynamo-exported
decoder, neither rotary nor attention; Model Optimizer's GroupQueryAttention surgery
(modelopt.onnx.graph_surgery) matches Optimum's node names and fp16/bf16 graphs; ONNX Runtime GenAI's builder
quantizes the weights itself (its own rounding, not our GPTQ integers with the zeros held). Packing our integers
into MatMulNBits' layout is a few lines of numpy (`pack_matmul_nbits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsetrt.architectures import auto_config, sliding_window
from sparsetrt.checkpoint import CheckpointReader, empty_model
from sparsetrt.errors import SparsetrtError
from sparsetrt.modules import decoder_layers, layers_prefix
from sparsetrt.onnx_io import initializer_array, load_onnx
from sparsetrt.prune.verify import VerifyResult, check_pattern

ORT_OPSET = 21
# Families whose blocks this graph describes exactly (tests/test_ort_target.py runs each against PyTorch).
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
NBITS_ACCURACY_LEVELS = {"int8": 4, "fp32": 1}  # MatMulNBits: int8 activations (ORT GenAI's CPU mode), or float ones
INT8_FORMATS = ("qdq", "nbits", "dynamic")
MIN_FLOAT = float(np.finfo(np.float32).min)     # the attention bias of a masked position (finite: no NaN rows)


@dataclass(frozen=True)
class OrtTargetOptions:
    """How the ONNX Runtime target computes what the file asks for."""

    # MatMulNBits (INT4 Linears, the quantized vocabulary table): int8 rounds the activations to int8 per block inside
    # the kernel (ONNX Runtime GenAI's CPU default: 1.5-2x faster here, numbers a little off the Q/DQ file's); fp32
    # keeps them float (the Q/DQ file's numbers; on x86 its 8-bit kernel dequantizes the whole weight per call)
    nbits_compute: str = "int8"
    # INT8 Linears: qdq, the Q/DQ file's static W8A8 (calibrated activation scales, ORT's MatMulIntegerToFloat);
    # nbits: MatMulNBits 8-bit at nbits_compute; dynamic: DynamicQuantizeLinear -> MatMulInteger (per-tensor scales
    # measured at run time). Only qdq keeps the calibrated activation scales; the other two are for the comparison
    # `sparsetrt bench cpu` makes.
    int8_format: str = "qdq"

    def validate(self) -> "OrtTargetOptions":
        if self.nbits_compute not in NBITS_ACCURACY_LEVELS:
            raise SparsetrtError(f"--ort-compute {self.nbits_compute}: use {' or '.join(NBITS_ACCURACY_LEVELS)}")
        if self.int8_format not in INT8_FORMATS:
            raise SparsetrtError(f"INT8 format '{self.int8_format}' unknown; use {', '.join(INT8_FORMATS)}")
        return self


def check_supported(config, precision: str) -> None:
    """Refuse, before any work, a model or precision the ONNX Runtime target cannot describe, with what to use."""
    family = getattr(config, "model_type", "?")
    if family not in FAMILIES:
        raise SparsetrtError(f"the ONNX Runtime target describes {', '.join(FAMILIES)} decoders, not '{family}'; "
                             "drop the onnxruntime target (the TensorRT-shaped file runs on ONNX Runtime too)")
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in ("longrope", "dynamic"):
        raise SparsetrtError(f"the ONNX Runtime target has one rotary table; '{rope.get('rope_type', rope.get('type'))}' "
                             "rope scaling changes it with the length: drop the onnxruntime target for this model")
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise SparsetrtError("the ONNX Runtime target rotates whole heads; this model rotates part of each: drop the "
                             "onnxruntime target for it")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise SparsetrtError(f"the ONNX Runtime target writes SiLU MLPs, not {config.hidden_act}: drop the onnxruntime "
                             "target for this model")
    if precision not in ("fp32", "int8", "int4"):
        raise SparsetrtError(f"the ONNX Runtime target is written in fp32, int8 or int4, not {precision}")
    check_onnxruntime_version()


# GroupQueryAttention's position_ids and attention_bias inputs run on the CPU provider from 1.22 on (ONNX Runtime
# PR #23944); checked against 1.32. (Its CUDA provider took attention_bias only in 2026: the target is for the CPU.)
MIN_ONNXRUNTIME = (1, 22)


def check_onnxruntime_version(installed: str | None = None) -> None:
    """Refuse, before any work, an onnxruntime too old for the ops the target writes."""
    try:
        installed = installed or metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return  # another build of it (onnxruntime-gpu, ...): its version is what its import reports at run time
    parts = tuple(int(p) for p in installed.split(".")[:2] if p.isdigit())
    if parts < MIN_ONNXRUNTIME:
        raise SparsetrtError(f"the ONNX Runtime target needs onnxruntime >= {'.'.join(map(str, MIN_ONNXRUNTIME))} "
                             f"(GroupQueryAttention with position_ids and an attention bias); this one is {installed}: "
                             "upgrade it, or drop the onnxruntime target")


# ------------------------------------------------------------------------------------------------ the weights

@dataclass
class LinearWeight:
    """One Linear as the target stores it: float [out, in], or the Q/DQ file's integers and scales."""

    kind: str                              # float | int4 | int8
    weight: np.ndarray | None = None       # float [out, in]
    q: np.ndarray | None = None            # int8 [out, in] (int4 values in [-8, 7])
    scale: np.ndarray | None = None        # int4: [out, in / block]; int8: [out]
    block: int | None = None
    input_scale: float | None = None       # int8: the static per-tensor activation scale
    pre_scale: np.ndarray | None = None    # [in]: SmoothQuant's multiplier in front of the quantizer
    bias: np.ndarray | None = None

    @property
    def out_features(self) -> int:
        return (self.weight if self.kind == "float" else self.q).shape[0]

    def dequantized(self) -> np.ndarray:
        """The float weight [out, in] the file computes with (q x s in float32, exact)."""
        if self.kind == "float":
            return self.weight
        if self.kind == "int8":
            return self.q.astype(np.float32) * self.scale[:, None]
        rows, cols = self.q.shape
        blocks = self.q.reshape(rows, cols // self.block, self.block).astype(np.float32)
        return (blocks * self.scale[:, :, None]).reshape(rows, cols)


def concatenated(parts: list[LinearWeight]) -> LinearWeight | None:
    """The Linears stacked along their outputs (one MatMul for Linears sharing an input), or None when their
    formats differ (an INT8 activation scale or pre-scale of its own, a dense one among quantized ones)."""
    first = parts[0]
    if any(p.kind != first.kind or p.block != first.block or p.input_scale != first.input_scale
           or (p.pre_scale is None) != (first.pre_scale is None)
           or (p.pre_scale is not None and not np.array_equal(p.pre_scale, first.pre_scale))
           or (p.bias is None) != (first.bias is None) for p in parts):
        return None
    stack = lambda name: None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return LinearWeight(first.kind, weight=stack("weight"), q=stack("q"), scale=stack("scale"), block=first.block,
                        input_scale=first.input_scale, pre_scale=first.pre_scale, bias=stack("bias"))


class WeightSource:
    """Float tensors from the checkpoint (one at a time), quantized Linears and tables from the Q/DQ file."""

    def __init__(self, checkpoint: Path, qdq: Path | None):
        self.reader = CheckpointReader(checkpoint)
        self.qdq_dir = None if qdq is None else Path(qdq).parent
        self.qdq = {} if qdq is None else {i.name: i for i in load_onnx(qdq).graph.initializer}

    def tensor(self, name: str) -> np.ndarray:
        return self.reader.get(name, torch.float32).numpy()

    def has(self, name: str) -> bool:
        return name in self.reader.file_of

    def _qdq(self, name: str) -> np.ndarray | None:
        tensor = self.qdq.get(name)
        return None if tensor is None else np.asarray(initializer_array(tensor, self.qdq_dir))

    def linear(self, module: str) -> LinearWeight:
        bias = self.tensor(f"{module}.bias") if self.has(f"{module}.bias") else None
        q = self._qdq(f"{module}.weight_quantized")
        if q is None:
            return LinearWeight("float", weight=self.tensor(f"{module}.weight"), bias=bias)
        scale = self._qdq(f"{module}.weight_scale").astype(np.float32)
        q = q.astype(np.int8).T  # the Q/DQ file holds [in, out]: a MatMul's second input
        pre = self._qdq(f"{module}.pre_quant_scale")
        input_scale = self._qdq(f"{module}.input_scale")
        common = dict(q=np.ascontiguousarray(q), bias=bias,
                      pre_scale=None if pre is None else pre.astype(np.float32),
                      input_scale=None if input_scale is None else float(input_scale.astype(np.float32)))
        if scale.ndim == 1:  # per output channel
            return LinearWeight("int8", scale=scale, **common)
        scale = np.ascontiguousarray(scale.T)  # [in / block, out] -> [out, in / block]
        return LinearWeight("int4", scale=scale, block=q.shape[1] // scale.shape[1], **common)

    def table(self, name: str, tensor: str) -> LinearWeight:
        """A vocabulary table [vocab, hidden]: the Q/DQ file's weight-only integers, else the checkpoint's floats."""
        q = self._qdq(f"{name}.weight_quantized")
        if q is None:
            return LinearWeight("float", weight=self.tensor(tensor))
        scale = self._qdq(f"{name}.weight_scale").astype(np.float32)
        q = q.astype(np.int8)
        if q.shape[0] < q.shape[1]:  # stored transposed ([hidden, vocab]): only a MatMul read it
            q, scale = q.T, scale.T
        q, scale = np.ascontiguousarray(q), np.ascontiguousarray(scale)
        if scale.ndim == 1:
            return LinearWeight("int8", q=q, scale=scale)
        return LinearWeight("int4", q=q, scale=scale, block=q.shape[1] // scale.shape[1])


def pack_matmul_nbits(w: LinearWeight, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, scales) in MatMulNBits' layout: B [out, in / block, block * bits / 8] uint8 holding q + 2^(bits-1)
    (its default zero point; the value 0 stays exactly 0), two 4-bit values a byte low nibble first; scales
    [out * in / block] float32. An INT8 per-channel scale is repeated over the blocks of its row."""
    rows, cols = w.q.shape
    blocks = cols // block
    stored = (w.q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(rows, blocks, block)
    if bits == 4:
        stored = stored[..., 0::2] | (stored[..., 1::2] << 4)
    scale = w.scale if w.scale.ndim == 2 else np.repeat(w.scale[:, None], blocks, axis=1)
    return np.ascontiguousarray(stored), np.ascontiguousarray(scale.reshape(-1).astype(np.float32))


def nbits_block(cols: int) -> int:
    """The largest MatMulNBits block (a power of two from 16 to 256) dividing `cols`."""
    for block in (256, 128, 64, 32, 16):
        if cols % block == 0:
            return block
    raise SparsetrtError(f"a hidden size of {cols} has no MatMulNBits block (a power of two >= 16 dividing it)")


# ------------------------------------------------------------------------------------------------- the graph

@dataclass
class Graph:
    """A graph under construction: nodes, initializers, and fresh names."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def constant(self, stem: str, array) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, outputs: int | list[str] = 1,
           domain: str = "", **attrs) -> str | list[str]:
        """Append a node; `outputs`: how many fresh names, or the names themselves (graph outputs)."""
        stem = stem or op_type.lower()
        names = list(outputs) if isinstance(outputs, list) else [self.name(stem) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"{stem}/node"), domain=domain,
                                           **attrs))
        return names[0] if len(names) == 1 and not isinstance(outputs, list) else names


@dataclass(frozen=True)
class Shape:
    """The decoder's dimensions, from its config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    max_positions: int
    windows: tuple  # per layer: its sliding window, or None

    @classmethod
    def of(cls, config) -> "Shape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        window = sliding_window(config)
        # layer_types says which layers slide (Qwen2/3); a Mistral config without it slides everywhere
        types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
        windows = tuple(window if kind == "sliding_attention" else None for kind in types)
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                   config.num_key_value_heads, head_dim, config.vocab_size, float(config.rms_norm_eps),
                   config.max_position_embeddings, windows)


class DecoderGraph:
    """Writes the ONNX Runtime decoder of one model (`write`)."""

    def __init__(self, config, source: WeightSource, model, options: OrtTargetOptions):
        self.config, self.source, self.options = config, source, options
        self.shape = Shape.of(config)
        self.g = Graph()
        self.prefix = layers_prefix(model)
        self.model = model
        self.parts: dict[str, dict] = {}  # Linear -> where its weight lives in the file (for the verification)

    # -- linears

    def linear(self, x: str, w: LinearWeight, stem: str, modules: list[tuple[str, int]] | None = None) -> str:
        """y = x W^T (+ b) in the target's format. `modules`: (name, rows) of the Linears stacked in `w`, in order
        (recorded for the verification of the written file)."""
        fmt = w.kind if w.kind != "int8" else f"int8-{self.options.int8_format}"
        if w.kind == "float":
            weight = self.g.constant(f"{stem}.weight_t", np.ascontiguousarray(w.weight.T))
            y = self.g.op("MatMul", [x, weight], stem)
        elif w.kind == "int4" or fmt == "int8-nbits":
            bits, block = (4, w.block) if w.kind == "int4" else (8, nbits_block(w.q.shape[1]))
            packed, scales = pack_matmul_nbits(w, bits, block)
            weight, scale = self.g.constant(f"{stem}.qweight", packed), self.g.constant(f"{stem}.scales", scales)
            y = self.g.op("MatMulNBits", [self.pre_scaled(x, w, stem), weight, scale], stem, domain="com.microsoft",
                          K=w.q.shape[1], N=w.q.shape[0], bits=bits, block_size=block,
                          accuracy_level=NBITS_ACCURACY_LEVELS[self.options.nbits_compute])
        else:
            y, weight, scale = self.int8_linear(self.pre_scaled(x, w, stem), w, stem, dynamic=fmt == "int8-dynamic")
        start = 0
        for module, rows in modules or []:
            self.parts[module] = {"format": fmt, "weight": weight, "scale": None if w.kind == "float" else scale,
                                  "rows": [start, start + rows]}
            start += rows
        if w.bias is not None:
            y = self.g.op("Add", [y, self.g.constant(f"{stem}.bias", w.bias)], stem)
        return y

    def pre_scaled(self, x: str, w: LinearWeight, stem: str) -> str:
        """SmoothQuant's per-input multiplier, as the Q/DQ file applies it (a Mul in front of the quantizer)."""
        if w.pre_scale is None:
            return x
        return self.g.op("Mul", [x, self.g.constant(f"{stem}.pre_quant_scale", w.pre_scale)], stem)

    def int8_linear(self, x: str, w: LinearWeight, stem: str, dynamic: bool) -> tuple[str, str, str]:
        """(y, the int8 weight [in, out], its per-output scale): initializer names. Static: the Q/DQ file's W8A8
        as it is, which ONNX Runtime's CPU provider runs as one integer GEMM (MatMulIntegerToFloat): the same
        activation rounding, so the same numbers. Dynamic: the activation scale measured per call
        (DynamicQuantizeLinear -> MatMulInteger)."""
        g = self.g
        weight = g.constant(f"{stem}.weight_quantized", np.ascontiguousarray(w.q.T))
        weight_scale = g.constant(f"{stem}.weight_scale", w.scale)
        if dynamic:
            xq, x_scale, x_zero = g.op("DynamicQuantizeLinear", [x], stem, outputs=3)
            acc = g.op("MatMulInteger", [xq, weight, x_zero, g.constant(f"{stem}.zero", np.array(0, np.int8))], stem)
            scales = g.op("Mul", [x_scale, weight_scale], stem)
            return g.op("Mul", [g.op("Cast", [acc], stem, to=TensorProto.FLOAT), scales], stem), weight, weight_scale
        zero = g.constant(f"{stem}.zero", np.array(0, dtype=np.int8))
        scale = g.constant(f"{stem}.input_scale", np.array(w.input_scale, dtype=np.float32))
        xq = g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, scale, zero], stem), scale, zero], stem)
        dq = g.op("DequantizeLinear", [weight, weight_scale], stem, axis=1)
        return g.op("MatMul", [xq, dq], stem), weight, weight_scale

    def fused(self, x: str, modules: list[str], stem: str) -> list[str]:
        """Linears reading one input: one MatMul (split after) where their formats allow, else one each."""
        parts = [self.source.linear(m) for m in modules]
        joined = concatenated(parts) if len(parts) > 1 else None
        if joined is None:
            return [self.linear(x, w, m, [(m, w.out_features)]) for w, m in zip(parts, modules)]
        y = self.linear(x, joined, stem, [(m, p.out_features) for m, p in zip(modules, parts)])
        sizes = self.g.constant(f"{stem}.split", np.array([p.out_features for p in parts], dtype=np.int64))
        return self.g.op("Split", [y, sizes], stem, outputs=len(parts), axis=-1)

    # -- the pieces of a block

    def norm_weight(self, tensor: str) -> str:
        return self.g.constant(tensor, self.source.tensor(tensor))

    def rms(self, x: str, tensor: str) -> str:
        return self.g.op("SimplifiedLayerNormalization", [x, self.norm_weight(tensor)], "norm", axis=-1,
                         epsilon=self.shape.eps, stash_type=1)

    def add_rms(self, x: str, residual: str, tensor: str) -> tuple[str, str]:
        """(RMSNorm(x + residual), x + residual) in one op."""
        normed, _, _, summed = self.g.op("SkipSimplifiedLayerNormalization", [x, residual, self.norm_weight(tensor)],
                                         "skip_norm", outputs=4, domain="com.microsoft", epsilon=self.shape.eps)
        return normed, summed

    def head_norm(self, x: str, heads: int, tensor: str) -> str:
        """Qwen3's RMSNorm over each head of Q or K."""
        s = self.shape
        split = self.g.op("Reshape", [x, self.g.constant("heads_shape", np.array([0, 0, heads, s.head_dim]))])
        normed = self.rms(split, tensor)
        return self.g.op("Reshape", [normed, self.g.constant("hidden_shape", np.array([0, 0, heads * s.head_dim]))])

    def attention(self, i: int, x: str, common: dict) -> tuple[str, str, str]:
        s, g, name = self.shape, self.g, f"{self.prefix}.{i}.self_attn"
        if hasattr(self.model.get_submodule(name), "qkv_proj"):  # Phi-3 stores Q, K, V as one Linear
            fused = self.source.linear(f"{name}.qkv_proj")
            qkv = self.linear(x, fused, f"{name}.qkv_proj", [(f"{name}.qkv_proj", fused.out_features)])
            sizes = g.constant("qkv_split", np.array([s.heads * s.head_dim, *[s.kv_heads * s.head_dim] * 2]))
            q, k, v = g.op("Split", [qkv, sizes], "qkv", outputs=3, axis=-1)
        else:
            q, k, v = self.fused(x, [f"{name}.{p}_proj" for p in "qkv"], f"{name}.qkv")
        if self.source.has(f"{name}.q_norm.weight"):
            q, k = self.head_norm(q, s.heads, f"{name}.q_norm.weight"), self.head_norm(k, s.kv_heads, f"{name}.k_norm.weight")
        q = g.op("RotaryEmbedding", [q, "position_ids", common["cos"], common["sin"]], "rope", domain="com.microsoft")
        k = g.op("RotaryEmbedding", [k, "position_ids", common["cos"], common["sin"]], "rope", domain="com.microsoft")
        bias = common["window_bias"][s.windows[i]] if s.windows[i] else common["bias"]
        out, _, _ = g.op(
            "GroupQueryAttention", [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                                    common["seqlens_k"], common["total_length"], "", "", "", bias],
            "attention", outputs=[g.name("attention"), f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft", num_heads=s.heads, kv_num_heads=s.kv_heads, scale=float(s.head_dim ** -0.5))
        return self.linear_of(out, f"{name}.o_proj")

    def mlp(self, i: int, x: str) -> str:
        g, name = self.g, f"{self.prefix}.{i}.mlp"
        if hasattr(self.model.get_submodule(name), "gate_up_proj"):  # Phi-3: gate and up as one Linear, gate first
            both = self.linear_of(x, f"{name}.gate_up_proj")
            gate, up = g.op("Split", [both], "gate_up", outputs=2, axis=-1, num_outputs=2)
        else:
            gate, up = self.fused(x, [f"{name}.gate_proj", f"{name}.up_proj"], f"{name}.gate_up")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], "silu")], "silu")  # SiLU: x * sigmoid(x)
        return self.linear_of(g.op("Mul", [act, up], "mlp"), f"{name}.down_proj")

    def linear_of(self, x: str, module: str) -> str:
        w = self.source.linear(module)
        return self.linear(x, w, module, [(module, w.out_features)])

    # -- shared inputs of every block

    def common(self) -> dict:
        """Rotary tables, the attention bias from the mask (left padding, causality, sliding windows), and what
        GroupQueryAttention wants to know of the lengths."""
        g, s = self.g, self.shape
        cos, sin = rotary_tables(self.model, s.max_positions)
        int64 = lambda values: g.constant("int", np.array(values, dtype=np.int64))  # noqa: E731
        total = g.op("Gather", [g.op("Shape", ["attention_mask"]), int64(1)], "total", axis=0)
        new = g.op("Gather", [g.op("Shape", ["input_ids"]), int64(1)], "new", axis=0)
        past = g.op("Sub", [total, new], "past")
        keys = g.op("Range", [int64(0), total, int64(1)], "keys")
        queries = g.op("Range", [past, total, int64(1)], "queries")
        k_row, q_col = g.op("Unsqueeze", [keys, int64([0])]), g.op("Unsqueeze", [queries, int64([1])])
        causal = g.op("LessOrEqual", [k_row, q_col], "causal")                                   # [S, T]
        valid = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), int64([1, 2])])  # [B,1,1,T]

        def bias_of(allowed: str) -> str:
            allowed = g.op("And", [g.op("Unsqueeze", [allowed, int64([0, 1])]), valid], "allowed")  # [B, 1, S, T]
            return g.op("Where", [allowed, g.constant("zero", np.array(0, dtype=np.float32)),
                                  g.constant("masked", np.array(MIN_FLOAT, dtype=np.float32))], "bias")

        window_bias = {}
        for window in sorted({w for w in s.windows if w}):
            # a key is visible to a query within `window` positions of it (transformers' sliding mask)
            near = g.op("Greater", [k_row, g.op("Sub", [q_col, int64(window)])], "near")
            window_bias[window] = bias_of(g.op("And", [causal, near]))
        batch = g.op("Gather", [g.op("Shape", ["input_ids"]), int64(0)], "batch", axis=0)
        last = g.op("Cast", [g.op("Sub", [total, int64(1)])], to=TensorProto.INT32)
        return {"cos": g.constant("cos_cache", cos), "sin": g.constant("sin_cache", sin),
                "bias": bias_of(causal), "window_bias": window_bias,
                # every row's cache has every column (left padding is masked by the bias): the same length for all
                "seqlens_k": g.op("Expand", [last, g.op("Unsqueeze", [batch, int64([0])])], "seqlens_k"),
                "total_length": g.op("Cast", [total], "total_length", to=TensorProto.INT32)}

    # -- the whole decoder

    def build(self) -> onnx.ModelProto:
        s = self.shape
        embed = self.model.get_input_embeddings()
        embed_name = next(n for n, m in self.model.named_modules() if m is embed)
        head = self.model.get_output_embeddings()
        head_name = next(n for n, m in self.model.named_modules() if m is head)
        tied = head.weight is embed.weight
        table_key = head_name if tied else embed_name  # the quantize stage names a tied table after the lm_head
        table = self.source.table(table_key, f"{embed_name}.weight")
        table_ref = self.table_constant(table, "embed_table")
        hidden = self.embedding(table, table_ref)
        common = self.common()
        x = self.rms(hidden, f"{self.prefix}.0.input_layernorm.weight")
        for i in range(s.layers):
            attn = self.attention(i, x, common)
            x, hidden = self.add_rms(attn, hidden, f"{self.prefix}.{i}.post_attention_layernorm.weight")
            down = self.mlp(i, x)
            after = (f"{self.prefix}.{i + 1}.input_layernorm.weight" if i + 1 < s.layers
                     else final_norm_name(self.model))
            x, hidden = self.add_rms(down, hidden, after)
        head_table = table if tied else self.source.table(head_name, f"{head_name}.weight")
        head_ref = table_ref if tied else self.table_constant(head_table, "head_table")
        self.lm_head(x, head_table, head_ref)
        return self.model_proto()

    def table_constant(self, table: LinearWeight, stem: str) -> str:
        if table.kind == "float":
            return self.g.constant(stem, table.weight)
        if table.kind != "int8":
            raise SparsetrtError("the ONNX Runtime target reads INT8 or float vocabulary tables; this file's table "
                                 "is INT4: quantize with --embeddings int8 (the default) for the onnxruntime target")
        packed, _ = pack_matmul_nbits(table, 8, nbits_block(table.q.shape[1]))
        return self.g.constant(f"{stem}.qweight", packed)

    def embedding(self, table: LinearWeight, ref: str) -> str:
        """Gather the rows; a quantized table's rows are dequantized after the lookup (its MatMulNBits form, which
        the lm_head reads too, so a tied table is stored once)."""
        g, s = self.g, self.shape
        if table.kind == "float":
            return g.op("Gather", [ref, "input_ids"], "embed")
        rows = g.op("Gather", [ref, "input_ids"], "embed")                           # [B, S, blocks, block] uint8
        flat = g.op("Reshape", [rows, g.constant("embed_shape", np.array([0, 0, s.hidden], dtype=np.int64))])
        values = g.op("Sub", [g.op("Cast", [flat], to=TensorProto.FLOAT),
                              g.constant("zero_point", np.array(128, dtype=np.float32))], "embed")
        row_scales = g.constant("embed_table.row_scales", table.scale[:, None])
        row_scale = g.op("Gather", [row_scales, "input_ids"], "embed")  # [B, S, 1]
        return g.op("Mul", [values, row_scale], "embed")

    def lm_head(self, x: str, table: LinearWeight, ref: str) -> str:
        g, s = self.g, self.shape
        if table.kind == "float":  # Gemm reads the [vocab, hidden] table transposed (prepacked once at load)
            flat = g.op("Reshape", [x, g.constant("rows", np.array([-1, s.hidden], dtype=np.int64))])
            logits = g.op("Gemm", [flat, ref], "lm_head", transB=1)
            shape = g.op("Concat", [g.op("Shape", ["input_ids"]), g.constant("vocab", np.array([s.vocab], np.int64))],
                         axis=0)
            return g.op("Reshape", [logits, shape], outputs=["logits"])
        block = nbits_block(s.hidden)
        scales = g.constant("head_table.scales", pack_matmul_nbits(table, 8, block)[1])
        return g.op("MatMulNBits", [x, ref, scales], outputs=["logits"], domain="com.microsoft", K=s.hidden,
                    N=s.vocab, bits=8, block_size=block,
                    accuracy_level=NBITS_ACCURACY_LEVELS[self.options.nbits_compute])

    def model_proto(self) -> onnx.ModelProto:
        s = self.shape
        past = ["batch", s.kv_heads, "past_sequence", s.head_dim]
        present = ["batch", s.kv_heads, "total_sequence", s.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", s.vocab])]
        for i in range(s.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, past))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
        graph = helper.make_graph(self.g.nodes, "sparsetrt-decoder-ort", inputs, outputs, self.g.initializers)
        model = helper.make_model(graph, producer_name="sparsetrt", opset_imports=[
            helper.make_opsetid("", ORT_OPSET), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        return model


def final_norm_name(model) -> str:
    norm = model.model.norm
    return next(n for n, m in model.named_modules() if m is norm) + ".weight"


def rotary_tables(model, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [positions, head_dim / 2] from the model's own rotary module: its frequencies, its scaling (llama3,
    yarn) and its attention scaling, exactly as the PyTorch reference computes them."""
    rotary = model.model.rotary_emb
    ids = torch.arange(positions)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, ids)
    half = cos.shape[-1] // 2
    return cos[0, :, :half].float().numpy().copy(), sin[0, :, :half].float().numpy().copy()


def write_ort_target(checkpoint: Path, dst: Path, precision: str, qdq: Path | None = None,
                     options: OrtTargetOptions | None = None) -> tuple[dict, dict]:
    """Write the ONNX Runtime decoder of `checkpoint` to `dst` (+ `dst`.data): float weights from the checkpoint,
    a quantized precision's integers and scales from the Q/DQ file `qdq`. Returns (a summary for the manifest,
    {Linear: where its weight lives in the file} for `verify_ort_target`)."""
    options = (options or OrtTargetOptions()).validate()
    config = auto_config(checkpoint)
    check_supported(config, precision)
    if precision != "fp32" and qdq is None:
        raise SparsetrtError(f"the {precision} ONNX Runtime target reads the Q/DQ file's integers: give it")
    model = empty_model(Path(checkpoint))
    decoder_layers(model)  # a layout this module can walk, or one clear line
    builder = DecoderGraph(config, WeightSource(Path(checkpoint), qdq), model, options)
    proto = builder.build()
    save_onnx(proto, Path(dst))
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    summary = {"file": Path(dst).name, "precision": precision, "activations": "fp32", "opset": ORT_OPSET,
               "nbits_compute": options.nbits_compute if "MatMulNBits" in ops else None,
               "int8_format": options.int8_format if precision == "int8" else None, "ops": dict(sorted(ops.items()))}
    return summary, builder.parts


def save_onnx(proto: onnx.ModelProto, dst: Path) -> None:
    """`dst` + `dst`.data (external data: no 2 GB protobuf limit)."""
    data = dst.with_name(dst.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    onnx.save_model(proto, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)


def exact_compute(path: Path) -> onnx.ModelProto:
    """The file at `path` with every MatMulNBits computing in float (accuracy level 1): the graph as written, minus
    the int8 activation rounding its kernels may do, so parity can hold the graph itself to the Q/DQ file's bars."""
    model = load_onnx(path, external_data=True)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = NBITS_ACCURACY_LEVELS["fp32"]
    return model


def unpack_matmul_nbits(packed: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """The float weight [out, in] a MatMulNBits B and its scales hold (default zero point 2^(bits-1))."""
    rows, blocks, _ = packed.shape
    if bits == 4:
        stored = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(rows, blocks, -1)
    else:
        stored = packed
    q = stored.astype(np.int16) - (1 << (bits - 1))
    return (q.astype(np.float32) * scales.reshape(rows, blocks, 1)).reshape(rows, -1)


def verify_ort_target(path: Path, parts: dict[str, dict], checkpoint: Path, qdq: Path | None,
                      sparsity: dict | None) -> VerifyResult:
    """Every Linear of the written target, read back from the file and dequantized: exactly the weight the Q/DQ
    file (or, in fp32, the checkpoint) holds, and with its claimed pattern along the inputs."""
    model = load_onnx(path, external_data=True)
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    source = WeightSource(Path(checkpoint), qdq)
    claimed = (sparsity or {}).get("modules", {})
    result = VerifyResult(f"ONNX Runtime target {path}")
    for module, part in parts.items():
        stored, start, stop = arrays[part["weight"]], *part["rows"]
        if part["format"] == "float":
            weight = stored.T
        elif stored.dtype == np.uint8:  # MatMulNBits: [out, blocks, bytes]
            weight = unpack_matmul_nbits(stored, arrays[part["scale"]], 4 if part["format"] == "int4" else 8)
        else:  # int8 [in, out] and its per-output scale
            weight = (stored.astype(np.float32) * arrays[part["scale"]][None]).T
        weight = weight[start:stop]
        expected = source.linear(module).dequantized()
        result.checked += 1
        if weight.shape != expected.shape or not np.array_equal(weight, expected):
            result.failures.append(f"{module}: its weight in the file differs from the source's")
        elif module in claimed and (problem := check_pattern(module, weight, claimed[module]["pattern"], axis=1)):
            result.failures.append(problem)
    return result
