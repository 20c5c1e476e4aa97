"""Which model families sparsetrt supports, decided in this one place, before any work.

A family is listed when tests/test_architectures.py carries a tiny random checkpoint of it through prune ->
verify -> export -> parity (past every sliding window) -> quantize INT8/INT4 -> lint -> generate. What each
stage does with it is in the README's architecture table, written from FAMILIES below.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import

transformers = lazy_import("transformers")  # configs only, read when a checkpoint is; importing this module stays cheap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str                      # what users call it
    trtllm: str | None = None      # Model Optimizer's TensorRT-LLM decoder type, None: no checkpoint for this family
    note: str = ""


FAMILIES = {
    "llama": Family("Llama (Llama 2/3, SmolLM2, TinyLlama; tied or untied, llama3 rope scaling)", trtllm="llama"),
    "mistral": Family("Mistral (sliding-window attention)", trtllm="llama"),
    "qwen2": Family("Qwen2 / Qwen2.5"),
    "qwen3": Family("Qwen3 (q/k norms)"),
    "phi3": Family("Phi-3 (fused qkv_proj and gate_up_proj)"),
    "gemma": Family("Gemma"),
    "gemma2": Family("Gemma 2 (alternating sliding-window layers, soft-capping)"),
    "gemma3_text": Family("Gemma 3 text (5 sliding : 1 full layers, a rope base per layer type, q/k norms)"),
    "granite": Family("Granite 3.x (embedding, residual, attention and logit multipliers)"),
    "olmo2": Family("OLMo 2 (norms after attention and MLP, q/k norms over the whole projection)"),
    "smollm3": Family("SmolLM3 (no rotary on every fourth layer)"),
    "stablelm": Family("StableLM (LayerNorm, partial rotary)"),
    "cohere": Family("Cohere (parallel attention and MLP, LayerNorm, logit scale)"),
}
# Config keys that mark a mixture-of-experts model (Mixtral, Qwen2-MoE, DeepSeek, ...).
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


# Whether this process may run model code shipped inside a checkpoint (config.json's auto_map). One decision per
# process: the command line's --trust-remote-code (every command that reads a checkpoint takes it) or a pipeline
# config's [model] trust_remote_code sets it, and every loader asks remote_code() rather than carrying its own flag,
# so no stage can take a checkpoint that another refuses.
_remote_code_allowed = False


def allow_remote_code(allowed: bool) -> None:
    global _remote_code_allowed
    _remote_code_allowed = bool(allowed)


def remote_code(explicit: bool = False) -> bool:
    """Whether a loader may run a checkpoint's own code: asked for by its caller (library use) or by the command."""
    return bool(explicit) or _remote_code_allowed


def auto_config(checkpoint: Path, trust_remote_code: bool = False):
    """The transformers config of a local checkpoint (its own config class where the command trusts its code)."""
    return transformers.AutoConfig.from_pretrained(checkpoint, trust_remote_code=remote_code(trust_remote_code),
                                                   local_files_only=True)


def supported_names() -> str:
    return ", ".join(sorted(FAMILIES))


def experts_of(config: dict) -> int:
    """How many experts a layer of this config holds (0: a dense model)."""
    for key in MOE_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 1:
            return value
    return 0


def check_family(config: dict, path: Path, trust_remote_code: bool = False) -> Family | None:
    """The family of a causal-LM config, or a SparsetrtError naming the supported ones. A model with custom code
    (--trust-remote-code) outside the table goes ahead with a warning: nothing here has verified it."""
    trust_remote_code = remote_code(trust_remote_code)
    model_type = config.get("model_type")
    architectures = ", ".join(config.get("architectures") or []) or "no architectures"
    if experts := experts_of(config):
        raise SparsetrtError(f"{path} holds a mixture-of-experts model ('{model_type}', {experts} experts per layer): "
                             "sparsetrt prunes dense decoders only (its experts would stay dense and the ONNX export "
                             f"fails); supported families: {supported_names()}")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if trust_remote_code:
        log.warning("%s: model type '%s' is not among the verified families (%s); going ahead because of "
                    "--trust-remote-code", path, model_type, supported_names())
        return None
    raise SparsetrtError(f"{path} holds a '{model_type}' model ({architectures}), a family sparsetrt does not "
                         f"support; supported families: {supported_names()}")


def sliding_window(config) -> int | None:
    """The attention window of a config's sliding-window layers (the largest), None when every layer is global.
    Works on a transformers config object or its dict."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    window = get("sliding_window")
    layer_types = get("layer_types") or []
    if not window or get("use_sliding_window") is False:
        return None
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return int(window)


def max_positions(config) -> int | None:
    """The longest sequence the model's positions cover (max_position_embeddings), None when unknown."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    value = get("max_position_embeddings")
    return int(value) if value else None


def max_positions_of(checkpoint: Path) -> int | None:
    """The max positions the config.json in `checkpoint` declares (None without one: a bare tokenizer folder)."""
    config = Path(checkpoint) / "config.json"
    return max_positions(json.loads(config.read_text())) if config.is_file() else None


def check_length(config, tokens: int, what: str, option: str) -> None:
    """Refuse `tokens` positions beyond the model's max positions, before any work."""
    limit = max_positions(config)
    if limit is not None and tokens > limit:
        raise SparsetrtError(f"{what} of {tokens} tokens is longer than the model's {limit} positions "
                             f"(max_position_embeddings); lower {option}")
