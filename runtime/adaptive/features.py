"""Cheap signals of how hard an input is, read from the probe: one prefill of the cheapest variant over the prompt.

The probe's logits give, for the last `window` prompt positions, the NLL of the token that actually came next
(how surprised the model is by this text) and the predictive entropy (how unsure it is), plus the entropy at the
last position (what the first generated token faces) and the prompt length. The probe's prefill is not thrown
away: when the controller picks the probe's variant, decoding continues from its KV cache.

Only the last `window` positions are read: a log-softmax over SmolLM2's 49 152-entry vocabulary costs ~0.2 ms a
position on a 2-core CPU (counted in the probe's cost), and the prompt's tail predicts the continuation better than its head.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FEATURES = ("bias", "mean_nll", "max_nll", "std_nll", "mean_entropy", "last_entropy", "log_length")
PROBE_WINDOW = 16


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (logits [..., vocab])."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_stats(logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
    """Per row of `logits` [n, vocab]: entropy (nats), argmax, and the NLL of `targets` [n] when given.
    torch rather than numpy: its fused, threaded log-softmax is ~3x faster here (5 vs 19 ms for 32 x 49 152)."""
    logp = torch.log_softmax(torch.as_tensor(np.asarray(logits, dtype=np.float32)), dim=-1)
    stats = {"entropy": -(logp.exp() * logp).sum(dim=-1).numpy(), "argmax": logp.argmax(dim=-1).numpy()}
    if targets is not None:
        index = torch.as_tensor(np.asarray(targets, dtype=np.int64))[:, None]
        stats["nll"] = -logp.gather(-1, index)[:, 0].numpy()
    return stats


def probe_features(prompt_logits: np.ndarray, prompt_ids, window: int = PROBE_WINDOW) -> np.ndarray:
    """The feature vector (FEATURES order) of one prompt from its probe logits [prompt_len, vocab].

    Scaled to roughly unit range (NLL and entropy in units of 10 nats, length as log2 / 11) so one ridge
    penalty suits every coordinate of the controllers' linear models."""
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    length = len(prompt_ids)
    if prompt_logits.shape[0] != length:
        raise ValueError(f"probe logits cover {prompt_logits.shape[0]} positions, the prompt has {length} tokens")
    # position i predicts token i + 1: the last `window` predictions that have a known next token
    start = max(0, length - 1 - window)
    seen = token_stats(prompt_logits[start:length - 1], prompt_ids[start + 1:]) if length > 1 else None
    last = token_stats(prompt_logits[length - 1:length])
    if seen is None or seen["nll"].size == 0:
        nll = np.zeros(1, dtype=np.float32)
        entropy = last["entropy"]
    else:
        nll, entropy = seen["nll"], seen["entropy"]
    return np.array([1.0, nll.mean() / 10, nll.max() / 10, nll.std() / 10, entropy.mean() / 10,
                     float(last["entropy"][0]) / 10, math.log2(length) / 11], dtype=np.float64)
