"""Distillation that recovers what pruning lost, with the sparsity masks held fixed (NVIDIA's prune-then-distill
recipe, Minitron / Model Optimizer): the dense model is the teacher, the pruned one the student.

loss = T² · KL(softmax(teacher / T) ‖ softmax(student / T))  [+ hidden_weight · normalised hidden-state MSE]

AdamW with linear warm-up and a cosine decay, gradient accumulation, and masks applied twice per step: to
the gradients (so AdamW's moments never build up where a weight must stay zero) and to the weights after the
update (so nothing numerical can leak a non-zero in). Everything that decides the next step (weights,
optimizer moments, step counter, the fixed horizon) is in the training state, and each step's windows are
drawn from a generator seeded by (seed, step): a run resumed from a saved state takes the same steps as one
that never stopped.
"""

from __future__ import annotations

import math

import torch

from sparsetrt.calibration.data import with_bos
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.settings import DistillSettings


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      student_hidden=None, teacher_hidden=None, hidden_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(loss, {"kl": ..., "hidden": ...}). KL is per token (summed over the vocabulary, averaged over tokens)
    and scaled by T² so its gradients keep their size as T changes (Hinton et al.). The hidden term is the MSE
    of every decoder layer's output relative to the teacher's mean square, averaged over layers."""
    vocab = student_logits.shape[-1]
    s = torch.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, -1)
    t = torch.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, -1)
    kl = torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
    parts = {"kl": float(kl.detach())}
    loss = kl
    if hidden_weight > 0 and student_hidden is not None:
        terms = [(hs.float() - ht.float()).pow(2).mean() / ht.float().pow(2).mean().clamp_min(1e-12)
                 for hs, ht in zip(student_hidden[1:], teacher_hidden[1:])]  # [0] is the embedding output
        hidden = torch.stack(terms).mean()
        parts["hidden"] = float(hidden.detach())
        loss = loss + hidden_weight * hidden
    return loss, parts


def learning_rate(step: int, total: int, settings: DistillSettings) -> float:
    """Linear warm-up, then cosine from lr down to lr x min_lr_ratio at the last step."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(total - settings.warmup_steps, 1)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def step_windows(tokens: torch.Tensor, step: int, micro: int, settings: DistillSettings,
                 bos: int | None = None) -> torch.Tensor:
    """The [batch, seq_len] windows of micro-batch `micro` of step `step`: random offsets from a generator
    seeded by (seed, step, micro), so any step can be replayed exactly after a resume; each starts with `bos` when
    one is given (the tokenizer puts one before every text)."""
    generator = torch.Generator().manual_seed((settings.seed * 1_000_003 + step * 1_009 + micro) % 2**64)
    body = settings.seq_len - (bos is not None)
    high = len(tokens) - body
    if high <= 0:
        raise SparsetrtError(f"the training text has {len(tokens)} tokens, fewer than one window of "
                             f"{settings.seq_len}; use more text or a shorter --seq-len")
    starts = torch.randint(0, high + 1, (settings.batch_size,), generator=generator)
    return with_bos(torch.stack([tokens[s: s + body] for s in starts.tolist()]), bos)


def masks_of(model: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    """Keep masks (True = may be non-zero) of the named Linears, from the zeros they hold now."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise SparsetrtError(f"the student has no module {missing[0]!r} listed in its sparsity.json")
    return {n: modules[n].weight.detach() != 0 for n in names}


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], grads: bool = False) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            target = weight.grad if grads else weight
            if target is not None:
                target.mul_(mask)


def mask_violations(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Modules where a weight the mask says must be zero is not (empty = every zero kept)."""
    modules = dict(model.named_modules())
    return [n for n, mask in masks.items() if bool((modules[n].weight.detach()[~mask] != 0).any())]


def trainable_parameters(model: torch.nn.Module, train_embeddings: bool) -> list[torch.nn.Parameter]:
    """Everything but the embedding (and the lm_head when it shares the embedding's weight), unless asked."""
    frozen = set()
    if not train_embeddings:
        frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
        out = model.get_output_embeddings()
        if out is not None:
            frozen |= {id(p) for p in out.parameters()}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            params.append(p)
    return params


def train_step(student, teacher, optimizer, tokens: torch.Tensor, step: int, total: int, masks,
               settings: DistillSettings, bos: int | None = None) -> dict:
    """One optimizer step over grad_accum micro-batches; returns its log record (loss averaged over them)."""
    lr = learning_rate(step, total, settings)
    for group in optimizer.param_groups:
        group["lr"] = lr
    want_hidden = settings.hidden_weight > 0
    totals: dict[str, float] = {}
    for micro in range(settings.grad_accum):
        ids = step_windows(tokens, step, micro, settings, bos)
        with torch.no_grad():
            t_out = teacher(input_ids=ids, use_cache=False, output_hidden_states=want_hidden)
        s_out = student(input_ids=ids, use_cache=False, output_hidden_states=want_hidden)
        loss, parts = distillation_loss(s_out.logits, t_out.logits, settings.temperature,
                                        s_out.hidden_states if want_hidden else None,
                                        t_out.hidden_states if want_hidden else None, settings.hidden_weight)
        (loss / settings.grad_accum).backward()
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v / settings.grad_accum
        del t_out, s_out, loss
    apply_masks(student, masks, grads=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    apply_masks(student, masks)
    return {"step": step + 1, "lr": lr, **totals}
