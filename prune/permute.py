"""Exact channel permutations before N:M pruning: which weights share a group of M is chosen, the model's
function unchanged, and folded into the weights (no gather at run time, nothing new in the exported graph).

N:M pruning makes every run of M consecutive input channels of a Linear keep N, so channels that happen to sit next
to each other compete whether or not that suits them. Two orders inside a decoder block are free to choose:
- mlp: the intermediate channels, per block. act(gate) * up is elementwise, so permuting the rows of gate_proj and
  up_proj (both halves of a fused gate_up_proj) and the columns of down_proj leaves the block's output unchanged;
  it decides down_proj's groups, the largest Linear of the block.
- heads: each KV head's value dimensions, per block. Permuting the rows of v_proj within a KV head (and its bias)
  permutes the attention output of every query head that reads it the same way, so the same columns of o_proj follow
  and the output is unchanged; it decides o_proj's groups.
(The hidden dimension is a third free order, one for the whole model: not done here.)

The search maximises the saliency the mask keeps, in the pruning method's own terms (`saliency`): |W|² for magnitude,
(|W|·‖x‖)² for Wanda, the OBS error W²/[H⁻¹]ⱼⱼ for SparseGPT. It starts from a balanced deal (channels ranked by
their total saliency, each group given one channel of every M-quantile, so two strong channels rarely meet) and then
improves pairs of groups: every split of a pair's 2M channels into two groups of M is scored at once and the best
kept when it gains, the idea of NVIDIA ASP's channel-permutation search (exhaustive within small stripe groups), here
on random disjoint pairs for a few rounds. Plain tensor functions; prune/sequential.py calls them per block.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import torch

AXES = ("mlp", "heads")
# pair rounds after the balanced start: on a SmolLM2 down_proj-shaped saliency, 6 reach ~85 % of what 12
# gain, in half the time
ROUNDS = 6
PAIR_BUDGET = 1 << 24  # floats gathered at once while scoring pairs (memory bound on wide layers)


def saliency(weight: torch.Tensor, method: str, stats=None, damping: float = 0.01) -> torch.Tensor:
    """What pruning a weight costs, in the method's own terms (rows x input channels, float32)."""
    w2 = weight.detach().float().pow(2)
    if method == "magnitude" or stats is None:
        return w2
    if method == "wanda":
        return w2 * stats.input_rms.to(w2.device).pow(2)
    hessian = stats.hessian.to(w2.device)
    diag = torch.diagonal(hessian).clone()
    dead = diag == 0
    damped = hessian.clone()
    damped[dead, dead] = 1.0
    damped.diagonal().add_(damping * float(diag[~dead].mean()) if (~dead).any() else damping)
    inverse_diag = torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(damped)))
    return w2 / inverse_diag.clamp_min(1e-12)


