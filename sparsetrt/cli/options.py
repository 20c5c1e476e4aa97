"""Option groups several commands share, declared once."""

from __future__ import annotations

import argparse


def output(p: argparse.ArgumentParser, required: bool = True, default: str | None = None,
           help: str = "output directory (written atomically)") -> None:
    """--out and --overwrite: a stage's output directory, refused when it holds a different run."""
    p.add_argument("--out", required=required, default=default, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace an output directory that holds a different run")


def calibration(p: argparse.ArgumentParser, what: str = "text file, directory of .txt, JSONL (text field), or 'auto'"
                ) -> None:
    """The calibration text and its windows (pruning and quantization calibrate the same way)."""
    p.add_argument("--calib", default="auto", help=f"calibration {what} (auto: WikiText-2 valid / Python docs)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    seed(p)


def seed(p: argparse.ArgumentParser, help: str = "random seed") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def placement(p: argparse.ArgumentParser, what: str = "") -> None:
    """--stream and --device: where a layer-by-layer stage keeps the model (the result is the same either way);
    `what`: the stage's own limits of --stream, said in its help."""
    p.add_argument("--stream", action="store_true",
                   help="read one decoder block at a time from the checkpoint's safetensors and write it out when "
                        "done: memory bounded by one block, not the model (same result)" + (f"; {what}" if what else ""))
    p.add_argument("--device", default="cpu",
                   help="where the block being processed and its statistics live: cpu, cuda, cuda:N or auto")


def progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-step lines")


def trust_remote_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the checkpoint")


def eval_corpus(p: argparse.ArgumentParser, windows: int = 4) -> None:
    """The evaluation text parity runs on (never the calibration split), in windows of --seq-len tokens."""
    p.add_argument("--corpus", default="auto", help="evaluation text, or 'auto' (WikiText-2 test / Python docs)")
    p.add_argument("--windows", type=int, default=windows, help="evaluation windows")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")


def comma_list(value: str, kind=str) -> list:
    """'a,b,c' -> [kind(a), kind(b), kind(c)] (empty items dropped)."""
    return [kind(v.strip()) for v in value.split(",") if v.strip()]
