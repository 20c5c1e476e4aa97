"""`sparsetrt shrink`: a checkpoint in, a smaller dense checkpoint of the same architecture out (structure.json).

Width: MLP intermediate channels, query heads, KV heads; depth: whole decoder blocks. Scores come from
sparsetrt.prune.importance; the tensors are then sliced into a new state dict and loaded into a model built from
the new config, so the output is what `AutoModelForCausalLM.from_pretrained` loads as the plain architecture, no
custom code. Hugging Face configs hold one width for every layer, so widths stay uniform across layers (each layer
keeps its own best channels, the same number of them), as Minitron does.

Sizes: a fraction keeps that share (`--mlp 0.75`), an integer sets the size (`--mlp 384`); `--layers` likewise.
Everything is checked before the model is loaded. Families with fused projections (phi3's qkv_proj/gate_up_proj)
and mixture-of-experts models are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from sparsetrt.architectures import remote_code
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune import importance
from sparsetrt.prune.settings import ShrinkSettings, parse_size

SLICEABLE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo2", "smollm3",
             "cohere")
NOT_SLICEABLE = {"phi3": "its fused qkv_proj / gate_up_proj are not sliced yet",
                 "stablelm": "its attention takes the head size as hidden / heads, so a cut head count changes it"}
# Config lists with one entry per decoder block, cut with the blocks a depth cut keeps.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
FLOPS_CONTEXT = 512  # the context length the attention part of FLOPs per token is given at


@dataclass(frozen=True)
class Plan:
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    head_dim: int

    def removes_nothing(self, config) -> bool:
        return (self.intermediate, self.heads, self.kv_heads, self.layers) == (
            config.intermediate_size, config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers)


def plan(config, settings: ShrinkSettings) -> Plan:
    """The target sizes, or one line saying why they cannot be."""
    if config.model_type not in SLICEABLE:
        why = NOT_SLICEABLE.get(config.model_type, "its blocks are not sliced yet")
        raise SparsetrtError(f"shrink cannot slice '{config.model_type}' ({why}); it slices {', '.join(SLICEABLE)}")
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    keep_kv = parse_size(settings.kv_heads, "kv_heads", kv)
    keep_heads = parse_size(settings.heads, "heads", heads)
    if "." in settings.heads:  # a fraction of query heads: the same share of every kept group
        keep_heads = max(1, round(float(settings.heads) * heads // kv)) * keep_kv
    elif keep_heads % keep_kv:
        raise SparsetrtError(f"--heads {keep_heads} does not divide into {keep_kv} KV groups: each KV head serves the "
                             "same number of query heads; use a multiple of the kept KV heads")
    if keep_heads // keep_kv > heads // kv:
        raise SparsetrtError(f"--heads {keep_heads} with {keep_kv} KV heads would need {keep_heads // keep_kv} query "
                             f"heads per group; the model has {heads // kv}")
    if config.hidden_size % keep_heads:
        raise SparsetrtError(f"--heads {keep_heads}: transformers' {config.model_type} config requires the hidden size "
                             f"({config.hidden_size}) to be a multiple of the head count; keep a divisor of it")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Plan(intermediate=parse_size(settings.mlp, "mlp", config.intermediate_size), heads=keep_heads,
                kv_heads=keep_kv, layers=parse_size(settings.layers, "layers", config.num_hidden_layers),
                head_dim=head_dim)


# -- statistics ---------------------------------------------------------------------------------------------------


def gather(model, windows: torch.Tensor, settings: ShrinkSettings, plan_: Plan, batch: int = 4) -> dict:
    """What the estimators read, per layer: activation sums of squares (down_proj and o_proj inputs), |w * grad|
    (taylor), block influence (cosine) and, for depth by loss, the calibration loss with each block skipped."""
    layers, hidden = model.model.layers, model.config.hidden_size
    stats = empty_stats(len(layers))
    handles = [h for i, layer in enumerate(layers) for h in stat_hooks(layer, i, stats, hidden)]
    taylor = settings.importance == "taylor"
    saliency: dict[str, torch.Tensor] = {}
    try:
        chunks = windows.split(batch)
        for chunk in chunks:
            if taylor:
                model.zero_grad(set_to_none=True)
                loss = model(input_ids=chunk, labels=chunk).loss
                loss.backward()
                for name, p in model.model.layers.named_parameters():
                    if p.grad is not None and p.ndim == 2:
                        saliency[name] = saliency.get(name, 0) + (p.detach() * p.grad).abs()
            else:
                with torch.no_grad():
                    model(input_ids=chunk)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    stats["influence"] = [v / len(chunks) for v in stats["influence"]]
    stats["saliency"] = saliency
    if plan_.layers < len(layers) and settings.depth_importance == "loss":
        stats["skip_loss"] = skip_losses(model, windows, batch)
    return stats


def empty_stats(layers: int) -> dict:
    return {"act_mlp": [None] * layers, "act_heads": [None] * layers, "influence": [None] * layers}


def stat_hooks(layer, i: int, stats: dict, hidden: int) -> list:
    """Hooks on decoder block `i` that add its activation sums of squares and block influence into `stats` at
    every forward (the handles, to remove them)."""
    def add(key, value):
        stats[key][i] = value if stats[key][i] is None else stats[key][i] + value

    return [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a: add("act_mlp", a[0].detach().float().pow(2).reshape(-1, a[0].shape[-1]).sum(0))),
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a: add("act_heads", a[0].detach().float().pow(2).reshape(-1, a[0].shape[-1]).sum(0))),
        layer.register_forward_hook(
            lambda m, a, k, out: add("influence", importance.block_influence(
                (a[0] if a else k["hidden_states"]).reshape(-1, hidden),
                (out[0] if isinstance(out, tuple) else out).reshape(-1, hidden))),
            with_kwargs=True),
    ]


def skip_losses(model, windows: torch.Tensor, batch: int) -> list[float]:
    """Calibration loss increase when each block in turn is skipped (its output replaced by its input)."""
    chunks = windows.split(batch)

    def loss() -> float:
        with torch.no_grad():
            return sum(float(model(input_ids=c, labels=c).loss) for c in chunks) / len(chunks)

    base = loss()
    increases = []
    for layer in model.model.layers:
        handle = layer.register_forward_hook(skip_block, with_kwargs=True)
        try:
            increases.append(loss() - base)
        finally:
            handle.remove()
    return increases


def skip_block(module, args, kwargs, output):
    """A forward hook that makes a decoder block return its input: the block is skipped."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


