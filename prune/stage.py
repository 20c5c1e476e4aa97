"""`sparsetrt prune`: checkpoint in, pruned checkpoint + sparsity.json out (verified before it lands)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from sparsetrt.architectures import check_length
from sparsetrt.artifacts import prepare_output, staged_dir, write_json
from sparsetrt.calibration.data import calibration_windows, window_bos
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.devices import resolve_device
from sparsetrt.layout import SPARSITY_MANIFEST
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint, validate_checkpoint
from sparsetrt.modules import target_linears
from sparsetrt.prune.error_probe import probe_errors
from sparsetrt.prune.schedule import plan_schedule
from sparsetrt.prune.schedule_plot import plot_schedule
from sparsetrt.prune.sequential import LayerHooks, Permuter, check_prunable, prune_model
from sparsetrt.prune.settings import PruneSettings, parse_pattern
from sparsetrt.prune.streaming import StreamedModel
from sparsetrt.prune.verify import verify_checkpoint

MANIFEST_FORMAT = "sparsetrt.sparsity/1"


def prune_checkpoint(model: str, out: str | Path, settings: PruneSettings | None = None,
                     calibration: CalibrationSettings | None = None, *, overwrite: bool = False, reuse: bool = False,
                     trust_remote_code: bool = False, progress: bool = True) -> dict:
    """Prune `model` (directory, embedded name or hub id) and write the result into `out`.

    `settings.schedule` spreads the pattern's sparsity over the modules: "scheduled" (log-level clustering of OBS
    error estimates), "owl", or "hardware" (dense or N:M per Linear under a coverage budget). `settings.stream`
    reads one decoder block at a time from the checkpoint and writes it out when pruned (bounded memory, same
    tensors); `settings.device` is where the block being pruned and its statistics live (cpu, cuda, auto).
    Neither changes the result, so neither enters the run's fingerprint.
    """
    settings = settings or PruneSettings()
    calibration = calibration or CalibrationSettings()
    method, parsed, plan, stream = settings.method, settings.parsed_pattern, settings.schedule, settings.stream
    targets, exclude, batch_size = settings.targets, settings.exclude, settings.batch_size
    sparsegpt = settings.sparsegpt.model_dump()
    calib, calib_samples, calib_seq_len, seed = (calibration.corpus, calibration.samples, calibration.seq_len,
                                                 calibration.seed)
    device = resolve_device(settings.device)
    run_settings = run_settings_of(model, settings, calibration)
    out = Path(out)
    run_fingerprint, done = prepare_output(out, SPARSITY_MANIFEST, "prune", run_settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    timings = {}
    start = time.perf_counter()
    checkpoint = resolve_checkpoint(model, trust_remote_code)
    if method != "magnitude" or plan.mode != "uniform":  # these calibrate: windows must fit the positions
        check_length(validate_checkpoint(checkpoint, trust_remote_code), calib_seq_len, "a calibration window",
                     "--calib-seq-len")
    if stream:
        validate_checkpoint(checkpoint, trust_remote_code)
        streamed = StreamedModel(checkpoint, device, trust_remote_code=trust_remote_code)
        lm, tokenizer = streamed.model, load_tokenizer(checkpoint, trust_remote_code)
    else:
        streamed = None
        lm, tokenizer = load_model(checkpoint, trust_remote_code=trust_remote_code)
    timings["load_s"] = time.perf_counter() - start
    candidates = target_linears(lm, targets, exclude)
    check_prunable(candidates, parsed)

    windows, calibration_record = None, None
    if method != "magnitude" or plan.mode != "uniform":
        start = time.perf_counter()
        windows, corpus, corpus_tokens = calibration_windows(tokenizer, calib, calib_samples, calib_seq_len, seed)
        timings["calibration_data_s"] = time.perf_counter() - start
        calibration_record = {"corpus": corpus.description, "corpus_tokens": corpus_tokens, "samples": calib_samples,
                              "seq_len": calib_seq_len, "seed": seed, "window_bos": window_bos(tokenizer)}

    torch.manual_seed(seed)
    probe = None
    if plan.mode != "uniform":
        start = time.perf_counter()
        probe_at = plan.probe_sparsity or parsed.sparsity
        probe = probe_errors(lm, windows, candidates, probe_at, parsed if parsed.is_nm else parse_pattern("2:4"),
                            damping=sparsegpt["damping"], outlier_m=plan.owl_m,
                            batch_size=batch_size, progress=progress,
                            sensitivity_windows=plan.sensitivity_windows if plan.error == "loss" and plan.mode != "owl" else 0)
        timings["probe_s"] = time.perf_counter() - start
    patterns, schedule_info = plan_schedule(plan, parsed, probe, list(candidates))
    with staged_dir(out) as tmp:
        start = time.perf_counter()
        hooks = streamed.hooks(tmp) if streamed else LayerHooks(device)
        axes = settings.permute_axes
        permuter = Permuter(lm, axes, method, patterns, sparsegpt["damping"], seed) if axes else None
        reports = prune_model(lm, windows, method, patterns, targets, exclude, batch_size, sparsegpt, progress, hooks,
                              permuter)
        timings["prune_s"] = time.perf_counter() - start
        manifest = _manifest(run_fingerprint, run_settings, checkpoint, method, parsed, calibration_record, reports,
                             candidates, patterns, schedule_info, sparsegpt, timings, device, stream)
        if permuter:
            manifest["permutation"] = permuter.summary(axes)
        start = time.perf_counter()
        if streamed:
            streamed.finish(tmp)
        else:
            lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        timings["save_s"] = time.perf_counter() - start
        write_json(tmp / SPARSITY_MANIFEST, manifest)
        verify_checkpoint(tmp, manifest).raise_if_failed()  # a broken pattern never lands
        if probe is not None:
            _plot(tmp / "schedule.png", candidates, probe, reports, schedule_info, method, parsed)
    return manifest


def run_settings_of(model: str | Path, settings: PruneSettings, calibration: CalibrationSettings) -> dict:
    """What a prune run's fingerprint is taken of (where the work runs is left out: it does not change the result)."""
    run_settings = {
        "model": str(model), "method": settings.method, "pattern": str(settings.parsed_pattern),
        "calib": str(calibration.corpus), "calib_samples": calibration.samples, "calib_seq_len": calibration.seq_len,
        "seed": calibration.seed, "targets": list(settings.targets), "exclude": list(settings.exclude),
        "sparsegpt": settings.sparsegpt.model_dump(),
    }
    if settings.schedule.mode != "uniform":  # uniform runs keep the fingerprint they always had
        run_settings["schedule"] = settings.schedule.to_json()
    if settings.permute != "off":  # so do runs without permutations
        run_settings["permute"] = settings.permute
    return run_settings


