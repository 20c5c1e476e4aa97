"""The PyTorch reference runner (eager transformers), optionally with cuSPARSELt 2:4 Linears on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.sparse import to_sparse_semi_structured
from transformers import DynamicCache

from sparsetrt.errors import SparsetrtError
from sparsetrt.models import load_model
from sparsetrt.prune.masks import nm_violations
from sparsetrt.runtime.backends.base import position_ids_for


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
        runner = cls(*load_model(Path(checkpoint), dtype=dtype), device=device)
        if semi_structured:
            to_semi_structured(runner.model)
        return runner

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
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

        def tensor(a):
            return torch.as_tensor(a, dtype=torch.long, device=self.device)

        with torch.inference_mode():
            out = self.model(input_ids=tensor(input_ids), attention_mask=tensor(mask),
                             position_ids=tensor(position_ids_for(mask, input_ids.shape[1])),
                             past_key_values=self.empty_cache(input_ids.shape[0]), use_cache=True)
        return out.logits.float().cpu().numpy(), out.past_key_values

    def empty_cache(self, batch: int):
        # Full-length layers, as the export traces them: a sliding-window layer crops its past, which rows joined
        # into a running batch (serve's continuous batching) cannot be; the attention mask applies the window.
        return DynamicCache()

    def step(self, input_ids, attention_mask, position_ids, cache):
        def tensor(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.long, device=self.device)

        with torch.inference_mode():
            out = self.model(input_ids=tensor(input_ids), attention_mask=tensor(attention_mask),
                             position_ids=tensor(position_ids), past_key_values=cache, use_cache=True)
        return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def to_semi_structured(model) -> int:
    """Swap every 2:4-sparse Linear weight for torch's semi-structured sparse tensor (CUDA, SM >= 80, fp16/bf16/
    int8); returns how many were swapped. Weights that are not exactly 2:4 stay dense."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        raise SparsetrtError("semi-structured 2:4 weights need a CUDA GPU with compute capability >= 8.0 (Ampere)")
    swapped = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_cuda and nm_violations(module.weight.detach(), 2, 4)[0] == 0:
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            swapped += 1
    return swapped