# -- choosing ---------------------------------------------------------------------------------------------------


def choose(model, stats: dict, settings: ShrinkSettings, p: Plan) -> dict:
    """Per kept layer: MLP channels, query heads and KV heads to keep; and the blocks kept."""
    kept = kept_layers(stats, settings, p, model.config.num_hidden_layers)
    return assemble(kept, {i: layer_choice(model.model.layers[i], i, stats, settings, p, model.config)
                           for i in kept})


def kept_layers(stats: dict, settings: ShrinkSettings, p: Plan, layers: int) -> list[int]:
    if p.layers < layers:
        depth = stats["skip_loss"] if settings.depth_importance == "loss" else stats["influence"]
        return importance.keep_channels(torch.tensor(depth), p.layers)
    return list(range(layers))


def layer_choice(layer, i: int, stats: dict, settings: ShrinkSettings, p: Plan, config) -> tuple:
    """(MLP channels, query heads, KV heads kept, head scores) of block `i` (its weights are read for magnitude)."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if settings.importance == "activation":
        mlp = stats["act_mlp"][i].sqrt()
        attn = importance.head_scores(stats["act_heads"][i], heads, p.head_dim)
    elif settings.importance == "taylor":
        s = {k.split(".")[-2]: v for k, v in stats["saliency"].items() if k.startswith(f"{i}.")}
        mlp, attn = importance.mlp_taylor(s), importance.attention_taylor(s, heads, p.head_dim)
    else:
        mlp = importance.mlp_magnitude(layer.mlp.gate_proj.weight.detach(), layer.mlp.up_proj.weight.detach(),
                                       layer.mlp.down_proj.weight.detach())
        attn = importance.attention_magnitude(layer.self_attn.q_proj.weight.detach(),
                                              layer.self_attn.o_proj.weight.detach(), heads, p.head_dim)
    q, k = importance.keep_heads(attn.cpu(), kv, p.heads, p.kv_heads)
    return importance.keep_channels(mlp.cpu(), p.intermediate), q, k, [round(float(x), 6) for x in attn]


def assemble(kept: list[int], per_layer: dict[int, tuple]) -> dict:
    choice = {"layers": kept, "mlp": {}, "heads": {}, "kv_heads": {}, "scores": {}}
    for i in kept:
        choice["mlp"][i], choice["heads"][i], choice["kv_heads"][i], scores = per_layer[i]
        choice["scores"][i] = {"heads": scores}
    return choice


# -- slicing ----------------------------------------------------------------------------------------------------


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def sliced_state_dict(model, choice: dict, head_dim: int) -> dict[str, torch.Tensor]:
    """The model's state dict with removed blocks dropped (the rest renumbered) and each kept block's tensors cut to
    its chosen channels and heads."""
    state = model.state_dict()
    out = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for new, old in enumerate(choice["layers"]):
        prefix = f"model.layers.{old}."
        block = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        out.update({f"model.layers.{new}.{rest}": v for rest, v in sliced_block(block, choice, old, head_dim).items()})
    return out


def sliced_block(block: dict[str, torch.Tensor], choice: dict, old: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Block `old`'s tensors (named inside the block) cut to its chosen channels and heads, each a new tensor."""
    mlp = torch.tensor(choice["mlp"][old], dtype=torch.long)
    q_rows = head_rows(choice["heads"][old], head_dim)
    kv_rows = head_rows(choice["kv_heads"][old], head_dim)
    cuts = {"mlp.gate_proj.weight": (0, mlp), "mlp.up_proj.weight": (0, mlp), "mlp.down_proj.weight": (1, mlp),
            "self_attn.q_proj.weight": (0, q_rows), "self_attn.q_proj.bias": (0, q_rows),
            "self_attn.k_proj.weight": (0, kv_rows), "self_attn.k_proj.bias": (0, kv_rows),
            "self_attn.v_proj.weight": (0, kv_rows), "self_attn.v_proj.bias": (0, kv_rows),
            "self_attn.o_proj.weight": (1, q_rows)}
    # q/k norms over the whole projection (OLMo 2) are cut with their heads; per-head ones (Qwen3, Gemma 3) are kept.
    norms = {"self_attn.q_norm.weight": q_rows, "self_attn.k_norm.weight": kv_rows}
    cuts.update({name: (0, rows) for name, rows in norms.items() if name in block and block[name].numel() != head_dim})
    return {rest: value.index_select(*cuts[rest]) if rest in cuts else value.clone() for rest, value in block.items()}