def kept(scores: torch.Tensor, n: int, m: int) -> float:
    """Saliency an N:M mask keeps when each row keeps its N largest of every M consecutive columns."""
    rows, cols = scores.shape
    return float(top_n_sum(scores.view(rows, cols // m, m), n).sum())


def top_n_sum(values: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """Sum of the N largest along `dim`. For 2 of 4, a sorting network of elementwise min/max (the total less the
    two smallest), several times faster than topk over a length-4 axis; topk otherwise."""
    if n == 2 and values.shape[dim] == 4:
        a, b, c, d = values.unbind(dim)
        low_ab, low_cd = torch.minimum(a, b), torch.minimum(c, d)
        second = torch.minimum(torch.maximum(low_ab, low_cd), torch.minimum(torch.maximum(a, b), torch.maximum(c, d)))
        return a + b + c + d - torch.minimum(low_ab, low_cd) - second
    return values.topk(n, dim=dim).values.sum(dim)


def _splits(m: int) -> torch.Tensor:
    """Every way to split 2M positions into two groups of M (each split once): [S, 2M] position indices."""
    splits = [list(first) + [i for i in range(2 * m) if i not in first]
              for first in itertools.combinations(range(2 * m), m) if 0 in first]
    return torch.tensor(splits)


def search_permutation(scores: torch.Tensor, n: int, m: int, rounds: int = ROUNDS, seed: int = 0) -> torch.Tensor:
    """A permutation of the columns of `scores` (rows x C, C a multiple of M) that keeps at least as much saliency
    under N:M as the identity: `scores[:, perm]` is the layout to prune."""
    rows, cols = scores.shape
    groups = cols // m
    identity = torch.arange(cols, device=scores.device)
    order = scores.sum(0).argsort(descending=True)
    dealt = order.view(m, groups).t().reshape(-1)  # group g: the g-th channel of every M-quantile
    perm = dealt if kept(scores[:, dealt], n, m) > kept(scores, n, m) else identity
    if groups < 2:
        return perm
    splits = _splits(m).to(scores.device)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, PAIR_BUDGET // (rows * len(splits) * 2 * m))
    by_channel = scores.t().contiguous()  # a channel's saliencies contiguous: gathering channels is gathering rows
    for _ in range(rounds):
        pairs = torch.randperm(groups, generator=generator)[: groups // 2 * 2].view(-1, 2).to(scores.device)
        layout = perm.view(groups, m)
        improved = False
        for start in range(0, len(pairs), chunk):
            pair = pairs[start:start + chunk]
            members = torch.cat([layout[pair[:, 0]], layout[pair[:, 1]]], dim=1)  # [K, 2M] channels
            candidates = members[:, splits]  # [K, S, 2M]: split 0 is the current layout
            values = by_channel[candidates].view(len(pair), len(splits), 2, m, rows)
            score = top_n_sum(values, n, dim=3).sum(dim=(2, 3))
            best = score.argmax(dim=1)
            better = score.gather(1, best[:, None]).squeeze(1) > score[:, 0] * (1 + 1e-7)
            if better.any():
                chosen = candidates[torch.arange(len(pair), device=scores.device), best][better]
                layout[pair[better, 0]] = chosen[:, :m]
                layout[pair[better, 1]] = chosen[:, m:]
                improved = True
        perm = layout.reshape(-1)
        if not improved:
            break
    return perm


@dataclass
class MlpSite:
    """One block's MLP: down_proj and the Linears whose output rows are its input channels."""

    down: torch.nn.Linear
    producers: list[tuple[torch.nn.Linear, int]]  # (Linear, how many stacked halves its rows hold: 2 for gate_up)

    def apply(self, perm: torch.Tensor) -> torch.Tensor:
        """Fold `perm` into the block; the order of down_proj's input columns now."""
        with torch.no_grad():
            self.down.weight.data = self.down.weight.data[:, perm.to(self.down.weight.device)].contiguous()
            for linear, halves in self.producers:
                _permute_rows(linear, _stacked(perm, halves, len(perm)))
        return perm


@dataclass
class HeadSite:
    """One block's attention: o_proj and where the value rows sit (v_proj, or the v part of a fused qkv_proj)."""

    o_proj: torch.nn.Linear
    value: torch.nn.Linear
    value_offset: int  # first v row inside `value`
    heads: int
    kv_heads: int
    head_dim: int

    def group_scores(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per KV head, the o_proj saliency of every query head that reads it, stacked: [rows x reps, head_dim]."""
        rep = self.heads // self.kv_heads
        blocks = scores.view(scores.shape[0], self.heads, self.head_dim)
        return [blocks[:, g * rep:(g + 1) * rep].transpose(0, 1).reshape(-1, self.head_dim)
                for g in range(self.kv_heads)]

    def o_columns(self, per_kv: list[torch.Tensor]) -> torch.Tensor:
        rep = self.heads // self.kv_heads
        return torch.cat([h * self.head_dim + per_kv[h // rep].cpu() for h in range(self.heads)])

    def apply(self, per_kv: list[torch.Tensor]) -> torch.Tensor:
        """Fold one permutation per KV head into the block; the order of o_proj's input columns now."""
        columns = self.o_columns(per_kv)
        v_rows = torch.cat([g * self.head_dim + p.cpu() for g, p in enumerate(per_kv)])
        rows = torch.arange(self.value.out_features)
        rows[self.value_offset:self.value_offset + len(v_rows)] = self.value_offset + v_rows
        with torch.no_grad():
            self.o_proj.weight.data = self.o_proj.weight.data[:, columns.to(self.o_proj.weight.device)].contiguous()
            _permute_rows(self.value, rows)
        return columns


def _stacked(perm: torch.Tensor, halves: int, size: int) -> torch.Tensor:
    return torch.cat([h * size + perm.cpu() for h in range(halves)])


def _permute_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> None:
    rows = rows.to(linear.weight.device)
    linear.weight.data = linear.weight.data[rows].contiguous()
    if linear.bias is not None:
        linear.bias.data = linear.bias.data[rows].contiguous()


def mlp_site(layer: torch.nn.Module) -> MlpSite | None:
    """The block's MLP when its intermediate channels can be permuted (gate/up/down or gate_up/down), else None."""
    mlp = getattr(layer, "mlp", None)
    down = getattr(mlp, "down_proj", None)
    if not isinstance(down, torch.nn.Linear):
        return None
    if isinstance(getattr(mlp, "gate_up_proj", None), torch.nn.Linear):
        if mlp.gate_up_proj.out_features != 2 * down.in_features:
            return None
        return MlpSite(down, [(mlp.gate_up_proj, 2)])
    producers = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj")]
    if not all(isinstance(p, torch.nn.Linear) and p.out_features == down.in_features for p in producers):
        return None
    return MlpSite(down, [(p, 1) for p in producers])


def head_site(layer: torch.nn.Module, config) -> HeadSite | None:
    """The block's attention when its value dimensions can be permuted, else None (a v norm, odd shapes)."""
    attention = getattr(layer, "self_attn", None)
    o_proj = getattr(attention, "o_proj", None)
    if not isinstance(o_proj, torch.nn.Linear) or getattr(attention, "v_norm", None) is not None:
        return None
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if o_proj.in_features != heads * head_dim or heads % kv_heads:
        return None
    if isinstance(getattr(attention, "v_proj", None), torch.nn.Linear):
        value, offset = attention.v_proj, 0
    elif isinstance(getattr(attention, "qkv_proj", None), torch.nn.Linear):
        value, offset = attention.qkv_proj, (heads + kv_heads) * head_dim
    else:
        return None
    if value.out_features < offset + kv_heads * head_dim:
        return None
    return HeadSite(o_proj, value, offset, heads, kv_heads, head_dim)


def permute_stats(stats, perm: torch.Tensor) -> None:
    """The statistics of a Linear's inputs as they are once its input channels are permuted."""
    if stats is None:
        return
    index = perm.to(stats.hessian.device if stats.hessian is not None else stats.sq_norm.device)
    if stats.hessian is not None:
        stats.hessian = stats.hessian[index][:, index].contiguous()
    if stats.sq_norm is not None:
        stats.sq_norm = stats.sq_norm[index]
    stats.inputs = [x[..., index.to(x.device)] for x in stats.inputs]


def digest(perms: list[torch.Tensor]) -> str:
    """A short fingerprint of the permutations a run chose (sparsity.json)."""
    h = hashlib.sha256()
    for perm in perms:
        h.update(perm.cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]
