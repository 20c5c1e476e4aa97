"""Text in, fixed-length token windows out.

Sources: a text file, a directory of `.txt` files (sorted, joined by blank lines), or JSONL with a `text`
field. `auto` picks WikiText-2 from the workplace's shared data folder when it is there and otherwise the
Python documentation topics every CPython ships (`pydoc_data.topics`), and says which it used.

The windows follow the protocol every published SparseGPT/Wanda number uses: tokenize the whole corpus
once, then take `count` windows at `random.randint` offsets after `random.seed(seed)` (calibration), or
the first N non-overlapping windows (evaluation). Where the tokenizer puts a BOS before every text (Gemma,
Llama 2), each window starts with it and holds one token less of the stream: a window cut from the middle of the
text then starts the way every training text did (Gemma's attention sink sits on the BOS). SmolLM2's and Qwen's
tokenizers put none, so their windows are the protocol's exactly.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import torch

from sparsetrt.errors import SparsetrtError

WIKITEXT_DIRNAME = "wikitext-2"


@dataclass(frozen=True)
class CorpusText:
    text: str
    description: str  # what the user sees: which corpus and split were used


def read_corpus(path: str | os.PathLike) -> CorpusText:
    """Read a text file, a directory of .txt files or a JSONL file with a `text` field."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SparsetrtError(f"calibration text {path} does not exist; pass a .txt file, a directory of .txt files "
                             "or a .jsonl file")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise SparsetrtError(f"directory {path} holds no .txt files; add text files or pass a file")
        text = "\n\n".join(_read_text(f) for f in files)
        description = f"{len(files)} .txt files under {path}"
    elif path.suffix in (".jsonl", ".ndjson"):
        text = _read_jsonl(path)
        description = f"JSONL {path}"
    else:
        text = _read_text(path)
        description = f"text file {path}"
    if not text.strip():
        raise SparsetrtError(f"calibration text {path} is empty; pass a file with text in it")
    return CorpusText(text, description)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SparsetrtError(f"{path} is not UTF-8 text; convert it or pass another file") from None


def _read_jsonl(path: Path) -> str:
    texts = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SparsetrtError(f"{path}:{lineno} is not valid JSON; each line must be an object with a 'text' field") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SparsetrtError(f"{path}:{lineno} has no string 'text' field; each line must be an object with a 'text' field")
        texts.append(record["text"])
    return "\n\n".join(texts)


def find_shared_wikitext() -> Path | None:
    """The workplace's WikiText-2 folder: $SPARSETRT_DATA/wikitext-2, else ../shared/data/wikitext-2 beside the repo."""
    candidates = []
    if os.environ.get("SPARSETRT_DATA"):
        candidates.append(Path(os.environ["SPARSETRT_DATA"]) / WIKITEXT_DIRNAME)
    repo_root = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), repo_root):
        candidates.append(base.parent / "shared" / "data" / WIKITEXT_DIRNAME)
    for candidate in candidates:
        if (candidate / "valid.txt").is_file() and (candidate / "test.txt").is_file():
            return candidate
    return None


def default_corpus(split: str) -> CorpusText:
    """`split` is 'valid' (calibration) or 'test' (evaluation)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    folder = find_shared_wikitext()
    if folder is not None:
        path = folder / f"{split}.txt"
        return CorpusText(_read_text(path), f"WikiText-2 {split} ({path})")
    # Outside the workplace: text every CPython ships. Calibrate on one half, evaluate on the other, so the
    # two never overlap.

    keys = sorted(topics)
    half = keys[: len(keys) // 2] if split == "valid" else keys[len(keys) // 2:]
    text = "\n\n".join(topics[k] for k in half)
    which = "first" if split == "valid" else "second"
    return CorpusText(text, f"Python docs topics, {which} half (pydoc_data.topics; WikiText-2 not found)")


def load_corpus(spec: str, split: str) -> CorpusText:
    """`auto` -> default corpus for the split; anything else is a path."""
    return default_corpus(split) if spec == "auto" else read_corpus(spec)


def tokenize_corpus(tokenizer, corpus: CorpusText):
    """The whole corpus as one 1-D LongTensor of token ids, without special tokens (window_bos says which one
    starts each window)."""
    # One call over the whole text, as the published protocol does; verbose=False silences the warning that
    # the result is longer than the model's context (we cut it into windows next).
    ids = tokenizer(corpus.text, return_tensors=None, verbose=False, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def window_bos(tokenizer) -> int | None:
    """The token every window starts with: the tokenizer's BOS where it puts one before a text, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", return_tensors=None)["input_ids"]
    return bos if bos is not None and ids and ids[0] == bos else None


