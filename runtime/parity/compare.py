"""`sparsetrt parity`: the PyTorch model vs each exported ONNX file (ONNX Runtime), on the same windows.

Tolerances are per precision and can be overridden key by key ("fp16.max_abs_error=0.5"). The fp32
defaults are the acceptance bar of the product (top-1 >= 99.9 %, max |Δlogit| <= 1e-3). The fp16 defaults
were set from measurements on SmolLM2-135M (see README): fp16 rounding through 30 layers moves single
logits by ~0.1, so fp16 is judged on the distribution (KL, top-k, perplexity) and max |Δlogit| is reported.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from sparsetrt.architectures import check_length, max_positions, sliding_window
from sparsetrt.artifacts import prepare_output, read_json, staged_dir, write_json, write_text_atomic
from sparsetrt.calibration.data import load_corpus, sequential_windows, tokenize_corpus, window_bos
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import ENGINE_MANIFEST, EXPORT_MANIFEST, PARITY_MANIFEST, ArtifactsTree
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.backends.trt import runnable_here
from sparsetrt.runtime.generate import PARITY_PROMPTS, Sampling, compare_generations, encode_prompts, generate
from sparsetrt.runtime.parity.metrics import ParityAccumulator
from sparsetrt.runtime.parity.report import html_report, junit_xml
from sparsetrt.runtime.settings import METRICS, ParitySettings, parse_tolerance_overrides

DEFAULT_TOLERANCES: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": {
        "top1_agreement": (">=", 0.999),
        "max_abs_error": ("<=", 1e-3),
        "kl_divergence": ("<=", 1e-6),
        "perplexity_rel_diff": ("<=", 1e-4),
        "generation_identical": (">=", 1.0),  # greedy tokens identical on every parity prompt
        "long_generation_identical": (">=", 1.0),  # and past the sliding window, where the model has one
    },
    "fp16": {  # SmolLM2-135M 2:4 measured top-1 0.997, top-5 0.998, KL 9e-6, ppl diff 1e-5: ~10x margin
        "top1_agreement": (">=", 0.99),
        "top5_agreement": (">=", 0.98),
        "kl_divergence": ("<=", 1e-4),
        "perplexity_rel_diff": ("<=", 1e-3),
    },
}


# A top-1 flip counts only where the reference's top-2 margin exceeds this (the precision's logit tolerance: fp32's
# max |Δlogit| bar); fp16 has no logit bar, so every fp16 position counts.
TIE_MARGINS = {"fp32": DEFAULT_TOLERANCES["fp32"]["max_abs_error"][1]}
LONG_CONTEXT_NEW_TOKENS = 16
# Part of the parity fingerprint: reports made before near-ties and the long-context check are redone.
CHECKS_VERSION = 2


def tolerances_for(precision: str, overrides: dict[str, dict[str, float]]) -> dict[str, tuple[str, float]]:
    known = set(METRICS) | {"generation_identical", "long_generation_identical"}
    rules = dict(DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp16"]))
    for metric, value in overrides.get(precision, {}).items():
        if metric not in known:
            raise SparsetrtError(f"unknown parity metric '{metric}'; use one of {', '.join(sorted(known))}")
        op = rules.get(metric, (">=" if metric in _HIGHER_IS_BETTER else "<=", 0))[0]
        rules[metric] = (op, value)
    return rules


_HIGHER_IS_BETTER = {"top1_agreement", "top5_agreement", "cosine_similarity", "min_cosine_similarity",
                     "generation_identical", "long_generation_identical"}


def evaluate_checks(metrics: dict, rules: dict[str, tuple[str, float]]) -> list[dict]:
    checks = []
    for metric, (op, threshold) in rules.items():
        if metric.startswith(("generation_", "long_generation_")) and metric not in metrics:
            continue  # that generation was not run (generate_tokens = 0, or no sliding window)
        value = metrics[metric]
        passed = value >= threshold if op == ">=" else value <= threshold
        checks.append({"metric": metric, "op": op, "threshold": threshold, "value": value, "passed": bool(passed)})
    return checks


def compare_runners(reference, candidate, windows: np.ndarray, tie_margin: float = 0.0) -> dict:
    """Metrics of `candidate` against `reference` over `windows` [n, seq_len], one window at a time."""
    return compare_against({"reference": reference}, candidate, windows, tie_margin)["reference"]


def compare_against(references: dict, candidate, windows: np.ndarray, tie_margin: float = 0.0) -> dict[str, dict]:
    """Metrics of `candidate` against each of `references` (name -> runner), running the candidate once."""
    accs = {name: ParityAccumulator(tie_margin) for name in references}
    start = time.perf_counter()
    for window in windows:
        ids = np.asarray(window, dtype=np.int64)[None]
        mask = np.ones_like(ids)
        cand = candidate.logits(ids, mask)
        for name, ref in references.items():
            accs[name].update(ref.logits(ids, mask), cand, ids)
    seconds = time.perf_counter() - start
    return {name: {**acc.result(), "seconds": seconds} for name, acc in accs.items()}


def run_settings_of(export_fingerprint: str, settings: ParitySettings, engines) -> dict:
    """What a parity run's fingerprint is taken of: the export it checks, its settings, the engines' bytes."""
    return {"checks": CHECKS_VERSION, "export": export_fingerprint, "corpus": settings.corpus,
            "windows": settings.windows, "seq_len": settings.seq_len,
            "tolerances": parse_tolerance_overrides(settings.tolerances),
            "generate_tokens": settings.generate_tokens, "engines": {str(e): _engine_hash(e) for e in engines}}


def run_parity(checkpoint: str | Path, onnx_dir: str | Path, out: str | Path, settings: ParitySettings | None = None,
               engines=(), *, overwrite: bool = False, reuse: bool = False) -> dict:
    """Compare the checkpoint (PyTorch fp32) with every ONNX file listed in onnx_dir/export.json (ONNX Runtime)
    and with each TensorRT engine in `engines`: logits on `settings`' evaluation windows, then greedy generation
    of `settings.generate_tokens` tokens from PARITY_PROMPTS (0 = skip), token for token."""
    settings = settings or ParitySettings()
    corpus, windows, seq_len = settings.corpus, settings.windows, settings.seq_len
    tolerances, generate_tokens = settings.tolerances, settings.generate_tokens
    overrides = parse_tolerance_overrides(tolerances)
    onnx_dir = Path(onnx_dir)
    export = read_json(onnx_dir / EXPORT_MANIFEST)
    positions = {"max_position_embeddings": export["graph"].get("max_positions")}
    check_length(positions, seq_len, "a parity window", "--seq-len")
    engines = [Path(e) for e in engines]
    run_settings = run_settings_of(export["fingerprint"], settings, engines)
    out = Path(out)
    run_fingerprint, done = prepare_output(out, PARITY_MANIFEST, "parity", run_settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    reference = make_runner("pytorch", Path(checkpoint), device="cpu")
    text = load_corpus(corpus, "test")
    eval_tokens, bos = tokenize_corpus(reference.tokenizer, text), window_bos(reference.tokenizer)
    eval_windows = sequential_windows(eval_tokens, seq_len, windows, bos).numpy()

    generations = parity_prompt_check(reference, generate_tokens)
    long_context = long_context_check(reference, eval_tokens, bos)
    candidates = []
    files = [(f"onnxruntime-{precision}", precision, onnx_dir / info["onnx"])
             for precision, info in export["files"].items()]
    files += [(f"onnxruntime-{precision}-ort-target", precision, onnx_dir / info["onnx"])
              for precision, info in (export.get("ort_target") or {}).items()]
    runners = [(make_runner("onnxruntime", path, device="cpu"), name, precision, path)
               for name, precision, path in files]
    for engine in engines:
        runner = make_runner("tensorrt", engine)
        precision = _engine_precision(runner.manifest)
        runners.append((runner, f"tensorrt-{precision}", precision, engine))
    for runner, name, precision, path in runners:
        metrics = compare_runners(reference, runner, eval_windows, TIE_MARGINS.get(precision, 0.0))
        metrics.update(generations.compare(runner))
        if long_context is not None:
            metrics.update(long_context.compare(runner))
        candidates.append(candidate(name, precision, path, metrics, tolerances_for(precision, overrides),
                                    backend=runner.backend))
    verification = {str(onnx_dir / i["onnx"]): i["sparsity_verification"]
                    for i in export["files"].values() if i.get("sparsity_verification")}
    verification.update({str(onnx_dir / i["onnx"]): i["verification"]
                         for i in (export.get("ort_target") or {}).values()})
    report = {
        "format": "sparsetrt.parity/1",
        "stage": "parity",
        "fingerprint": run_fingerprint,
        "settings": run_settings,
        "reference": {"backend": "pytorch", "dtype": "float32", "checkpoint": str(checkpoint)},
        "eval": {"corpus": text.description, "windows": int(len(eval_windows)), "seq_len": seq_len, "window_bos": bos},
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}"
                   + ("" if engines else ", CPU only"),
        "generation": generations.describe(),
        "long_context": None if long_context is None else long_context.describe(),
        "candidates": candidates,
        "sparsity_verification": verification,
        "passed": all(c["passed"] for c in candidates) and all(v["ok"] for v in verification.values()),
    }
    with staged_dir(out) as tmp:
        write_parity_files(tmp, report)
    return report


class GenerationCheck:
    """Greedy generations of the reference from `prompts`, made once, compared token for token with each
    candidate's. `prefix` names its metrics ("generation_identical" ...)."""

    def __init__(self, reference, prompts: list[list[int]], new_tokens: int, prefix: str = "generation_",
                 about: dict | None = None):
        self.reference, self.prompts, self.new_tokens, self.prefix = reference, prompts, new_tokens, prefix
        self.about = about or {"decoding": "greedy, one left-padded batch"}
        tokenizer = reference.tokenizer
        self.pad = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
        self._reference_tokens = None

    def _generate(self, runner) -> list[list[int]]:
        # ignore_stop: compare all new_tokens even where a model would have stopped
        sampling = Sampling(max_new_tokens=self.new_tokens, ignore_stop=True)
        return generate(runner, self.prompts, sampling, pad_id=self.pad).tokens

    def compare(self, runner) -> dict:
        if not self.new_tokens:
            return {}
        if self._reference_tokens is None:
            self._reference_tokens = self._generate(self.reference)
        result = compare_generations(self._reference_tokens, self._generate(runner))
        return {key.replace("generation_", self.prefix, 1): value for key, value in result.items()}

    def describe(self) -> dict:
        return {"prompts": len(self.prompts), "new_tokens": self.new_tokens, **self.about}


