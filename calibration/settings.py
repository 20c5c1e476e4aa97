"""The calibration group: the text a stage calibrates on and its windows (pruning, shrinking and quantization
calibrate the same way). `[calibration]` in a config file; --calib, --calib-samples, --calib-seq-len, --seed."""

from __future__ import annotations

from sparsetrt.settings import SEED_MAX, Settings, option


class CalibrationSettings(Settings):
    """Calibration text and windows."""

    corpus: str = option("auto", "calibration text file, directory of .txt, JSONL (text field), or auto (WikiText-2 "
                                 "valid when present, else Python's bundled docs text)", flag="--calib", min_length=1)
    samples: int = option(32, "calibration windows", flag="--calib-samples", ge=1, le=1_000_000)
    seq_len: int = option(512, "tokens per calibration window", flag="--calib-seq-len", ge=2, le=1_048_576)
    seed: int = option(0, "random seed (window sampling)", ge=0, le=SEED_MAX)
