"""Every benchmark's settings and the names its options choose from, in one light module (the CLI builds its
parsers from it without importing a benchmark, torch or onnxruntime)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sparsetrt.prune.settings import METHODS, PERMUTE_AXES
from sparsetrt.runtime.settings import BACKENDS, SERVE_PRECISIONS
from sparsetrt.settings import SEED_MAX, Settings, named, option

Positive = Annotated[int, Field(ge=1, le=1 << 20)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


# perf: `sparsetrt bench perf`
class BenchSettings(Settings):
    """Timing."""

    batches: list[Positive] = option([1, 4], "comma-separated batch sizes", style="comma", min_length=1)
    prompt_tokens: int = option(128, "prompt tokens per request", ge=1, le=1 << 20)
    new_tokens: int = option(64, "new tokens per request (>= 2: one prefill, one decode step)", ge=2, le=1 << 20)
    warmup: int = option(1, "untimed generations first", ge=0, le=1000)
    repeats: int = option(3, "timed generations per batch size", ge=1, le=1000)


# schedule: `sparsetrt bench schedule`
class ScheduleBenchSettings(Settings):
    """Schedules compared."""

    targets: list[Fraction] = option([0.6, 0.7, 0.8], "unstructured target sparsities", style="comma", min_length=1)
    coverages: list[Annotated[float, Field(ge=0, le=1)]] = option(
        [0.9, 0.75], "hardware mode: fractions of Linear weights made 2:4", style="comma", min_length=1)
    distill: list[str] = option(["all"], "comma-separated schedule cases to distill, all, or none", style="comma",
                                min_length=1)
    distill_minutes: float = option(30.0, "budget per distilled case", gt=0, le=10**6)
    distill_steps: int = option(0, "steps per distilled case (0: as many as fit the minutes)", ge=0, le=10**9,
                                cli=False)
    eval_windows: int = option(40, "evaluation windows per domain", ge=1, le=100_000)
    seq_len: int = option(512, "tokens per window", ge=2, le=1 << 20, cli=False)
    calib_samples: int = option(32, "calibration windows", ge=1, le=100_000, cli=False)
    seed: int = option(0, "random seed", ge=0, le=SEED_MAX, cli=False)


# serve: `sparsetrt bench serve`
class ServeBenchSettings(Settings):
    """Servers and load."""

    model: str = option("artifacts", "what `serve --model` gets (default: the demo's artifacts)", min_length=1)
    backend: Literal[BACKENDS] = option("onnxruntime", "the servers' backend")
    precisions: list[Literal[SERVE_PRECISIONS[1:]]] = option(
        ["fp32", "int8"], "comma-separated: a batched and an unbatched server each", style="comma", min_length=1)
    max_batch: int = option(8, "the batching servers' --max-batch (>= 2; the unbatched server, --max-batch 1, runs "
                               "beside it)", ge=2, le=4096)
    clients: int = option(32, "concurrent clients", ge=1, le=100_000)
    duration_s: float = option(60.0, "seconds of the load phase", flag="--duration", gt=0, le=86_400)
    max_tokens: int = option(32, "max_tokens of each request", ge=1, le=1 << 20)
    overload_queue: int = option(4, "queue limit of the overload phase", ge=1, le=100_000)
    overload_duration_s: float = option(20.0, "seconds of the overload phase", flag="--overload-duration", gt=0,
                                        le=86_400)


# name: (shrink sizes, what it removes) for SmolLM2-135M (30 blocks, 9 heads in 3 KV groups, MLP 1536): the
# shares of decoder Linear weights removed are computed and reported, these are only the knobs.
SMOLLM2_VARIANTS = {
    "mlp-25": {"mlp": "1024"},
    "mlp-40": {"mlp": "704"},
    "heads-12": {"heads": "3"},                       # the most heads can give: one query head per KV group
    "depth-25": {"layers": "23"},
    "depth-40": {"layers": "18"},
    "mixed-25": {"mlp": "1152", "heads": "6"},        # Minitron-style: some MLP, some heads
    "mixed-40": {"mlp": "896", "heads": "6", "layers": "27"},
}


class StructuredBenchSettings(Settings):
    """Variants and measurements."""

    model: str = option("smollm2-135m", "the dense model (the variants' sizes are SmolLM2's)", min_length=1)
    variants: dict[str, dict[str, str]] = option(dict(SMOLLM2_VARIANTS), "name -> shrink sizes", cli=False)
    pruned_2to4: str | None = option("artifacts/pruned", "a 2:4 checkpoint to compare with (none: skip)",
                                     cli=False)
    calib_samples: int = option(32, "calibration windows", ge=1, le=100_000, cli=False)
    seq_len: int = option(512, "tokens per window", ge=2, le=1 << 20, cli=False)
    eval_windows: int = option(40, "evaluation windows", ge=1, le=100_000)
    second_domain_windows: int = option(10, "windows of the second domain", ge=1, le=100_000, cli=False)
    distill: list[str] = option([], "variants also distilled", cli=False)
    distill_minutes: float = option(30.0, "budget per distilled variant", gt=0, le=10**6)
    batches: list[Positive] = option([1, 4], "batch sizes timed", cli=False, min_length=1)
    prompt_tokens: int = option(128, "prompt tokens", ge=1, le=1 << 20, cli=False)
    new_tokens: int = option(64, "new tokens", ge=2, le=1 << 20, cli=False)
    repeats: int = option(3, "timed generations per batch size", ge=1, le=1000)


# gpu: `sparsetrt bench gpu`
# Linear shapes as (out_features, in_features), one entry per distinct shape of a decoder block.
GEMM_SHAPES = {
    "smollm2-135m": {"q_proj, o_proj": (576, 576), "k_proj, v_proj": (192, 576), "gate_proj, up_proj": (1536, 576),
                     "down_proj": (576, 1536)},
    "llama-3-8b": {"q_proj, o_proj": (4096, 4096), "k_proj, v_proj": (1024, 4096),
                   "gate_proj, up_proj": (14336, 4096), "down_proj": (4096, 14336)},
}


# How many of each shape one decoder block holds (for the block-weighted speedup of a model's Linears).
SHAPE_COUNTS = {"q_proj, o_proj": 2, "k_proj, v_proj": 2, "gate_proj, up_proj": 2, "down_proj": 1}


# Llama configurations of the end-to-end models (random weights): SmolLM2-135M's and Llama-3.2-1B's shapes.
E2E_MODELS = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}


DTYPES = ("fp16", "bf16", "int8")


class GpuBenchSettings(Settings):
    """GEMMs and end-to-end generation."""

    tokens: list[Positive] = option([1, 16, 128, 1024, 4096], "GEMM: comma-separated token counts (M)",
                                    style="comma", min_length=1)
    dtypes: list[Literal[DTYPES]] = option(list(DTYPES), "GEMM: comma-separated dtypes", style="comma",
                                           min_length=1)
    gemm_models: list[Literal[tuple(GEMM_SHAPES)]] = option(list(GEMM_SHAPES), "whose Linear shapes to time",
                                                            style="comma")
    e2e_models: list[Literal[tuple(E2E_MODELS)]] = option(
        list(E2E_MODELS), "end-to-end models (random weights, made 2:4 on the GPU); empty for none", style="comma")
    batches: list[Positive] = option([1, 8, 32], "end to end: comma-separated batch sizes", style="comma",
                                     min_length=1)
    prompt_tokens: int = option(128, "end to end: prompt tokens", ge=1, le=1 << 20, cli=False)
    new_tokens: int = option(64, "end to end: new tokens", ge=2, le=1 << 20, cli=False)
    samples: int = option(20, "timed samples per GEMM cell (>= 20; the median is reported)", ge=20, le=100_000)
    warmup: int = option(5, "untimed runs first", ge=1, le=10_000, cli=False)
    e2e_repeats: int = option(3, "timed generations per end-to-end cell", ge=1, le=10_000)
    # NVML's counter updates every 20-100 ms: measure over at least this long
    energy_window_s: float = option(1.0, "seconds NVML energy is measured over", flag="--energy-window", gt=0,
                                    le=3600)
    seed: int = option(0, "random seed", ge=0, le=SEED_MAX, cli=False)


# scale: `sparsetrt bench scale`
GiB = 1 << 30


# LlamaConfig sizes of public checkpoints. The tokenizer is SmolLM2's (49152 ids), so a smaller vocabulary is
# raised to it (TinyLlama's 32000: its embedding is 1.5x the real one, said in the report).
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=49152, tie_word_embeddings=False),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}


# (shape, blocks kept; None = all). Two depths of the 8B width show what depends on depth (1 and 2 blocks: an 8B
# block takes minutes on 2 CPUs, and the fit needs only two depths).
DEFAULT_RUNS = (("smollm2-135m", None), ("smollm2-360m", None), ("tinyllama-1.1b", None), ("llama3-8b", 1),
                ("llama3-8b", 2))


STAGES = ("prune", "prune-stream", "export-fp16", "export-fp16-stream", "engine-fp16", "quantize-int4-stream",
          "engine-int4", "export-fp32-stream", "quantize-int8-stream", "engine-int8", "distill", "distill-stream-teacher",
          "shrink", "shrink-stream")


class ScaleBenchSettings(Settings):
    """Runs and stages."""

    runs: list = option(list(DEFAULT_RUNS), "(shape, blocks kept or None, stages or ()) per run", cli=False)
    calib_samples: int = option(16, "calibration windows", ge=1, le=100_000)
    calib_seq_len: int = option(256, "tokens per calibration window", ge=2, le=1 << 20)
    stages: list[Literal[STAGES]] = option(list(STAGES), "stages run", cli=False, min_length=1)
    note: str = option("", "what else ran on the machine (written into the report: the wall times depend on it)")
    memory_gib: float = option(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB,
                               "this machine's memory", cli=False, gt=0)


# adaptive: `sparsetrt bench adaptive`
class AdaptiveBenchSettings(Settings):
    """The stream and the policies."""

    inputs_per_source: int = option(40, "inputs drawn from each text source", ge=2, le=100_000)
    new_tokens: int = option(16, "true continuation tokens scored per input", ge=2, le=1 << 20)
    min_prompt_tokens: int = option(24, "shortest prompt", ge=2, le=1 << 20)
    max_prompt_tokens: int = option(160, "longest prompt", ge=2, le=1 << 20)
    train_fraction: float = option(0.5, "share of the stream the controllers learn on", gt=0, lt=1, cli=False)
    lam: float | None = option(None, "price of cost (nats per unit relative to dense); default: the static "
                                     "frontier's slope between the probe variant and dense", ge=0, le=1e6)
    lams: list[Annotated[float, Field(ge=0, le=1e6)]] = option(
        [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0], "the sweep behind the plotted curves", cli=False)
    audit_fraction: float = option(0.1, "share of requests also run on dense", ge=0, le=1)
    seed: int = option(0, "random seed", ge=0, le=SEED_MAX)
    variants: list[str] = option([], "comma-separated variant names to use (dense and the probe are always kept)",
                                 flag="--only", style="comma")

    @model_validator(mode="after")
    def prompt_range(self) -> "AdaptiveBenchSettings":
        if self.min_prompt_tokens > self.max_prompt_tokens:
            raise ValueError(f"{named('min_prompt_tokens')} must not exceed {named('max_prompt_tokens')}")
        return self


# cpu: `sparsetrt bench cpu`
class CpuBenchSettings(BenchSettings):
    """Speed and perplexity."""

    prompt_tokens: int = option(64, "prompt tokens per request", ge=1, le=1 << 20)
    new_tokens: int = option(128, "new tokens per request (>= 2)", ge=2, le=1 << 20)
    warmup: int = option(1, "untimed generations first", ge=0, le=1000, cli=False)
    eval_windows: int = option(40, "perplexity: the first windows of --seq-len tokens of the evaluation text", ge=1,
                               le=100_000)
    seq_len: int = option(512, "tokens per evaluation window", ge=2, le=1 << 20)
    corpus: str = option("auto", "prompt and evaluation text (auto: WikiText-2 test / Python docs)", min_length=1)
    genai: bool = option(True, "the ONNX Runtime GenAI row (needs `pip install 'sparsetrt[bench]'`; --no-genai: "
                               "leave it out)")

    def speed(self) -> BenchSettings:
        return BenchSettings(batches=list(self.batches), prompt_tokens=self.prompt_tokens,
                             new_tokens=self.new_tokens, warmup=self.warmup, repeats=self.repeats)


# `make bench-quality`'s rows: each method alone and with its channel permutations, SparseGPT's axes one by one,
# and SparseGPT quantized after pruning (with and without the permutations)
QUALITY_METHODS = ("dense", "magnitude", "magnitude@all", "wanda", "wanda@all", "sparsegpt", "sparsegpt@mlp",
                   "sparsegpt@heads", "sparsegpt@hidden", "sparsegpt@all", "sparsegpt+int8", "sparsegpt+int4",
                   "sparsegpt@all+int4")


def quality_method(text: str) -> tuple[str, str, str]:
    """`bench quality`'s method spelling, METHOD[@AXES][+int8|+int4] (dense, sparsegpt, wanda@all,
    sparsegpt@mlp+int4): (method, permutation axes or "off", quantization or "")."""
    base, _, precision = text.partition("+")
    method, _, permute = base.partition("@")
    permute = permute or "off"
    if ((method != "dense" and method not in METHODS) or precision not in ("", "int8", "int4")
            or permute not in PERMUTE_AXES or (method == "dense" and permute != "off")):
        raise ValueError(f"{text!r} is not dense or one of {', '.join(METHODS)}, optionally with @AXES "
                         f"({', '.join(a for a in PERMUTE_AXES if a != 'off')}: exact permutations before pruning) "
                         "and +int8 or +int4")
    return method, permute, precision
