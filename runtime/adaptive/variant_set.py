"""`sparsetrt variants`: a family of deployable variants of one base model, and what each costs on this backend.

The variants come from the existing pipeline: the 2:4 runs of the given configs (fp32, INT8, INT4 ONNX under the
artifacts directory), the dense baseline exported and quantized with the same settings (artifacts/dense, as
`make bench` does), and optionally the hardware-mode schedules of `make bench-schedule` (checkpoints exported
to ONNX here). Each is then timed on the current backend: prefill at a few prompt lengths (fitted as
intercept + per-token slope) and decode steps, so a controller can predict what any request costs on each
variant. The manifest (variants.json) lists pattern, precision, size on disk and that measured cost model.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsetrt.artifacts import read_json, write_json
from sparsetrt.calibration.data import load_corpus, sampled_windows
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import ExportSettings
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.layout import FLOAT_PRECISIONS, STRUCTURE_MANIFEST, VARIANT_MANIFEST, ArtifactsTree
from sparsetrt.models import load_tokenizer
from sparsetrt.runtime.adaptive.features import token_stats
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.backends.base import position_ids_for
from sparsetrt.runtime.deployables import discover_deployables, files_bytes
from sparsetrt.runtime.measure import device_info
from sparsetrt.runtime.prepare import prepare_dense, prepare_like_runs

COST_PROMPT_LENGTHS = (32, 128, 256)
REFERENCE_REQUEST = (128, 32)
QUALITY_WINDOWS = 4  # prompt tokens, new tokens: the request `relative_cost` in the manifest describes


@dataclass(frozen=True)
class CostModel:
    """Milliseconds a request costs on one variant: prefill = intercept + slope * prompt tokens; then one decode
    step per new token after the first."""

    prefill_intercept_ms: float
    prefill_per_token_ms: float
    decode_ms: float

    def prefill(self, prompt_tokens: int) -> float:
        return max(self.prefill_intercept_ms + self.prefill_per_token_ms * prompt_tokens, 0.0)

    def request(self, prompt_tokens: int, new_tokens: int) -> float:
        return self.prefill(prompt_tokens) + self.decode_ms * max(new_tokens - 1, 0)

    @classmethod
    def from_manifest(cls, entry: dict) -> "CostModel":
        cost = entry["cost"]
        return cls(cost["prefill_intercept_ms"], cost["prefill_per_token_ms"], cost["decode_ms"])


def decision_costs(cost_models: list[CostModel], dense: int, probe: int, prompt_tokens: int,
                   new_tokens: int) -> np.ndarray:
    """What each variant would still cost for a request once the probe has run, relative to dense's whole request:
    the probe's own variant continues from the probe's prefill (decode only), every other prefills the prompt
    itself. The probe is spent either way, so it does not enter the choice."""
    costs = np.array([m.request(prompt_tokens, new_tokens) for m in cost_models])
    costs[probe] -= cost_models[probe].prefill(prompt_tokens)
    return costs / cost_models[dense].request(prompt_tokens, new_tokens)


def measure_request(runner, prompt_ids, continuation_ids, keep_prompt_logits: bool = False) -> dict:
    """One request, teacher-forced: prefill the prompt, then feed the true continuation one token per decode step
    (what generating it costs), timing each part. Returns prefill_ms, step_ms, the logits that predicted each
    continuation token [n, vocab] (from the prefill's last position, then every step), and the prompt's logits
    when asked (the probe's features come from them)."""
    prompt = np.asarray(prompt_ids, dtype=np.int64)[None]
    mask = np.ones_like(prompt)
    start = time.perf_counter()
    prompt_logits, cache = runner.prefill(prompt, mask)
    runner.synchronize()
    prefill_ms = (time.perf_counter() - start) * 1000
    predicted = [prompt_logits[0, -1]]
    step_ms = []
    for token in list(continuation_ids)[:-1]:
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        start = time.perf_counter()
        logits, cache = runner.step(np.array([[token]], dtype=np.int64), mask, position_ids_for(mask, 1),
                                    cache)
        runner.synchronize()
        step_ms.append((time.perf_counter() - start) * 1000)
        predicted.append(logits[0])
    return {"prefill_ms": prefill_ms, "step_ms": step_ms, "logits": np.stack(predicted),
            "prompt_logits": prompt_logits[0] if keep_prompt_logits else None}


def measure_cost(runner, vocab: int, lengths=COST_PROMPT_LENGTHS, decode_steps: int = 16, repeats: int = 3,
                 seed: int = 0) -> dict:
    """The cost model of one loaded variant: median prefill ms at each prompt length (random token ids; cost does
    not depend on the text), a least-squares line through them, and the median decode step."""
    rng = np.random.default_rng(seed)
    measure_request(runner, rng.integers(0, vocab, 16), rng.integers(0, vocab, 2))  # warm-up (ORT optimises)
    prefill = {}
    steps = []
    for length in lengths:
        runs = [measure_request(runner, rng.integers(0, vocab, length), rng.integers(0, vocab, decode_steps + 1))
                for _ in range(repeats)]
        prefill[length] = statistics.median(r["prefill_ms"] for r in runs)
        steps.extend(s for r in runs for s in r["step_ms"])
    slope, intercept = np.polyfit(np.array(lengths, dtype=float), np.array([prefill[n] for n in lengths]), 1)
    model = CostModel(float(intercept), float(slope), statistics.median(steps))
    return {"prefill_ms": {str(n): v for n, v in prefill.items()}, "prefill_intercept_ms": model.prefill_intercept_ms,
            "prefill_per_token_ms": model.prefill_per_token_ms, "decode_ms": model.decode_ms,
            "reference_request_ms": model.request(*REFERENCE_REQUEST)}


PROBE_COST_TIE = 0.10  # variants within 10 % of the cheapest cost are a tie (timing noise on a shared CPU is ~5 %)


def quality_nll(runner, windows: np.ndarray) -> float:
    """Mean next-token NLL of `windows` [n, seq] (calibration text): a quick quality reading for the manifest."""
    nll = [token_stats(runner.logits(w[None])[0, :-1], w[1:])["nll"].mean() for w in windows]
    return float(np.mean(nll))


def choose_probe(entries: list[dict]) -> dict:
    """The probe: the cheapest variant, ties within PROBE_COST_TIE going to the better one (lower NLL). The probe's
    variant is the one that serves without a prefill of its own, so among equally cheap variants (2:4 and dense
    at the same precision on a CPU) it should be the one a controller would rather pick."""
    cheapest = min(e["cost"]["reference_request_ms"] for e in entries)
    tied = [e for e in entries if e["cost"]["reference_request_ms"] <= cheapest * (1 + PROBE_COST_TIE)]
    return min(tied, key=lambda e: (e["quality_nll"], e["cost"]["reference_request_ms"]))


def collect_variants(artifacts: Path, backend: str = "onnxruntime", schedules: Path | None = None,
                     progress: bool = True) -> list[dict]:
    """name/pattern/precision/path of every variant `artifacts` holds for `backend` (the layout `sparsetrt run` and
    `sparsetrt bench perf --dense` write), plus the hardware-mode schedules under `schedules` exported to ONNX."""
    found = [d for d in discover_deployables(artifacts) if d.backend == backend]
    entries = [{"name": f"{d.pattern}-{d.precision}", "pattern": d.pattern, "precision": d.precision,
                "backend": d.backend, "path": d.path} for d in found]
    if schedules is not None and backend == "onnxruntime":
        for checkpoint in sorted(Path(schedules).glob("*hardware*")):
            if not (checkpoint / "sparsity.json").is_file():
                continue
            onnx_dir = checkpoint / "onnx"
            exported = export_checkpoint(checkpoint, onnx_dir, ExportSettings(precisions=["fp32"]), reuse=True)
            entries.append({"name": f"{checkpoint.name}-fp32", "pattern": checkpoint.name, "precision": "fp32",
                            "backend": backend, "path": str(onnx_dir / exported["files"]["fp32"]["onnx"])})
    return entries


STRUCTURED_PRECISIONS = ("fp32", "int8")  # INT4 weight-only costs more than INT8 on ONNX Runtime's CPU kernels
                                          # (0.93 vs 0.70 of dense fp32 in benchmarks/adaptive.md): one more arm
                                          # that no policy picks


def structured_checkpoint(work: Path, name: str) -> Path:
    """The checkpoint `make bench-structured` wrote for variant `name` under `work`: NAME/shrunk (one-shot) or, for
    NAME+distill, NAME/distilled."""
    base, distilled = (name[:-len("+distill")], True) if name.endswith("+distill") else (name, False)
    checkpoint = Path(work) / base / ("distilled" if distilled else "shrunk")
    if not (checkpoint / STRUCTURE_MANIFEST).is_file():  # a distilled student keeps its structure.json
        raise SparsetrtError(f"no structured variant '{name}' under {work} (looked for {checkpoint}): run `make "
                             "bench-structured` first, or name one it wrote (NAME for one-shot, NAME+distill)")
    return checkpoint


def check_structured(work: Path | None, names) -> None:
    """Refuse a structured variant `make bench-structured` has not written, before any work."""
    for name in names:
        structured_checkpoint(work, name)


def structured_variants(work: Path, names, runs: Path, backend: str = "onnxruntime",
                        precisions=STRUCTURED_PRECISIONS, progress: bool = True) -> list[dict]:
    """Variant entries for shrunk (and distilled) checkpoints of `make bench-structured`: each exported and quantized
    with the settings of the 2:4 runs under `runs` into work/NAME/ (where the benchmark's fp32 export already is),
    one entry per precision. Only ONNX Runtime: the TensorRT backend needs engines, which this does not build."""
    if names and backend != "onnxruntime":
        raise SparsetrtError(f"structured variants are exported for onnxruntime; the {backend} backend needs "
                             "engines of them (sparsetrt build), which `sparsetrt variants` does not build")
    checkpoints = {name: structured_checkpoint(work, name) for name in names}  # every name checked before work
    entries = []
    for name, checkpoint in checkpoints.items():
        if progress:
            print(f"==> structured variant {name}: export + quantize ({', '.join(precisions)}) like the 2:4 runs",
                  flush=True)
        files = ArtifactsTree(Path(work) / name)
        quantized = [p for p in precisions if p not in FLOAT_PRECISIONS]
        floats = [p for p in precisions if p in FLOAT_PRECISIONS] or ["fp32"]
        made = prepare_like_runs(checkpoint, files, ArtifactsTree(runs), floats=floats, precisions=quantized,
                                 progress=progress)
        for precision in (p for p in precisions if p in made):
            entries.append({"name": f"{name}-{precision}", "pattern": name, "precision": precision,
                            "backend": backend, "path": str(files.onnx(precision)), "structured": True,
                            "checkpoint": str(checkpoint)})
    return entries


def build_variant_set(artifacts: Path, out: Path, backend: str = "onnxruntime", dense: bool = True,
                      schedules: Path | None = None, structured: Path | None = None, structured_names=(),
                      progress: bool = True) -> dict:
    """The variants the pipeline already built under `artifacts` (its 2:4 runs), the dense baseline (exported and
    quantized here when `dense`) and the named structured variants under `structured`: each timed, written to
    out/variants.json. Returns the manifest. (sparsetrt.pipeline.variants runs the pipeline first.)"""
    artifacts, out = Path(artifacts), Path(out)
    check_structured(structured, structured_names)
    if dense:
        if progress:
            print("==> dense baseline (export + quantize with the 2:4 runs' settings)", flush=True)
        prepare_dense(artifacts, progress=progress)
    entries = collect_variants(artifacts, backend, schedules, progress)
    if structured_names:
        entries += structured_variants(structured, structured_names, artifacts, backend, progress=progress)
    names = [e["name"] for e in entries]
    if "dense-fp32" not in names:
        raise SparsetrtError(f"no dense fp32 variant under {artifacts}/dense: pass --dense (the controllers need the "
                             "dense variant as their quality reference)")
    if len(entries) < 2:
        raise SparsetrtError(f"only {names} under {artifacts}: an adaptive controller needs two variants or more")

    tokenizer = load_tokenizer(ArtifactsTree(artifacts).pruned)
    corpus = load_corpus("auto", "valid")  # never the evaluation split
    windows = sampled_windows(tokenizer, corpus, QUALITY_WINDOWS, 128, seed=0).numpy()
    for index, entry in enumerate(entries, 1):
        if progress:
            print(f"[{index}/{len(entries)}] timing {entry['name']} on {backend} ...", flush=True)
        runner = make_runner(backend, entry["path"], device="cpu" if backend == "onnxruntime" else "auto")
        entry["cost"] = measure_cost(runner, len(tokenizer))
        entry["quality_nll"] = quality_nll(runner, windows)
        entry["file_bytes"] = files_bytes(Path(entry["path"]))
        del runner
        if progress:
            c = entry["cost"]
            print(f"    prefill {c['prefill_intercept_ms']:.1f} ms + {c['prefill_per_token_ms']:.2f} ms/token, "
                  f"decode {c['decode_ms']:.1f} ms/token", flush=True)
    dense_ms = next(e for e in entries if e["name"] == "dense-fp32")["cost"]["reference_request_ms"]
    for entry in entries:
        entry["relative_cost"] = entry["cost"]["reference_request_ms"] / dense_ms
    probe = choose_probe(entries)
    manifest = {"stage": "variants", "backend": backend, "artifacts": str(artifacts), "dense": "dense-fp32",
                "probe": probe["name"], "tokenizer": str(ArtifactsTree(artifacts).pruned),
                "quality": f"mean next-token NLL of {QUALITY_WINDOWS} windows of 128 tokens, {corpus.description}",
                "reference_request": {"prompt_tokens": REFERENCE_REQUEST[0], "new_tokens": REFERENCE_REQUEST[1]},
                "machine": device_info("cpu" if backend == "onnxruntime" else "cuda"),
                "variants": entries}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / VARIANT_MANIFEST, manifest)
    return manifest


def read_variant_set(path: Path) -> dict:
    """The manifest at `path` (a variants.json or the folder holding it), checked for what controllers need."""
    path = Path(path)
    if path.is_dir():
        path = path / VARIANT_MANIFEST
    if not path.is_file():
        raise SparsetrtError(f"{path} does not exist: build the variant set first (`sparsetrt variants`, or "
                             "`make bench-adaptive`)")
    manifest = read_json(path)
    names = [v.get("name") for v in manifest.get("variants", [])]
    if manifest.get("dense") not in names or manifest.get("probe") not in names:
        raise SparsetrtError(f"{path} names dense '{manifest.get('dense')}' and probe '{manifest.get('probe')}', "
                             f"which are not among its variants {names}; rebuild it with `sparsetrt variants`")
    for entry in manifest["variants"]:
        if not Path(entry["path"]).exists():
            raise SparsetrtError(f"variant '{entry['name']}' points at {entry['path']}, which does not exist; "
                                 "rebuild the variant set")
    return manifest


def summary_lines(manifest: dict, out: Path) -> list[str]:
    """What `sparsetrt variants` prints: each variant's size, cost and quality, then the probe."""
    lines = [f"{'variant':<22} {'MB':>7} {'prefill ms@128':>15} {'decode ms':>10} {'x dense':>8} {'NLL':>6}"]
    for v in manifest["variants"]:
        lines.append(f"{v['name']:<22} {v['file_bytes'] / 1e6:>7.0f} {v['cost']['prefill_ms']['128']:>15.1f} "
                     f"{v['cost']['decode_ms']:>10.1f} {v['relative_cost']:>8.3f} {v['quality_nll']:>6.3f}")
    lines.append(f"probe (cheapest; ties within 10 % to the lower NLL): {manifest['probe']}; wrote "
                 f"{Path(out) / VARIANT_MANIFEST}")
    return lines
