"""Exact channel permutations before N:M pruning: which weights share a group of M is chosen, the model's
function unchanged, and folded into the weights (no gather at run time, nothing new in the exported graph).

N:M pruning makes every run of M consecutive input channels of a Linear keep N, so channels that happen to sit next
to each other compete whether or not that suits them. Three orders are free to choose:
- mlp: the intermediate channels, per block. act(gate) * up is elementwise, so permuting the rows of gate_proj and
  up_proj (both halves of a fused gate_up_proj) and the columns of down_proj leaves the block's output unchanged;
  it decides down_proj's groups, the largest Linear of the block.
- heads: each KV head's value dimensions, per block. Permuting the rows of v_proj within a KV head (and its bias)
  permutes the attention output of every query head that reads it the same way, so the same columns of o_proj follow
  and the output is unchanged; it decides o_proj's groups.
- hidden: the residual stream's channels, one order for the whole model. Every norm on the stream (RMSNorm or
  LayerNorm) commutes with a permutation of its input and its weight, so permuting the embedding's columns, every
  such norm's weight (and bias), the input columns of the Linears that read the stream (q/k/v, gate/up, or their fused
  forms), the output rows of those that write it (o_proj, down_proj, with their biases) and the lm_head's columns
  (tied or not) leaves the logits unchanged; it decides the groups of every Linear that reads the stream, two thirds
  of a block's weights, with one order shared by every block.

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

from sparsetrt.modules import decoder_layers, layers_prefix

AXES = ("mlp", "heads", "hidden")
# pair rounds after the balanced start: on a SmolLM2 down_proj-shaped saliency, 6 reach ~85 % of what 12
# gain, in half the time
ROUNDS = 6
PAIR_BUDGET = 1 << 24  # floats gathered at once while scoring pairs (memory bound on wide layers)
# rows of saliency the hidden order is searched on, sampled evenly over every Linear that reads the stream (an 8B
# model has 1.1 M such rows x 4096 channels): the objective's estimate, not the weights that are pruned
HIDDEN_ROWS = 1 << 14
# calibration windows the hidden order's pass over the unpruned model reads (the first ones: they are drawn at
# random): its statistics rank 576-4096 channels, they solve nothing, and the pass is a whole forward per window
HIDDEN_WINDOWS = 8
READS_HIDDEN = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj")
WRITES_HIDDEN = ("o_proj", "down_proj")
HEAD_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm")  # on a head's dims, not the stream (OLMo 2's
# q_norm spans heads x head_dim, which can equal the hidden size: told apart by position, never by size)


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


@dataclass
class HiddenPlan:
    """Where the residual stream's channels sit in a model: {parameter name: the dim they index} for every tensor the
    hidden order touches, and per block the Linears that read the stream, in groups that read one input."""

    dims: dict[str, int]
    readers: list[list[dict[str, torch.nn.Linear]]]

    def fold_tensor(self, name: str, tensor: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """`tensor` (the parameter `name`) with the order `perm` folded in; unchanged when the order does not touch
        it."""
        dim = self.dims.get(name)
        if dim is None:
            return tensor
        return tensor.index_select(dim, perm.to(tensor.device)).contiguous()

    def fold(self, module: torch.nn.Module, perm: torch.Tensor, prefix: str = "") -> None:
        """Fold `perm` into every parameter of `module` (the model, or one block named `prefix`) that is in memory
        (a tied table once: named_parameters lists a shared tensor under its first name only)."""
        with torch.no_grad():
            for name, param in module.named_parameters(prefix=prefix):
                if name in self.dims and not param.is_meta:
                    param.data = self.fold_tensor(name, param.data, perm)


def hidden_plan(model: torch.nn.Module) -> HiddenPlan | None:
    """The model's hidden-order plan, or None when any tensor's relation to the stream is not one this module
    knows (an unknown Linear, a parameter outside a known norm): then no order is chosen."""
    hidden = model.config.hidden_size
    module_name = {id(m): n for n, m in model.named_modules()}
    dims: dict[str, int] = {}
    for table in (model.get_input_embeddings(), model.get_output_embeddings()):
        if table is None:
            continue
        if table.weight.shape[-1] != hidden:
            return None
        dims[f"{module_name[id(table)]}.weight"] = 1
    layers, prefix = decoder_layers(model), layers_prefix(model)
    readers = []
    for index, layer in enumerate(layers):
        groups: dict[str, dict[str, torch.nn.Linear]] = {}
        for child_name, child in layer.named_children():
            full = f"{prefix}.{index}.{child_name}"
            if child_name in ("self_attn", "mlp"):
                for name, module in child.named_modules():
                    if not list(module.parameters(recurse=False)) or set(name.split(".")) & set(HEAD_NORMS):
                        continue
                    leaf, path = name.rsplit(".", 1)[-1], f"{full}.{name}"
                    if not isinstance(module, torch.nn.Linear):
                        return None
                    if leaf in READS_HIDDEN and module.in_features == hidden:
                        dims[f"{path}.weight"] = 1
                        groups.setdefault(child_name, {})[path] = module
                    elif leaf in WRITES_HIDDEN and module.out_features == hidden:
                        dims.update({f"{path}.{p}": 0 for p, _ in module.named_parameters()})
                    else:
                        return None
            elif (params := list(child.named_parameters())) and all(p.shape == (hidden,) for _, p in params):
                dims.update({f"{full}.{p}": 0 for p, _ in params})  # a norm on the stream
            elif params:
                return None
        readers.append(list(groups.values()))
    inside = f"{prefix}."
    for name, param in model.named_parameters():
        if name in dims or name.startswith(inside):
            continue
        if param.shape != (hidden,):  # outside the blocks only the tables and the final norm may touch the stream
            return None
        dims[name] = 0
    return HiddenPlan(dims, readers)


def sample_rows(scores: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A `rate` share of the rows of one Linear's saliency, scaled so its rows average one (each Linear weighs by
    its size, whatever the scale of its layer's activations)."""
    rows = scores.shape[0]
    scaled = scores * (rows / scores.sum().clamp_min(1e-30))
    if rate >= 1:
        return scaled
    take = max(1, round(rows * rate))
    return scaled[torch.randperm(rows, generator=generator)[:take].to(scores.device)]


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