def parity_prompt_check(reference, new_tokens: int) -> GenerationCheck:
    """The ten PARITY_PROMPTS for `new_tokens` tokens (0: no generation check)."""
    prompts = encode_prompts(reference.tokenizer, list(PARITY_PROMPTS)) if new_tokens else []
    return GenerationCheck(reference, prompts, new_tokens)


def long_context_check(reference, eval_tokens, bos: int | None = None) -> GenerationCheck | None:
    """One greedy generation from a prompt longer than the model's sliding window: a decoder whose sliding-window
    layers mishandle the cache passes short prompts and breaks here (Gemma 2 did past 256 tokens). None when no layer has a window
    (or the positions end before one can be passed). The prompt is the start of the evaluation text, repeated if
    short (after the BOS, where the tokenizer puts one)."""
    config = reference.model.config
    window = sliding_window(config)
    limit = max_positions(config) or 1 << 30
    if window is None or window + LONG_CONTEXT_NEW_TOKENS >= limit:
        return None
    length = min(window + LONG_CONTEXT_NEW_TOKENS, limit - LONG_CONTEXT_NEW_TOKENS)
    tokens = np.asarray(eval_tokens).reshape(-1)
    start = [] if bos is None else [bos]
    prompt = start + np.tile(tokens, -(-length // max(len(tokens), 1)))[:length - len(start)].tolist()
    return GenerationCheck(reference, [prompt], LONG_CONTEXT_NEW_TOKENS, prefix="long_generation_",
                           about={"sliding_window": window, "prompt_tokens": length,
                                  "decoding": "greedy, one prompt longer than the window"})


def _engine_hash(engine: Path) -> str:
    manifest = Path(engine).parent / ENGINE_MANIFEST
    if not Path(engine).is_file() or not manifest.is_file():
        raise SparsetrtError(f"{engine} (with engine.json beside it) does not exist; build it with `sparsetrt build`")
    return read_json(manifest)["source_onnx"]["sha256"] + f"/{Path(engine).stat().st_mtime_ns}"


def _engine_precision(manifest: dict) -> str:
    """The tolerance family of an engine: fp32 only when it computes in fp32, else fp16 (loosest float)."""
    return "fp32" if manifest["precision"].startswith("fp32") else "fp16"


def candidate(name: str, precision: str, file, metrics: dict, rules: dict, compared_with: str = "pytorch fp32",
              backend: str = "onnxruntime") -> dict:
    """One row of a parity report: `metrics` judged by `rules` (empty rules = reported, not gated)."""
    checks = evaluate_checks(metrics, rules)
    return {"name": name, "backend": backend, "precision": precision, "file": str(file),
            "compared_with": compared_with, "metrics": metrics, "checks": checks,
            "passed": all(c["passed"] for c in checks)}


def write_parity_files(directory: Path, report: dict, stem: str = "parity") -> None:
    """parity.json (machine-readable), parity.html (people), parity.junit.xml (CI) into `directory`."""
    write_json(directory / f"{stem}.json", report)
    write_text_atomic(directory / f"{stem}.html", html_report(report))
    write_text_atomic(directory / f"{stem}.junit.xml", junit_xml(report))


def engines_to_compare(requested: list[str], onnx_dir: Path) -> tuple[list[Path], str | None]:
    """The engines `--engine` names: 'auto' means every engines/*/model.engine of the artifacts tree `onnx_dir`
    belongs to that this machine can run (TensorRT proper with a GPU; TensorRT-RTX on a GPU it was built for).
    Returns them and what to tell the user about the ones left out."""
    named = [Path(e) for e in requested if e != "auto"]
    if "auto" not in requested:
        return named, None
    tree = ArtifactsTree(Path(onnx_dir).parent)
    found, left_out = [], []
    for engine in tree.engines():
        ok, reason = runnable_here(read_json(engine.parent / ENGINE_MANIFEST))
        (found if ok else left_out).append(engine if ok else f"{engine.parent.name} ({reason})")
    if not found and not left_out:
        return named, (f"no engines under {tree.root / 'engines'} (build one with `make engine`); comparing PyTorch "
                       "with ONNX Runtime only")
    note = f"engines not compared here: {'; '.join(left_out)}" if left_out else None
    return found + named, note


def summary_lines(report: dict, out: Path) -> list[str]:
    """What `sparsetrt parity` prints: a verdict per candidate (with the broken tolerances) and the report."""
    lines = []
    for cand in report["candidates"]:
        failed = [c["metric"] for c in cand["checks"] if not c["passed"]]
        lines.append(f"{cand['name']}: {'PASS' if cand['passed'] else 'FAIL (' + ', '.join(failed) + ')'}")
    lines.append(f"report: {Path(out) / 'parity.html'}")
    return lines


def write_junit(report: dict, path: Path) -> Path:
    """The JUnit report where a CI system collects test results (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, junit_xml(report))
    return path
