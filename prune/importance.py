"""Importance of the structures `sparsetrt shrink` can remove: MLP channels, attention heads, whole blocks.

Plain functions on tensors; sparsetrt.prune.shrink gathers what they read (activations, gradients, block inputs and
outputs) from calibration windows. Higher score = more important = kept.

Width, per decoder layer:
- activation (Minitron): an MLP channel's score is the L2 norm, over calibration tokens, of its activation (the
  input of down_proj); a head's is the L2 norm of its output (its slice of o_proj's input);
- taylor (LLM-Pruner, first order): sum of |w * dL/dw| over the weights that belong to the channel or head;
- magnitude (torch-pruning's baseline): the L2 norm of those weights.
Depth: 1 - cos(block input, block output) averaged over tokens (ShortGPT's block influence), or the exact
calibration-loss increase when the block is skipped.
Grouped-query attention: query heads are ranked within their KV group and every group keeps the same number
(Hugging Face repeats each KV head for heads / kv_heads query heads); when KV heads go, whole groups go (a group's
score is the sum of its query heads').
"""

from __future__ import annotations

import torch


def head_scores(per_channel: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Per-head L2 norm of a per-channel quantity given as sums of squares [heads * head_dim] -> [heads]."""
    return per_channel.reshape(heads, head_dim).sum(dim=1).sqrt()


def mlp_magnitude(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """[intermediate]: the L2 norm of each channel's gate and up rows and down column together."""
    return (gate.pow(2).sum(1) + up.pow(2).sum(1) + down.pow(2).sum(0)).sqrt()


def attention_magnitude(q: torch.Tensor, o: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[heads]: the L2 norm of each head's q_proj rows and o_proj columns (k/v are shared by a group)."""
    return head_scores(q.pow(2).sum(1) + o.pow(2).sum(0), heads, head_dim)


def mlp_taylor(saliency: dict[str, torch.Tensor]) -> torch.Tensor:
    """[intermediate] from |w * grad| of gate_proj, up_proj [inter, hidden] and down_proj [hidden, inter]."""
    return saliency["gate_proj"].sum(1) + saliency["up_proj"].sum(1) + saliency["down_proj"].sum(0)


def attention_taylor(saliency: dict[str, torch.Tensor], heads: int, head_dim: int) -> torch.Tensor:
    """[heads] from |w * grad| of q_proj [heads * head_dim, hidden] and o_proj [hidden, heads * head_dim]."""
    return (saliency["q_proj"].sum(1) + saliency["o_proj"].sum(0)).reshape(heads, head_dim).sum(1)


def block_influence(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """1 - mean over tokens of cos(block input, block output) [tokens, hidden]: 0 for a block that changes nothing."""
    return float(1 - torch.nn.functional.cosine_similarity(inputs.detach().float(), outputs.detach().float(), dim=-1).mean())


def keep_channels(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, in their original order (so weights keep their layout)."""
    return sorted(torch.topk(scores, keep).indices.tolist())


def keep_heads(scores: torch.Tensor, kv_heads: int, keep_heads_total: int, keep_kv: int) -> tuple[list[int], list[int]]:
    """(query heads kept, KV heads kept) for one layer. `scores` [heads]; query head h belongs to KV group
    h // (heads / kv_heads). Groups go whole (lowest summed score first), then each kept group keeps its
    keep_heads_total / keep_kv best query heads."""
    heads = scores.numel()
    per_group = heads // kv_heads
    per_kept_group = keep_heads_total // keep_kv
    grouped = scores.reshape(kv_heads, per_group)
    groups = keep_channels(grouped.sum(1), keep_kv)
    kept = []
    for g in groups:
        kept += [g * per_group + i for i in keep_channels(grouped[g], per_kept_group)]
    return kept, groups
