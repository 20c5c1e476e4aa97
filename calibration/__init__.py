"""Calibration: text -> token windows, and per-Linear input statistics shared by pruning and quantization."""

from sparsetrt.calibration.data import (
    CorpusText,
    default_corpus,
    random_windows,
    read_corpus,
    sequential_windows,
    tokenize_corpus,
)
from sparsetrt.calibration.stats import InputStats, collect_input_stats

__all__ = [
    "CorpusText", "InputStats", "collect_input_stats", "default_corpus", "random_windows",
    "read_corpus", "sequential_windows", "tokenize_corpus",
]
