"""TensorRT-LLM checkpoints (config.json + rank<N>.safetensors) for the quantized model, and their check.

Writing is Model Optimizer's `export_tensorrt_llm_checkpoint` (the reference exporter; it runs on the CPU).
Our part is what it does not do: refuse tensor-parallel sizes the model cannot be split into with a clear
reason before any work, check the result against TensorRT-LLM's documented checkpoint format
(docs/source/architecture/checkpoint.md: names, shapes, dtypes, per-rank split), prove every 2:4 weight is
still 2:4 after the integers are unpacked, and write the `trtllm-build` command beside it.

trtllm-build is TensorRT-LLM's legacy TensorRT flow, being removed upstream; `--weight_sparsity` needs a
release that still ships it (TRTLLM_RELEASE below).
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import torch
from safetensors import safe_open

from sparsetrt.architectures import FAMILIES, max_positions, sliding_window
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.quantize import import_modelopt
from sparsetrt.lazy import lazy_import
from sparsetrt.prune.verify import check_pattern

# loaded on first use, after import_modelopt() has imported Model Optimizer with its version warning filtered
modelopt_export = lazy_import("modelopt.torch.export", "pip install nvidia-modelopt")

TRTLLM_RELEASE = "tensorrt_llm==0.20.0"  # a release with trtllm-build --weight_sparsity (legacy TRT flow)
DOCUMENTED_QUANT_ALGOS = {"W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W4A16_GPTQ", "FP8", "W8A8_SQ_PER_CHANNEL"}
MANDATORY_CONFIG = ("architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "hidden_act")
# HF model type -> Model Optimizer's decoder type, from the one table of supported families.
# TensorRT-LLM 0.20's RotaryScalingType names: the "type" its config reader accepts in rotary_scaling.
ROTARY_SCALING_TYPES = ("none", "linear", "dynamic", "longrope", "llama3", "yarn", "mrope")
DECODER_TYPES = {model_type: family.trtllm for model_type, family in FAMILIES.items() if family.trtllm}
# HF Llama module -> TensorRT-LLM layer name (q, k, v are fused into qkv; gate_proj is `fc`, up_proj `gate`).
LAYER_NAMES = {"self_attn.q_proj": "attention.qkv", "self_attn.k_proj": "attention.qkv",
               "self_attn.v_proj": "attention.qkv", "self_attn.o_proj": "attention.dense",
               "mlp.gate_proj": "mlp.fc", "mlp.up_proj": "mlp.gate", "mlp.down_proj": "mlp.proj"}


def unsupported_reason(config) -> str | None:
    """Why no TensorRT-LLM checkpoint can be written for this model (None: it can), known before any work."""
    model_type = getattr(config, "model_type", "")
    if model_type not in DECODER_TYPES:
        return (f"Model Optimizer's TensorRT-LLM exporter is wired here for {', '.join(sorted(DECODER_TYPES))} "
                f"decoders, not '{model_type}'")
    window = sliding_window(config)
    if window is not None and window < (max_positions(config) or window + 1):
        return (f"its layers attend over a sliding window of {window} tokens, which the checkpoint format has no "
                "field for (an engine built from it would attend over the whole context)")
    return None


def rope_settings(config) -> dict:
    """TensorRT-LLM's rotary settings for an HF config: rotary_base (rope_theta) and, for a non-default rope
    (llama3, linear, dynamic, yarn ...), rotary_scaling as the HF config states it; None for a plain rope, since
    transformers 5 reports even an unscaled rope as {"rope_type": "default"}, a type TensorRT-LLM refuses."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    scaling = params if params.get("rope_type", "default") != "default" else getattr(config, "rope_scaling", None)
    scaling = {k: v for k, v in (scaling or {}).items() if k != "rope_theta"}
    kind = scaling.get("type") or scaling.get("rope_type") or "default"
    return {"rotary_base": float(theta), "rotary_scaling": None if kind == "default" else {"type": kind, **scaling}}


def rotary_scaling_problem(written: dict) -> str | None:
    """What TensorRT-LLM's config reader would raise on config.json's rotary_scaling: it reads the dict's "type"
    into its RotaryScalingType enum, whose names are fixed (no "default")."""
    scaling = written.get("rotary_scaling")
    if scaling is None:
        return None
    kind = scaling.get("type") if isinstance(scaling, dict) else None
    if kind not in ROTARY_SCALING_TYPES:
        return (f"config.json's rotary_scaling type {kind!r} is not one TensorRT-LLM reads "
                f"({', '.join(ROTARY_SCALING_TYPES)})")
    return None


