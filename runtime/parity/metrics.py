"""Logit-level agreement between a reference and a candidate, accumulated window by window.

Per output position: absolute error, cosine similarity, top-1 agreement, top-5 overlap
(|top5(ref) ∩ top5(cand)| / 5), KL(reference ‖ candidate); per run: perplexity of each on the next tokens.
Everything is computed in float64 from float32 logits.

Top-1 agreement counts only the positions where the reference's top-2 margin exceeds `tie_margin` (the
precision's logit tolerance): at a near-tie any correct implementation may pick either token, so a flip there
measures the model's ties, not the export. Near-ties and the flips among them are reported separately.
"""

from __future__ import annotations

import math

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-x, k - 1, axis=-1)[..., :k]


# Every metric `ParityAccumulator.result()` reports, in report order.
class ParityAccumulator:
    def __init__(self, tie_margin: float = 0.0) -> None:
        self.tie_margin = tie_margin
        self.decisive = 0
        self.near_ties = 0
        self.near_tie_flips = 0
        self.positions = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.elements = 0
        self.sum_cos = 0.0
        self.min_cos = 1.0
        self.top1 = 0
        self.top5 = 0.0
        self.sum_kl = 0.0
        self.max_kl = 0.0
        self.nll_ref = 0.0
        self.nll_cand = 0.0
        self.predicted = 0

    def update(self, ref: np.ndarray, cand: np.ndarray, input_ids: np.ndarray) -> None:
        """ref, cand: logits [batch, seq, vocab]; input_ids: [batch, seq]."""
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {cand.shape}")
        ref = ref.reshape(-1, ref.shape[-1])
        cand = cand.reshape(-1, cand.shape[-1])
        diff = np.abs(ref.astype(np.float64) - cand)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.elements += diff.size
        cos = (ref * cand).sum(-1, dtype=np.float64) / (
            np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1) + 1e-30)
        self.sum_cos += float(cos.sum())
        self.min_cos = min(self.min_cos, float(cos.min()))
        agree = ref.argmax(-1) == cand.argmax(-1)
        top2 = np.partition(ref, -2, axis=-1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > self.tie_margin
        self.top1 += int((agree & decisive).sum())
        self.decisive += int(decisive.sum())
        self.near_ties += int((~decisive).sum())
        self.near_tie_flips += int((~agree & ~decisive).sum())
        t5r, t5c = np.sort(top_k(ref, 5), -1), top_k(cand, 5)
        self.top5 += float(sum(np.isin(t5c[i], t5r[i]).sum() for i in range(len(t5r))) / 5)
        lp_ref, lp_cand = log_softmax(ref), log_softmax(cand)
        kl = (np.exp(lp_ref) * (lp_ref - lp_cand)).sum(-1)
        self.sum_kl += float(kl.sum())
        self.max_kl = max(self.max_kl, float(kl.max()))
        self.positions += len(ref)
        # Next-token NLL: position t predicts token t+1 within each window.
        batch, seq = input_ids.shape
        lp_ref = lp_ref.reshape(batch, seq, -1)[:, :-1]
        lp_cand = lp_cand.reshape(batch, seq, -1)[:, :-1]
        target = input_ids[:, 1:, None]
        self.nll_ref -= float(np.take_along_axis(lp_ref, target, -1).sum())
        self.nll_cand -= float(np.take_along_axis(lp_cand, target, -1).sum())
        self.predicted += batch * (seq - 1)

    def result(self) -> dict:
        ppl_ref = math.exp(self.nll_ref / self.predicted)
        ppl_cand = math.exp(self.nll_cand / self.predicted)
        return {
            "positions": self.positions,
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.sum_abs / self.elements,
            "cosine_similarity": self.sum_cos / self.positions,
            "min_cosine_similarity": self.min_cos,
            "top1_agreement": self.top1 / self.decisive if self.decisive else 1.0,
            "top1_near_ties": self.near_ties,
            "top1_near_tie_flips": self.near_tie_flips,
            "top5_agreement": self.top5 / self.positions,
            "kl_divergence": self.sum_kl / self.positions,
            "max_kl_divergence": self.max_kl,
            "perplexity_reference": ppl_ref,
            "perplexity_candidate": ppl_cand,
            "perplexity_rel_diff": abs(ppl_cand - ppl_ref) / ppl_ref,
        }