def _manifest(run_fingerprint, settings, checkpoint, method, parsed, calibration, reports, candidates, patterns,
              schedule_info, sparsegpt, timings, device, stream) -> dict:
    pruned_params = sum(r.shape[0] * r.shape[1] for r in reports)
    zeros = sum(r.zero_fraction * r.shape[0] * r.shape[1] for r in reports)
    candidate_params = sum(m.weight.numel() for m in candidates.values())
    schedule_info["measured_sparsity"] = round(zeros / candidate_params, 6)  # over every candidate, dense ones too
    schedule_info["dense_modules"] = [n for n in candidates if n not in patterns]
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": "prune",
        "fingerprint": run_fingerprint,
        "settings": settings,
        "source_checkpoint": str(checkpoint),
        "method": method,
        "pattern": str(parsed),
        "pattern_axis": "input features (the matmul reduction axis)",
        "calibration": calibration,
        "summary": {
            "modules": len(reports),
            "pruned_parameters": pruned_params,
            "zero_fraction": round(zeros / pruned_params, 6),
            "mean_relative_error": sum(r.relative_error for r in reports) / len(reports),
            "dampening_raised": [r.name for r in reports if r.damping is not None
                                 and r.damping > sparsegpt["damping"]],
        },
        "schedule": schedule_info,
        "timings": timings,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "execution": {"device": device, "streamed": stream},
        "modules": {r.name: r.to_json() for r in reports},
    }
    return manifest


def _plot(path: Path, candidates: dict, probe, reports, info: dict, method: str, pattern) -> None:
    """Sparsity per module (measured zero fraction; 0 for the ones kept dense) and its error estimate."""
    zero = {r.name: r.zero_fraction for r in reports}
    title = (f"{method} {info['mode']} schedule: target {pattern}, measured average {info['measured_sparsity']:.3f}"
             + (f", range {info['range'][0]:.2f}-{info['range'][1]:.2f}" if "range" in info else ""))
    plot_schedule(path, list(candidates), {n: p.layer for n, p in probe.modules.items()},
                  {n: zero.get(n, 0.0) for n in candidates}, info.get("errors", {}), title)


def summary_line(manifest: dict, out: Path) -> str:
    """What `sparsetrt prune` prints when it is done."""
    s, plan = manifest["summary"], manifest["schedule"]
    return (f"pruned {s['modules']} modules ({manifest['method']} {manifest['pattern']}, {plan['mode']}), zero "
            f"fraction {s['zero_fraction']:.4f} of the pruned modules, {plan['measured_sparsity']:.4f} over every "
            f"target, {manifest['timings']['prune_s']:.1f} s -> {out}")
