"""The prune room's settings: `prune` (with its SparseGPT and schedule groups), `shrink` and `distill`, and the
sparsity pattern they parse. Light (no torch): the CLI builds its parsers from here and the pipeline config checks
its [prune] and [shrink] sections against these models before any stage starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator, model_validator

from sparsetrt.errors import SparsetrtError
from sparsetrt.settings import SEED_MAX, Placement, Settings, named, option

METHODS = ("magnitude", "wanda", "sparsegpt")
PERMUTE_AXES = ("off", "mlp", "heads", "hidden", "all")
MASK_SELECTIONS = ("joint", "independent")
SCHEDULE_MODES = ("uniform", "scheduled", "owl", "hardware")
ERROR_KINDS = ("loss", "absolute", "relative")
WIDTH_IMPORTANCE = ("activation", "taylor", "magnitude")
DEPTH_IMPORTANCE = ("cosine", "loss")


@dataclass(frozen=True)
class Pattern:
    n: int | None = None  # non-zeros kept per group (N:M)
    m: int | None = None  # group size (N:M)
    ratio: float | None = None  # fraction zeroed (unstructured)

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.is_nm else float(self.ratio)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"unstructured:{self.ratio:g}"


def parse_pattern(text: str) -> Pattern:
    """'2:4', '4:8', 'unstructured:0.5' (or just '0.5')."""
    text = str(text).strip().lower()
    if match := re.fullmatch(r"(\d+):(\d+)", text):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m or m > 1024:
            raise SparsetrtError(f"pattern {text}: N:M needs 0 < N < M <= 1024 (N non-zeros kept of every M), e.g. 2:4")
        return Pattern(n=n, m=m)
    if match := re.fullmatch(r"(?:unstructured:)?([0-9.eE+-]+)", text):
        try:
            ratio = float(match[1])
        except ValueError:
            ratio = None
        if ratio is not None:
            if not 0.0 < ratio < 1.0:  # also refuses nan and inf
                raise SparsetrtError(f"pattern {text}: the unstructured ratio must lie strictly between 0 and 1")
            return Pattern(ratio=ratio)
    raise SparsetrtError(f"unknown pattern '{text}'; use N:M (e.g. 2:4, 4:8) or unstructured:RATIO (e.g. unstructured:0.5)")


def pattern_text(value: str) -> str:
    """A field validator's check of a pattern's spelling."""
    try:
        parse_pattern(value)
    except SparsetrtError as exc:
        raise ValueError(str(exc)) from None
    return value


class SparseGPTSettings(Settings):
    """SparseGPT's solver."""

    block_size: int = option(128, "SparseGPT lazy-update block (columns)", ge=1, le=1_048_576)
    damping: float = option(0.01, "SparseGPT dampening, a fraction of mean diag(H)", gt=0, le=1e6)
    mask_selection: Literal[MASK_SELECTIONS] = option("joint", "SparseGPT's N:M mask rule")


class ScheduleSettings(Settings):
    """Layer-wise sparsity schedule."""

    mode: Literal[SCHEDULE_MODES] = option(
        "uniform", "uniform | scheduled (log-level clusters of OBS error estimates) | owl | hardware (dense or N:M "
                   "per Linear)", flag="--schedule")
    levels: int = option(4, "scheduled: number of error levels (k of the log-level clustering)", ge=1, le=1000)
    range: str = option("auto", "scheduled: LO,HI sparsity range, or auto (from the error spread)")
    max_half_width: float = option(0.2, "auto range: the widest it gets, target +- this", ge=0, le=0.5, cli=False)
    error: Literal[ERROR_KINDS] = option(
        "loss", "scheduled/hardware: rank modules by the OBS error weighted by the loss's sensitivity (loss), "
                "absolute, or relative to the output")
    sensitivity_windows: int = option(8, "calibration windows of the backward pass behind the loss kind", ge=0,
                                      le=100_000, cli=False)
    probe_sparsity: float = option(0.0, "scheduled: sparsity the errors are estimated at (0: the target)", ge=0, lt=1)
    coverage: float = option(0.9, "hardware: fraction of decoder Linear weights that must be N:M", ge=0, le=1)
    owl_lambda: float = option(0.08, "owl: sparsities spread over target +- lambda", ge=0, lt=1)
    owl_m: float = option(5.0, "owl: a score is an outlier above M x the layer mean", gt=0, le=1e6, cli=False)

    @field_validator("range")
    @classmethod
    def range_form(cls, value: str) -> str:
        if value.strip() != "auto":
            lo, hi = _bounds(value)
            if not 0 <= lo <= hi < 1:
                raise ValueError(f"{value!r} must satisfy 0 <= LO <= HI < 1")
        return value

    @model_validator(mode="after")
    def loss_needs_windows(self) -> "ScheduleSettings":
        if self.error == "loss" and self.sensitivity_windows < 1:
            raise ValueError(f"{named('error')} loss needs {named('sensitivity_windows')} >= 1 (calibration windows "
                             "to backpropagate)")
        return self

    def bounds(self) -> tuple[float, float] | None:
        """(lo, hi) of a user range, None for "auto"."""
        return None if self.range.strip() == "auto" else _bounds(self.range)

    def to_json(self) -> dict:
        return self.model_dump()


