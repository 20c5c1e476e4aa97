"""Every benchmark's settings and the names its options choose from, in one light module (the CLI builds its
parsers from it without importing a benchmark, torch or onnxruntime)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sparsetrt.errors import SparsetrtError


# perf: `sparsetrt bench perf`
@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 4)
    prompt_tokens: int = 128
    new_tokens: int = 64
    warmup: int = 1
    repeats: int = 3

    def validate(self) -> "BenchSettings":
        if not self.batches or min(self.batches) < 1:
            raise SparsetrtError("batch sizes must be >= 1")
        if self.prompt_tokens < 1 or self.new_tokens < 2:
            raise SparsetrtError("prompt tokens must be >= 1 and new tokens >= 2 (one prefill, one decode step)")
        if self.repeats < 1 or self.warmup < 0:
            raise SparsetrtError("repeats must be >= 1 and warmup >= 0")
        return self


# schedule: `sparsetrt bench schedule`
@dataclass
class ScheduleBenchSettings:
    targets: list = field(default_factory=lambda: [0.6, 0.7, 0.8])
    coverages: list = field(default_factory=lambda: [0.9, 0.75])
    distill: list = field(default_factory=lambda: ["all"])  # variant names, "all" or "none"
    distill_minutes: float = 30.0
    distill_steps: int = 0  # 0 = as many as fit distill_minutes
    eval_windows: int = 40
    seq_len: int = 512
    calib_samples: int = 32
    seed: int = 0


# serve: `sparsetrt bench serve`
@dataclass
class ServeBenchSettings:
    model: str = "artifacts"
    backend: str = "onnxruntime"
    precisions: tuple[str, ...] = ("fp32", "int8")
    max_batch: int = 8
    clients: int = 32
    duration_s: float = 60.0
    max_tokens: int = 32
    overload_queue: int = 4
    overload_duration_s: float = 20.0


# structured: `sparsetrt bench structured`
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


@dataclass
class StructuredBenchSettings:
    model: str = "smollm2-135m"
    variants: dict = field(default_factory=lambda: dict(SMOLLM2_VARIANTS))
    pruned_2to4: str | None = "artifacts/pruned"   # the demo's 2:4 checkpoint, for comparison (None: skip)
    calib_samples: int = 32
    seq_len: int = 512
    eval_windows: int = 40
    second_domain_windows: int = 10
    distill: tuple[str, ...] = ()                  # variants also distilled
    distill_minutes: float = 30.0
    batches: tuple[int, ...] = (1, 4)
    prompt_tokens: int = 128
    new_tokens: int = 64
    repeats: int = 3


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


@dataclass
class GpuBenchSettings:
    tokens: tuple[int, ...] = (1, 16, 128, 1024, 4096)
    dtypes: tuple[str, ...] = DTYPES
    gemm_models: tuple[str, ...] = tuple(GEMM_SHAPES)
    e2e_models: tuple[str, ...] = tuple(E2E_MODELS)
    batches: tuple[int, ...] = (1, 8, 32)
    prompt_tokens: int = 128
    new_tokens: int = 64
    samples: int = 20             # timed samples per cell (the median is reported)
    warmup: int = 5
    e2e_repeats: int = 3          # timed generations per end-to-end cell
    energy_window_s: float = 1.0  # NVML's counter updates every 20-100 ms: measure over at least this long
    seed: int = 0

    def validate(self) -> "GpuBenchSettings":
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown:
            raise SparsetrtError(f"unknown dtype(s) {unknown}; choose from {', '.join(DTYPES)}")
        for name, chosen, known in (("GEMM model", self.gemm_models, GEMM_SHAPES),
                                    ("end-to-end model", self.e2e_models, E2E_MODELS)):
            if any(m not in known for m in chosen):
                raise SparsetrtError(f"unknown {name} in {list(chosen)}; choose from {', '.join(known)}")
        if not self.tokens or min(self.tokens) < 1 or not self.batches or min(self.batches) < 1:
            raise SparsetrtError("token counts and batch sizes must be >= 1")
        if self.samples < 20:
            raise SparsetrtError("--samples must be >= 20 (the median of at least 20 timed samples)")
        if self.warmup < 1 or self.e2e_repeats < 1 or self.prompt_tokens < 1 or self.new_tokens < 2:
            raise SparsetrtError("warm-up and repeats must be >= 1, prompt tokens >= 1 and new tokens >= 2")
        if self.energy_window_s <= 0:
            raise SparsetrtError("the energy window must be > 0 s")
        return self


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


@dataclass
class ScaleBenchSettings:
    runs: tuple = DEFAULT_RUNS
    calib_samples: int = 16
    calib_seq_len: int = 256
    stages: tuple[str, ...] = STAGES
    note: str = ""  # what else ran on the machine, said in the report (the wall times depend on it)
    memory_gib: float = field(default_factory=lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB)


# adaptive: `sparsetrt bench adaptive`
@dataclass
class AdaptiveBenchSettings:
    inputs_per_source: int = 40
    new_tokens: int = 16
    min_prompt_tokens: int = 24
    max_prompt_tokens: int = 160
    train_fraction: float = 0.5
    lam: float | None = None         # nats per unit of cost relative to dense for the main rows; None = the
                                     # static frontier's slope between the probe variant and dense (training half)
    lams: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # the sweep behind the plotted curves
    audit_fraction: float = 0.1
    seed: int = 0
    variants: tuple[str, ...] = ()   # a subset of the variant set's names; () = all

    def validate(self) -> "AdaptiveBenchSettings":
        if self.inputs_per_source < 2 or self.new_tokens < 2:
            raise SparsetrtError("inputs per source must be >= 2 and new tokens >= 2")
        if not 2 <= self.min_prompt_tokens <= self.max_prompt_tokens:
            raise SparsetrtError("prompt lengths must satisfy 2 <= min <= max")
        if not 0 < self.train_fraction < 1:
            raise SparsetrtError("train fraction must be in (0, 1)")
        if (self.lam is not None and self.lam < 0) or any(v < 0 for v in self.lams):
            raise SparsetrtError("lam values must be >= 0")
        return self



# cpu: `sparsetrt bench cpu`
@dataclass
class CpuBenchSettings:
    batches: tuple[int, ...] = (1, 4)
    prompt_tokens: int = 64
    new_tokens: int = 128
    warmup: int = 1
    repeats: int = 3
    eval_windows: int = 40       # perplexity: the first windows of the evaluation text
    seq_len: int = 512
    corpus: str = "auto"
    genai: bool = True           # the ONNX Runtime GenAI row (needs `pip install 'sparsetrt[bench]'`)

    def validate(self) -> "CpuBenchSettings":
        BenchSettings(self.batches, self.prompt_tokens, self.new_tokens, self.warmup, self.repeats).validate()
        if self.eval_windows < 1 or self.seq_len < 2:
            raise SparsetrtError("--eval-windows must be >= 1 and --seq-len >= 2")
        return self
