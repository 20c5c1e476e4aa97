"""One generation loop for every backend: left-padded batch, prefill, then one token per step from the KV cache.

The loop owns everything but the forward pass (sparsetrt.runtime.backends), so the same token selection,
stop handling and timing run on PyTorch, ONNX Runtime and TensorRT, and their outputs can be compared token for
token. Timing marks are taken after the backend synchronises, so GPU work is inside the interval it belongs to.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.backends.base import position_ids_for


@dataclass
class Sampling:
    """temperature 0 = greedy (argmax, ties to the lowest id on every backend); otherwise softmax sampling
    from logits / temperature, restricted to the top_k ids (0 = all) and the top_p probability mass."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()
    ignore_stop: bool = False  # benchmarks: always produce max_new_tokens

    def validate(self) -> "Sampling":
        if self.max_new_tokens < 1:
            raise SparsetrtError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise SparsetrtError("temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise SparsetrtError("top_k must be >= 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise SparsetrtError("top_p must be in (0, 1]")
        return self


@dataclass
class Generation:
    tokens: list[list[int]]            # new tokens per prompt, up to and including its stop token
    prompt_tokens: list[int]           # prompt length per prompt
    ttft_s: float                      # prompt in -> first new token chosen (the prefill)
    step_s: list[float] = field(default_factory=list)  # each later token: one decode step for the whole batch
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens after the first, for the whole batch, per second of decoding."""
        steps = len(self.step_s)
        return len(self.tokens) * steps / sum(self.step_s) if steps else float("nan")


def select_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of `logits` [batch, vocab]."""
    if sampling.temperature == 0:
        return logits.argmax(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = logits.astype(np.float64) / sampling.temperature
    # A temperature so small that logits / T overflows (1e-311 reached the server in a fuzz test) has greedy as
    # its limit: those rows take the argmax instead of a softmax of infinities (NaN probabilities).
    overflow = ~np.isfinite(scaled).all(axis=-1)
    if overflow.any():
        scaled[overflow] = 0.0
    if sampling.top_k and sampling.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -sampling.top_k, axis=-1)[:, -sampling.top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
        drop_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= sampling.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    chosen = np.array([rng.choice(probs.shape[-1], p=row) for row in probs])
    return np.where(overflow, logits.argmax(axis=-1), chosen)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both [batch, longest prompt], prompts right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SparsetrtError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def token_stream(runner, prompts: list[list[int]], sampling: Sampling, pad_id: int = 0) -> Iterator[np.ndarray]:
    """The next token of every prompt [batch], one array per step: the prefill's first, then one decode step each
    from the KV cache. Rows that have stopped get `pad_id`. Ends after max_new_tokens, or when every row stopped.
    The single loop behind `generate` (whole batches) and the server (one request, streamed)."""
    sampling.validate()
    rng = np.random.default_rng(sampling.seed)
    stop = np.array(sorted(set(sampling.stop_tokens)), dtype=np.int64)
    ids, mask = left_pad(prompts, pad_id)
    batch = len(prompts)
    done = np.zeros(batch, dtype=bool)
    logits, cache = runner.step(ids, mask, position_ids_for(mask, ids.shape[1]), runner.empty_cache(batch))
    runner.synchronize()
    token = select_tokens(logits, sampling, rng)
    produced = 0
    while True:
        token = np.where(done, pad_id, token)
        yield token
        produced += 1
        if not sampling.ignore_stop and stop.size:
            done |= np.isin(token, stop)
        if produced >= sampling.max_new_tokens or done.all():
            return
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits, cache = runner.step(token[:, None], mask, position_ids_for(mask, 1), cache)
        runner.synchronize()
        token = select_tokens(logits, sampling, rng)


def generate(runner, prompts: list[list[int]], sampling: Sampling, pad_id: int = 0) -> Generation:
    """Generate for a batch of token-id prompts with `runner` (any backend in sparsetrt.runtime.backends)."""
    stop = np.array(sorted(set(sampling.stop_tokens)), dtype=np.int64)
    steps, step_s = [], []
    start = last = time.perf_counter()
    ttft = 0.0
    for token in token_stream(runner, prompts, sampling, pad_id):
        now = time.perf_counter()  # after the backend synchronised and the token was chosen
        if steps:
            step_s.append(now - last)
        else:
            ttft = now - start
        steps.append(token)
        last = now
    new = np.stack(steps, axis=1)
    return Generation(tokens=[_until_stop(row, stop, sampling.ignore_stop) for row in new.tolist()],
                      prompt_tokens=[len(p) for p in prompts], ttft_s=ttft, step_s=step_s,
                      total_s=time.perf_counter() - start)


def _until_stop(row: list[int], stop: np.ndarray, ignore_stop: bool) -> list[int]:
    if ignore_stop:
        return row
    for i, token in enumerate(row):
        if token in stop:
            return row[: i + 1]
    return row


def stop_tokens_of(tokenizer, config=None) -> tuple[int, ...]:
    """The checkpoint's end-of-sequence id(s): generation_config / config eos_token_id, else the tokenizer's."""
    ids = []
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        ids.extend(source if isinstance(source, (list, tuple)) else [source])
    return tuple(sorted(set(int(i) for i in ids)))


def encode_prompts(tokenizer, texts: list[str], chat: bool = False) -> list[list[int]]:
    """Token ids per prompt; `chat` wraps each as one user turn with the tokenizer's chat template."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SparsetrtError("--chat needs a tokenizer with a chat template; this checkpoint has none")
        encoded = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                 tokenize=True) for t in texts]
        return [list(e["input_ids"] if hasattr(e, "keys") else e) for e in encoded]
    return [tokenizer(t)["input_ids"] for t in texts]


def generate_text(runner, tokenizer, texts: list[str], sampling: Sampling, chat: bool = False,
                  max_positions: int | None = None) -> dict:
    """Generate for text prompts (one left-padded batch): what `sparsetrt generate` reports, as data. Refuses,
    before any step, prompts that with max_new_tokens would run past the model's `max_positions`."""
    prompts = encode_prompts(tokenizer, texts, chat=chat)
    longest = max(len(p) for p in prompts)
    if max_positions and longest >= max_positions:
        raise SparsetrtError(f"the longest prompt ({longest} tokens) leaves no room for a new token in the model's "
                             f"{max_positions} positions; shorten it to under {max_positions} tokens")
    if max_positions and longest + sampling.max_new_tokens > max_positions:
        raise SparsetrtError(f"the longest prompt ({longest} tokens) + --max-new-tokens {sampling.max_new_tokens} is "
                             f"more than the model's {max_positions} positions; lower --max-new-tokens to "
                             f"{max_positions - longest} or shorten the prompt")
    result = generate(runner, prompts, sampling, pad_id=tokenizer.pad_token_id or 0)
    outputs = [{"prompt": p, "tokens": t, "text": tokenizer.decode(t, skip_special_tokens=True)}
               for p, t in zip(texts, result.tokens)]
    return {"backend": runner.backend, "outputs": outputs, "ttft_ms": round(result.ttft_s * 1000, 2),
            "decode_tokens_per_s": round(result.decode_tokens_per_s, 2), "total_s": round(result.total_s, 3)}


# Ten short prompts of the kinds an instruct model is asked (facts, code, lists, reasoning); used by the
# parity check and the benchmark when the user passes none.
PARITY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Three tips for staying healthy are",
    "Once upon a time, in a small village by the sea,",
    "The difference between a list and a tuple in Python is",
    "Photosynthesis is the process by which",
    "To make a cup of tea, first",
    "The main causes of the First World War were",
    "A prime number is",
    "Translate to French: Good morning, how are you?",
)


def compare_generations(reference_tokens: list[list[int]], candidate_tokens: list[list[int]]) -> dict:
    """Token-for-token agreement of two greedy generations of the same prompts."""
    divergences = []
    for ref, cand in zip(reference_tokens, candidate_tokens, strict=True):
        first = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), None)
        if first is None and len(ref) != len(cand):
            first = min(len(ref), len(cand))
        divergences.append(first)
    identical = [d is None for d in divergences]
    diverged = [d for d in divergences if d is not None]
    return {"generation_identical": sum(identical) / len(identical),
            "generation_first_divergence": min(diverged) if diverged else None,
            "generation_prompts": len(identical), "generation_tokens": max(len(t) for t in reference_tokens)}