def _bounds(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"must be 'auto' or 'LO,HI', e.g. 0.6,0.8, not {text!r}") from None
    return lo, hi


class PruneSettings(Placement):
    """[prune]: what is pruned, how, and where the work runs."""

    method: Literal[METHODS] = option("sparsegpt", "pruning method")
    pattern: str = option("2:4", "N:M (N non-zeros of every M) or unstructured:RATIO")
    targets: list[str] = option(["*"], "glob(s) over module names (*: every Linear in the blocks)",
                                min_length=1)
    exclude: list[str] = option([], "glob(s) of modules to leave dense")
    batch_size: int = option(8, "calibration windows per forward pass", ge=1, le=100_000)
    permute: Literal[PERMUTE_AXES] = option(
        "off", "choose which input channels share an N:M group before pruning, by exact permutations folded into the "
               "weights (same function, no runtime op): mlp (the MLP's intermediate channels: down_proj's groups), "
               "heads (each KV head's value dimensions: o_proj's groups), hidden (the residual stream's channels, one "
               "order for the model: the groups of every Linear that reads it), all (the three)")
    sparsegpt: SparseGPTSettings = option(SparseGPTSettings, "SparseGPT's solver")
    schedule: ScheduleSettings = option(ScheduleSettings, "layer-wise sparsity schedule")

    known_pattern = field_validator("pattern")(classmethod(lambda cls, value: pattern_text(value)))

    @model_validator(mode="after")
    def schedule_fits_pattern(self) -> "PruneSettings":
        pattern, mode = self.parsed_pattern, self.schedule.mode
        if mode in ("scheduled", "owl") and pattern.is_nm:
            raise ValueError(f"{named('schedule.mode')} {mode} spreads an unstructured target over the modules; give "
                             f"{named('pattern')} unstructured:RATIO (e.g. 0.7), or use {named('schedule.mode')} "
                             "hardware for N:M")
        if mode == "hardware" and not pattern.is_nm:
            raise ValueError(f"{named('schedule.mode')} hardware chooses dense or N:M per Linear; give "
                             f"{named('pattern')} 2:4 (or 4:8)")
        if mode == "scheduled" and (bounds := self.schedule.bounds()) and not bounds[0] <= pattern.ratio <= bounds[1]:
            raise ValueError(f"target sparsity {pattern.ratio} cannot be reached inside {named('schedule.range')} "
                             f"[{bounds[0]}, {bounds[1]}]: a parameter-weighted average over modules limited to that "
                             "range lies inside it; widen the range or change the target")
        if self.permute != "off" and not pattern.is_nm:
            raise ValueError(f"{named('permute')} {self.permute} chooses the groups of an N:M pattern; "
                             f"{named('pattern')} {self.pattern} has none: drop {named('permute')} or give N:M")
        if self.stream and mode != "uniform":
            raise ValueError(f"{named('stream')} prunes one block at a time; the {mode} schedule probes the whole "
                             "model first: run it without streaming")
        return self

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def permute_axes(self) -> list[str]:
        return {"off": [], "all": ["mlp", "heads", "hidden"]}.get(self.permute, [self.permute])