def random_windows(ids, count: int, seq_len: int, seed: int, bos: int | None = None):
    """`count` windows of `seq_len` tokens at seeded random offsets: LongTensor [count, seq_len] (each starting
    with `bos` when one is given)."""
    _check_window_args(ids, count, seq_len)
    rng = random.Random(seed)
    body = seq_len - (bos is not None)
    starts = [rng.randint(0, len(ids) - body - 1) for _ in range(count)]
    return with_bos(torch.stack([ids[s: s + body] for s in starts]), bos)


def sequential_windows(ids, seq_len: int, max_windows: int | None = None, bos: int | None = None):
    """The first non-overlapping windows of `seq_len` tokens: LongTensor [n, seq_len] (each starting with `bos`
    when one is given)."""
    _check_window_args(ids, 1, seq_len)
    body = seq_len - (bos is not None)
    n = len(ids) // body
    if max_windows is not None:
        n = min(n, max_windows)
    return with_bos(ids[: n * body].view(n, body), bos)


def with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    """[n, body] windows with a first column of `bos` (as they are when it is None)."""
    if bos is None:
        return windows
    return torch.cat([torch.full((len(windows), 1), bos, dtype=windows.dtype), windows], dim=1)


def sampled_windows(tokenizer, corpus: CorpusText, count: int, seq_len: int, seed: int):
    """Calibration windows of `corpus` for `tokenizer` (random_windows, starting with its BOS where it adds one)."""
    return random_windows(tokenize_corpus(tokenizer, corpus), count, seq_len, seed, window_bos(tokenizer))


def evaluation_windows(tokenizer, corpus: CorpusText, seq_len: int, max_windows: int | None = None):
    """Evaluation windows of `corpus` for `tokenizer` (sequential_windows, starting with its BOS where it adds
    one)."""
    return sequential_windows(tokenize_corpus(tokenizer, corpus), seq_len, max_windows, window_bos(tokenizer))


def _check_window_args(ids, count: int, seq_len: int) -> None:
    if count < 1 or seq_len < 2:
        raise SparsetrtError(f"need at least 1 window of at least 2 tokens (got {count} x {seq_len})")
    if len(ids) < seq_len + 1:
        raise SparsetrtError(
            f"the text has {len(ids)} tokens, fewer than one window of {seq_len} (+1); "
            "pass more text or a smaller --calib-seq-len"
        )


def calibration_windows(tokenizer, corpus_spec: str, samples: int, seq_len: int, seed: int, split: str = "valid"):
    """(windows [samples, seq_len], corpus, number of corpus tokens) for pruning or quantization."""
    corpus = load_corpus(corpus_spec, split)
    ids = tokenize_corpus(tokenizer, corpus)
    return random_windows(ids, samples, seq_len, seed, window_bos(tokenizer)), corpus, len(ids)


def second_domain(calibration_description: str):
    """Text the calibration and distillation never saw: Python's documentation topics when calibration is
    WikiText-2; when calibration itself fell back to the first half of those topics, the docstrings of the
    standard library's modules (another register of technical English)."""
    if "WikiText" in calibration_description:
        return CorpusText("\n\n".join(topics[k] for k in sorted(topics)), "Python docs topics (pydoc_data.topics)")

    names = ["argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "http.client",
             "json", "logging", "pathlib", "re", "sqlite3", "statistics", "subprocess", "threading", "typing",
             "unittest", "urllib.request", "xml.etree.ElementTree", "zipfile"]
    docs = []
    for name in names:
        module = importlib.import_module(name)
        docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module) if inspect.isclass(obj)
                 or inspect.isfunction(obj)]
    return CorpusText("\n\n".join(d for d in docs if d), "docstrings of 22 standard-library modules")
