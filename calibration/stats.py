"""Per-Linear input statistics, gathered with forward hooks.

For a Linear y = x Wᵀ with inputs x (tokens × in_features):
- `hessian`   = Xᵀ X / n_tokens, the proxy Hessian of the layer-wise reconstruction loss (SparseGPT, GPTQ);
- `sq_norm`   = Σ x² per input channel (its square root is Wanda's activation norm), accumulated only when
  no Hessian is (the Hessian's diagonal carries the same information).
Only the statistics a method asks for are accumulated; the Hessian of a 1536-wide input is 9 MB in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass
class InputStats:
    in_features: int
    want_hessian: bool = True
    n_tokens: int = 0
    hessian: torch.Tensor | None = None
    keep_inputs: bool = False
    inputs: list = field(default_factory=list)  # raw inputs, only when keep_inputs (exact propagation)
    sq_norm: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.want_hessian:
            self.hessian = torch.zeros(self.in_features, self.in_features, dtype=torch.float32)
        else:
            self.sq_norm = torch.zeros(self.in_features, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if self.n_tokens == 0:  # accumulate where the inputs are (the GPU when a block is processed there)
            self.hessian = None if self.hessian is None else self.hessian.to(x.device)
            self.sq_norm = None if self.sq_norm is None else self.sq_norm.to(x.device)
        n_new = x.shape[0]
        total = self.n_tokens + n_new
        if self.hessian is not None:
            # Running mean keeps the scale independent of the token count.
            self.hessian.mul_(self.n_tokens / total).addmm_(x.t(), x, alpha=1.0 / total)
        else:
            self.sq_norm += x.pow(2).sum(0, dtype=torch.float64)
        self.n_tokens = total
        if self.keep_inputs:
            self.inputs.append(x)

    @property
    def input_rms(self) -> torch.Tensor:
        """RMS of each input channel over the calibration tokens (Wanda's ‖x_j‖ up to a common factor)."""
        mean_square = torch.diagonal(self.hessian) if self.hessian is not None else self.sq_norm / max(self.n_tokens, 1)
        return mean_square.float().sqrt()


class StopForward(Exception):
    """Raised from a hook once everything needed from this forward pass has been seen."""


def collect_input_stats(
    modules: dict[str, torch.nn.Module],
    forwards: Iterable[Callable[[], object]],
    want_hessian: bool,
    stop_early: bool = True,
    keep_inputs: bool = False,
    share_inputs: bool = False,
) -> tuple[dict[str, InputStats], list]:
    """Call each of `forwards` (one forward pass each) with hooks that record the inputs of `modules`.

    With `stop_early`, each pass stops via StopForward once every watched module has seen its input: the
    rest of the block is not needed. With `share_inputs`, modules that read the very same tensor (q, k, v)
    share one statistics object instead of accumulating identical Hessians. Returns the statistics and each
    pass's output (None when stopped).
    """
    stats = {name: InputStats(m.in_features, want_hessian, keep_inputs=keep_inputs) for name, m in modules.items()}
    seen: set[str] = set()
    readers: dict[int, tuple[str, torch.Tensor]] = {}  # id(input) -> (first reader, the tensor kept alive)

    def make_hook(name: str):
        def hook(_module, args):
            first = readers.setdefault(id(args[0]), (name, args[0]))[0] if share_inputs else name
            if first != name:
                stats[name] = stats[first]
            else:
                stats[name].update(args[0])
            seen.add(name)
            if stop_early and len(seen) == len(modules):
                raise StopForward

        return hook

    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in modules.items()]
    outputs = []
    try:
        for forward in forwards:
            seen.clear()
            readers.clear()
            try:
                outputs.append(forward())
            except StopForward:
                outputs.append(None)
    finally:
        for h in handles:
            h.remove()
    return stats, outputs