def parse_size(text: str, option_name: str, full: int) -> int:
    """A fraction in (0, 1] keeps that share of `full` (at least 1); an integer in [1, full] is the size."""
    flag = "--" + option_name.replace("_", "-")
    try:
        value = float(text) if "." in str(text) else int(text)
    except ValueError:
        raise SparsetrtError(f"{flag} {text}: give a fraction to keep (0.75) or a size (384)") from None
    if isinstance(value, float):
        if not 0 < value <= 1:  # also refuses nan
            raise SparsetrtError(f"{flag} {text}: a fraction to keep must be in (0, 1]")
        return max(1, round(value * full))
    if not 1 <= value <= full:
        raise SparsetrtError(f"{flag} {text}: the size must be between 1 and the model's {full}")
    return value


SIZES = ("mlp", "heads", "kv_heads", "layers")


class ShrinkSettings(Placement):
    """[shrink]: structured pruning (a fraction keeps that share, an integer sets the size; all 1.0 = no shrink)."""

    mlp: str = option("1.0", "MLP intermediate channels, e.g. 0.75 or 1152")
    heads: str = option("1.0", "query heads (a multiple of the kept KV heads)")
    kv_heads: str = option("1.0", "KV heads: whole groups of query heads go with them")
    layers: str = option("1.0", "decoder blocks, e.g. 26")
    importance: Literal[WIDTH_IMPORTANCE] = option(
        "activation", "how channels and heads are ranked (activation: Minitron's; taylor: |w * grad|; magnitude)")
    depth_importance: Literal[DEPTH_IMPORTANCE] = option(
        "cosine", "how blocks are ranked: cosine (1 - cos(input, output)) or loss (its increase when skipped)")

    @field_validator(*SIZES, mode="before")
    @classmethod
    def size_as_written(cls, value):
        """A number in a config file (0.75, 26) is kept as it was written: a fraction or a size."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator(*SIZES)
    @classmethod
    def size_form(cls, value: str) -> str:
        """The form: a fraction in (0, 1] or a size >= 1 (the model's own sizes bound it in shrink.plan())."""
        try:
            number = float(value) if "." in value else int(value)
        except ValueError:
            raise ValueError(f"{value}: give a fraction to keep (0.75) or a size (384)") from None
        if isinstance(number, float) and not 0 < number <= 1:  # also refuses nan
            raise ValueError(f"{value}: a fraction to keep must be in (0, 1]")
        if isinstance(number, int) and number < 1:
            raise ValueError(f"{value}: the size must be at least 1")
        return value

    def enabled(self) -> bool:
        return any(getattr(self, k) not in ("1.0", "1") for k in SIZES)


class DistillSettings(Settings):
    """Distillation."""

    steps: int = option(0, "optimizer steps (0: as many as fit the time budget, measured, then fixed for resumes)",
                        ge=0, le=10**9)
    max_minutes: float = option(30.0, "wall-clock budget of this invocation", gt=0, le=10**6)
    seq_len: int = option(256, "tokens per training window", ge=2, le=1_048_576)
    batch_size: int = option(4, "windows per micro-batch", ge=1, le=100_000)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1, le=100_000)
    lr: float = option(1e-4, "peak learning rate", gt=0, le=10)
    min_lr_ratio: float = option(0.1, "the cosine ends at lr x this", ge=0, le=1, cli=False)
    warmup_steps: int = option(10, "linear warm-up steps", ge=0, le=10**9, cli=False)
    # decay pulls surviving weights towards zero, the opposite of recovery
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0, le=10, cli=False)
    temperature: float = option(1.0, "distillation temperature", gt=0, le=1000)
    hidden_weight: float = option(0.0, "weight of the hidden-state MSE term (0 = off)", ge=0, le=1e6)
    train_embeddings: bool = option(False, "also train the embedding / tied lm_head (else they stay the teacher's)")
    seed: int = option(0, "random seed (each step's windows)", ge=0, le=SEED_MAX)
    checkpoint_every: int = option(20, "steps between resume points", ge=1, le=10**9)

    def to_json(self) -> dict:
        return self.model_dump()