def complete_config(directory: Path, config) -> dict:
    """Set in the checkpoint's config.json the rotary settings the exporter leaves out (they change every
    attention score of a llama3-rope model) and drop the unscaled rotary_scaling it copies from transformers 5's
    config; returns what changed (None: removed)."""
    path = directory / "config.json"
    written = json.loads(path.read_text())
    changed = {k: v for k, v in rope_settings(config).items() if written.get(k) != v and (v is not None or k in written)}
    if changed:
        kept = {k: v for k, v in written.items() if k not in changed}
        path.write_text(json.dumps({**kept, **{k: v for k, v in changed.items() if v is not None}}, indent=2) + "\n")
    return changed


def check_tp(config, tp: int, precision: str, group_size: int | None) -> None:
    """Refuse a tensor-parallel size the model's shapes do not split into (before any work)."""
    if tp < 1 or tp & (tp - 1):
        raise SparsetrtError(f"tensor-parallel size must be a power of two >= 1, got {tp}")
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    problems = []
    if heads % tp:
        problems.append(f"{heads} attention heads do not split over {tp} ranks")
    if kv % tp:  # replicating KV heads would duplicate per-channel scales, which the exporter refuses
        problems.append(f"{kv} key/value heads do not split over {tp} ranks")
    for what, size in (("intermediate size", config.intermediate_size), ("hidden size", config.hidden_size)):
        if size % tp:
            problems.append(f"{what} {size} does not split over {tp} ranks")
        elif precision == "int4" and group_size and (size // tp) % group_size:
            problems.append(f"{what} {size} / {tp} ranks = {size // tp} is not a multiple of the INT4 group size {group_size}")
    if problems:
        raise SparsetrtError(f"cannot write a tp={tp} TensorRT-LLM checkpoint: {'; '.join(problems)}; use --tp 1")


@contextlib.contextmanager
def _quiet_unless(verbose: bool):
    """Model Optimizer's exporters print progress and warnings on both streams: keep them off the user's screen."""
    if verbose:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def write_trtllm_checkpoint(model, out: Path, tp: int, dtype: torch.dtype = torch.float16, verbose: bool = False) -> None:
    import_modelopt()  # the same import, with its version warning filtered

    model_type = getattr(model.config, "model_type", "")
    if model_type not in DECODER_TYPES:
        raise SparsetrtError(f"TensorRT-LLM checkpoint export supports {', '.join(DECODER_TYPES)} models, "
                             f"not '{model_type}'")
    with _quiet_unless(verbose), torch.no_grad():
        modelopt_export.export_tensorrt_llm_checkpoint(model, DECODER_TYPES[model_type], dtype, export_dir=str(out),
                                       inference_tensor_parallel=tp)


HF_QUANT_ALGOS = {"int8": ("W8A8_SQ_PER_CHANNEL", "INT8_SQ", "W8A8"), "int4": ("W4A16_AWQ", "W4A16", "INT4_AWQ")}
NO_SPARSE_KERNELS_NOTE = ("TensorRT-LLM's PyTorch backend loads this checkpoint (trtllm-serve, LLM(model=...)); no "
                          "2:4 kernels are documented on that path, so the zeros are kept but not accelerated there")


def write_hf_checkpoint(model, out: Path, verbose: bool = False) -> None:
    """Model Optimizer's unified Hugging Face checkpoint (config.json, hf_quant_config.json, safetensors): what
    TensorRT-LLM 1.x loads since its TensorRT engine backend was removed (mid-2026)."""
    import_modelopt()

    with _quiet_unless(verbose), torch.no_grad():
        modelopt_export.export_hf_checkpoint(model, dtype=torch.float16, export_dir=str(out))


def validate_hf_checkpoint(directory: Path, precision: str, sparsity: dict | None = None) -> dict:
    """Check `directory` against the unified checkpoint's documented layout (Model Optimizer's deployment docs:
    a loadable HF config.json, hf_quant_config.json naming the producer and a quant_algo TensorRT-LLM knows,
    safetensors weights), and that every pruned module's integers still hold its pattern (INT8 as (out, in);
    INT4 packed two output rows per byte, as in the TensorRT-LLM checkpoint). Returns a summary, raises with what
    is wrong."""
    problems = []
    for name in ("config.json", "hf_quant_config.json"):
        if not (directory / name).is_file():
            problems.append(f"{name} is missing")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        problems.append("no *.safetensors weights")
    quant = {}
    if (directory / "hf_quant_config.json").is_file():
        quant_config = json.loads((directory / "hf_quant_config.json").read_text())
        quant = quant_config.get("quantization") or {}
        if (quant_config.get("producer") or {}).get("name") != "modelopt":
            problems.append("hf_quant_config.json does not name modelopt as its producer")
        if quant.get("quant_algo") not in HF_QUANT_ALGOS[precision]:
            problems.append(f"quant_algo {quant.get('quant_algo')!r} is not one of {HF_QUANT_ALGOS[precision]} for "
                            f"{precision}")
    if (directory / "config.json").is_file() and "model_type" not in json.loads((directory / "config.json").read_text()):
        problems.append("config.json has no model_type (transformers could not load it)")
    checked = 0
    claims = {f"{name}.weight": info["pattern"] for name, info in ((sparsity or {}).get("modules") or {}).items()}
    for path in weights:
        with safe_open(str(path), framework="pt") as f:
            for key in claims.keys() & set(f.keys()):
                w = f.get_tensor(key)
                if w.dtype not in (torch.int8, torch.uint8):
                    problems.append(f"{key} is {w.dtype}, expected integers")
                    continue
                values = unpack_int4_rows(w) if precision == "int4" else w.to(torch.int16)
                checked += 1
                if problem := check_pattern(key, values.numpy(), claims[key], axis=1):
                    problems.append(problem)
    if claims and not checked:
        problems.append("none of the pruned modules' weights is in the checkpoint")
    if problems:
        raise SparsetrtError(f"unified checkpoint {directory} does not match the documented layout: "
                             f"{'; '.join(problems)}")
    return {"quant_algo": quant.get("quant_algo"), "group_size": quant.get("group_size"),
            "files": [w.name for w in weights], "sparse_linears_checked": checked, "note": NO_SPARSE_KERNELS_NOTE}


def serve_command(checkpoint_dir: str) -> str:
    return " ".join(shlex.quote(a) for a in ["trtllm-serve", checkpoint_dir, "--backend", "pytorch", "--host",
                                             "127.0.0.1", "--port", "8000"])


def build_command(checkpoint_dir: str, engine_dir: str, max_batch_size: int = 8, max_input_len: int = 512,
                  max_seq_len: int = 1024) -> str:
    args = ["trtllm-build", "--checkpoint_dir", checkpoint_dir, "--output_dir", engine_dir, "--weight_sparsity",
            "--gemm_plugin", "auto", "--max_batch_size", str(max_batch_size), "--max_input_len", str(max_input_len),
            "--max_seq_len", str(max_seq_len)]
    return " ".join(shlex.quote(a) for a in args)


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """Model Optimizer's packed INT4 layout, (out/2, in) bytes, two output rows per byte (row 2k in the low
    nibble) -> (out, in) signed values."""
    b = packed.view(torch.uint8).to(torch.int16)
    low, high = b & 0xF, (b >> 4) & 0xF
    low, high = torch.where(low >= 8, low - 16, low), torch.where(high >= 8, high - 16, high)
    return torch.stack([low, high], dim=1).reshape(-1, packed.shape[1])


def expected_shapes(config, tp: int) -> dict[str, tuple[int, int]]:
    """(out, in) of each fused TensorRT-LLM Linear on one rank."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"attention.qkv": ((heads + 2 * kv) // tp * head_dim, config.hidden_size),
            "attention.dense": (config.hidden_size, heads * head_dim // tp),
            "mlp.fc": (config.intermediate_size // tp, config.hidden_size),
            "mlp.gate": (config.intermediate_size // tp, config.hidden_size),
            "mlp.proj": (config.hidden_size, config.intermediate_size // tp)}


def validate_checkpoint(directory: Path, config, tp: int, precision: str, sparse_layers: dict[str, str]) -> dict:
    """Check `directory` against the documented layout and the sparsity claims; returns a summary.

    sparse_layers: TensorRT-LLM layer prefix ("transformer.layers.0.attention.qkv") -> pattern ("2:4"),
    for layers whose every source module was pruned.
    """
    cfg = json.loads((directory / "config.json").read_text())
    problems = [f"config.json lacks '{k}'" for k in MANDATORY_CONFIG if k not in cfg]
    problems += [f"config.json has {key} {cfg.get(key)!r}, the model {value!r}"
                 for key, value in rope_settings(config).items() if cfg.get(key) != value]
    problems += [problem for problem in [rotary_scaling_problem(cfg)] if problem]
    mapping = cfg.get("mapping", {})
    if mapping.get("world_size") != tp or mapping.get("tp_size", 1) != tp:
        problems.append(f"mapping {mapping} does not say world_size = tp_size = {tp}")
    quant = cfg.get("quantization") or {}
    algo = quant.get("quant_algo")
    if algo not in DOCUMENTED_QUANT_ALGOS:
        problems.append(f"quant_algo {algo!r} is not one TensorRT-LLM documents")
    want_algo = {"int8": "W8A8_SQ_PER_CHANNEL", "int4": ("W4A16", "W4A16_AWQ")}[precision]
    if algo not in (want_algo if isinstance(want_algo, tuple) else (want_algo,)):
        problems.append(f"quant_algo {algo!r} does not match precision {precision}")
    shapes = expected_shapes(config, tp)
    checked = sparse_checked = 0
    for rank in range(tp):
        path = directory / f"rank{rank}.safetensors"
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for required in ("transformer.vocab_embedding.weight", "transformer.ln_f.weight", "lm_head.weight"):
                if required not in names:
                    problems.append(f"{path.name}: {required} missing")
            for layer in range(config.num_hidden_layers):
                for norm in ("input_layernorm", "post_layernorm"):
                    if f"transformer.layers.{layer}.{norm}.weight" not in names:
                        problems.append(f"{path.name}: transformer.layers.{layer}.{norm}.weight missing")
                for short, (rows, cols) in shapes.items():
                    prefix = f"transformer.layers.{layer}.{short}"
                    key = f"{prefix}.weight"
                    if key not in names:
                        problems.append(f"{path.name}: {key} missing")
                        continue
                    w = f.get_tensor(key)
                    checked += 1
                    if w.dtype not in (torch.int8, torch.uint8):
                        problems.append(f"{path.name}: {key} is {w.dtype}, expected packed integers")
                        continue
                    values = unpack_int4_rows(w) if precision == "int4" else w.to(torch.int16)
                    if tuple(values.shape) != (rows, cols):
                        problems.append(f"{path.name}: {key} holds {tuple(values.shape)} values, expected {(rows, cols)}")
                        continue
                    scale_key = f"{prefix}.weights_scaling_factor"
                    if scale_key not in names:
                        problems.append(f"{path.name}: {scale_key} missing")
                    if prefix in sparse_layers:
                        sparse_checked += 1
                        if problem := check_pattern(f"{path.name}:{key}", values.numpy(), sparse_layers[prefix], axis=1):
                            problems.append(problem)
    if problems:
        first = "; ".join(problems[:3])
        raise SparsetrtError(f"TensorRT-LLM checkpoint {directory} does not match the documented format or lost "
                             f"sparsity: {first}{' ...' if len(problems) > 3 else ''}")
    return {"quant_algo": algo, "tp": tp, "linears_checked": checked, "sparse_linears_checked": sparse_checked}


def sparse_layer_patterns(sparsity: dict | None, num_layers: int, prefix: str = "model.layers") -> dict[str, str]:
    """TensorRT-LLM layer prefixes whose every HF source module carries one N:M pattern."""
    if not sparsity:
        return {}
    out: dict[str, str] = {}
    for layer in range(num_layers):
        fused: dict[str, set] = {}
        for hf, trt in LAYER_NAMES.items():
            info = sparsity["modules"].get(f"{prefix}.{layer}.{hf}")
            fused.setdefault(trt, set()).add(info["pattern"] if info else None)
        for trt, patterns in fused.items():
            if len(patterns) == 1 and None not in patterns and ":" in next(iter(patterns)) \
                    and not next(iter(patterns)).startswith("unstructured"):
                out[f"transformer.layers.{layer}.{trt}"] = next(iter(patterns))
    return out


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