def shrunk_config(config, p: Plan, kept_layers: list[int]):
    new = config.__class__.from_dict(config.to_dict())
    new.intermediate_size, new.num_attention_heads, new.num_key_value_heads = p.intermediate, p.heads, p.kv_heads
    new.num_hidden_layers = p.layers
    new.head_dim = p.head_dim  # explicit: Llama's default (hidden / heads) would change with the head count
    for key in PER_LAYER_KEYS:  # sliding/full attention per block (Gemma 2/3, Qwen3), rope or none (SmolLM3)
        if isinstance(getattr(config, key, None), list) and len(getattr(config, key)) == config.num_hidden_layers:
            setattr(new, key, [getattr(config, key)[i] for i in kept_layers])
    return new


def build_shrunk(model, choice: dict, p: Plan):
    """A fresh model of the plain architecture at the new sizes, holding the sliced weights."""
    config = shrunk_config(model.config, p, choice["layers"])
    shrunk = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype,
                                               trust_remote_code=remote_code())
    missing, unexpected = shrunk.load_state_dict(sliced_state_dict(model, choice, p.head_dim), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SparsetrtError(f"the sliced weights do not fit the new config (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); this architecture's blocks are not sliceable")
    if config.tie_word_embeddings:
        shrunk.tie_weights()
    return shrunk.eval()


# -- sizes ------------------------------------------------------------------------------------------------------


def decoder_linear_params(config) -> int:
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = config.hidden_size * head_dim * (2 * heads + 2 * kv)
    mlp = 3 * config.hidden_size * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp)


def flops_per_token(config, context: int = FLOPS_CONTEXT) -> int:
    """2 x every Linear weight (decoder + head) + attention scores and values over `context` positions."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    linear = decoder_linear_params(config) + config.hidden_size * config.vocab_size
    return 2 * linear + config.num_hidden_layers * 4 * heads * head_dim * context


def sizes(config) -> dict:
    return {"intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads, "num_hidden_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size, "decoder_linear_params": decoder_linear_params(config),
            f"flops_per_token_at_{FLOPS_CONTEXT}": flops_per_token(config)}


