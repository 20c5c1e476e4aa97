"""`make bench-schedule`: perplexity of layer-wise sparsity schedules, before and after distillation, on WikiText-2
and on a second text domain neither calibration nor distillation saw.

Variants: dense; unstructured targets (0.6 / 0.7 / 0.8) with uniform, scheduled (log-level clusters of OBS error
estimates) and OWL allocations; 2:4 on every decoder Linear (uniform) and hardware mode (dense or 2:4 per Linear)
at 90 % and 75 % coverage. Each is made by `sparsetrt prune` into <work>/<variant>/ and the chosen ones are
distilled by `sparsetrt distill` into <work>/<variant>-distilled/; both stages reuse a finished identical run, so
an interrupted benchmark picks up where it stopped. Protocol: the foundation's (calibration = 32 random 512-token
windows of WikiText-2 valid, seed 0; evaluation = the first 40 non-overlapping 512-token windows of the test split).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from sparsetrt.artifacts import fingerprint, pyplot, read_json, save_figure, write_json, write_text_atomic
from sparsetrt.calibration.data import default_corpus, evaluation_windows, second_domain
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import DISTILL_MANIFEST
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint
from sparsetrt.prune.distill_stage import distill_checkpoint
from sparsetrt.prune.settings import DistillSettings, PruneSettings, ScheduleSettings
from sparsetrt.prune.stage import prune_checkpoint
from sparsetrt.runtime.bench.quality import perplexity
from sparsetrt.runtime.bench.settings import ScheduleBenchSettings


def schedule_cases(settings: ScheduleBenchSettings) -> list[dict]:
    """[{name, pattern, schedule}] in report order."""
    out = []
    for target in settings.targets:
        for mode in ("uniform", "scheduled", "owl"):
            out.append({"name": f"unstructured-{target:g}-{mode}", "pattern": f"unstructured:{target:g}",
                        "schedule": {"mode": mode}})
    out.append({"name": "2:4-uniform", "pattern": "2:4", "schedule": {"mode": "uniform"}})
    for coverage in settings.coverages:
        out.append({"name": f"2:4-hardware-{coverage:g}", "pattern": "2:4",
                    "schedule": {"mode": "hardware", "coverage": coverage}})
    return out


def schedule_benchmark(model: str, out: str | Path, work: str | Path, settings: ScheduleBenchSettings | None = None,
                       progress: bool = True) -> dict:
    settings = settings or ScheduleBenchSettings()
    plan = schedule_cases(settings)
    names = [v["name"] for v in plan]
    to_distill = names if settings.distill == ["all"] else [] if settings.distill == ["none"] else settings.distill
    unknown = sorted(set(to_distill) - set(names))
    if unknown:
        raise SparsetrtError(f"--distill names unknown variants {unknown}; choose from {', '.join(names)}, all or none")
    checkpoint = resolve_checkpoint(model)
    tokenizer = load_tokenizer(checkpoint)
    calib_text, eval_text = default_corpus("valid"), default_corpus("test")
    other = second_domain(calib_text.description)
    evaluation = {
        "wikitext": evaluation_windows(tokenizer, eval_text, settings.seq_len, settings.eval_windows),
        "second_domain": evaluation_windows(tokenizer, other, settings.seq_len, settings.eval_windows),
    }
    work, out = Path(work), Path(out)

    protocol = fingerprint({"model": str(checkpoint), "seq_len": settings.seq_len, "windows": settings.eval_windows,
                            "corpora": [eval_text.description, other.description]})

    def evaluate(directory: Path) -> dict:
        """Perplexities on both domains, cached in the model directory under the evaluation protocol's
        fingerprint (a rerun of the benchmark re-evaluates nothing it already measured)."""
        cache = directory / "perplexity.json"
        known = read_json(cache) if cache.is_file() else {}
        if protocol not in known:
            lm, _ = load_model(directory)
            known[protocol] = {domain: perplexity(lm, windows, progress) for domain, windows in evaluation.items()}
            if directory != checkpoint:  # never write into the user's checkpoint
                write_json(cache, known)
        return known[protocol]

    def log(name: str, row: dict) -> None:
        print(f"{name:>28}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)), flush=True)

    rows = [{"variant": "dense", "pattern": "dense", "mode": "dense", "measured_sparsity": 0.0,
             **_prefixed(evaluate(checkpoint), "")}]
    log("dense", rows[0])
    for v in plan:
        manifest = prune_case(checkpoint, work, v, settings, progress)
        row = {"variant": v["name"], "pattern": v["pattern"], "mode": v["schedule"]["mode"],
               "measured_sparsity": manifest["schedule"]["measured_sparsity"],
               "coverage": manifest["schedule"].get("coverage"), "range": manifest["schedule"].get("range"),
               "prune_s": round(manifest["timings"].get("probe_s", 0.0) + manifest["timings"]["prune_s"], 1),
               **_prefixed(evaluate(work / v["name"]), "")}
        finished = _finished_distillation(work / f"{v['name']}-distilled")
        if v["name"] in to_distill or finished:  # one distilled earlier (another budget) is reported too
            d = distill_case(checkpoint, work, v["name"], settings, progress) if v["name"] in to_distill else finished
            row.update(_prefixed(evaluate(work / f"{v['name']}-distilled"), "distilled_"),
                       distill_steps=d["steps"], distill_s=d["train_seconds"], distill_tokens=d["tokens_seen"],
                       distill_stopped_early=d["stopped_early"])
        rows.append(row)
        log(v["name"], row)
        _write(out, model, checkpoint, settings, calib_text, eval_text, other, rows)  # a partial report survives
    return _write(out, model, checkpoint, settings, calib_text, eval_text, other, rows)


def prune_case(checkpoint: Path, work: Path, case: dict, settings: ScheduleBenchSettings, progress: bool) -> dict:
    """`sparsetrt prune` of one schedule case into work/<name> (a finished identical run is reused)."""
    prune = PruneSettings(method="sparsegpt", pattern=case["pattern"], schedule=ScheduleSettings(**case["schedule"]))
    calibration = CalibrationSettings(samples=settings.calib_samples, seq_len=settings.seq_len, seed=settings.seed)
    return prune_checkpoint(str(checkpoint), work / case["name"], prune, calibration, reuse=True, overwrite=True,
                            progress=progress)


def distill_case(checkpoint: Path, work: Path, name: str, settings: ScheduleBenchSettings, progress: bool) -> dict:
    """`sparsetrt distill` of work/<name> into work/<name>-distilled (reused, or resumed, when there)."""
    return distill_checkpoint(str(checkpoint), work / name, work / f"{name}-distilled", data="auto",
                              settings=DistillSettings(max_minutes=settings.distill_minutes,
                                                       steps=settings.distill_steps, seed=settings.seed),
                              reuse=True, overwrite=True, progress=progress)


def _finished_distillation(directory: Path) -> dict | None:
    path = directory / DISTILL_MANIFEST
    return read_json(path) if path.is_file() else None


def _prefixed(ppl: dict, prefix: str) -> dict:
    return {f"{prefix}ppl_{domain}": value for domain, value in ppl.items()}


def _write(out: Path, model, checkpoint, settings, calib_text, eval_text, other, rows) -> dict:
    report = {
        "format": "sparsetrt.schedule-bench/1", "model": str(checkpoint),
        "protocol": {"calibration": f"{settings.calib_samples} random {settings.seq_len}-token windows of "
                                    f"{calib_text.description}, seed {settings.seed}",
                     "evaluation": f"first {settings.eval_windows} non-overlapping {settings.seq_len}-token windows "
                                   f"of {eval_text.description}",
                     "second_domain": f"first {settings.eval_windows} windows of {other.description}",
                     "distillation": f"{settings.distill_minutes:g} min per variant on the calibration split"},
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "settings": settings.model_dump(),
        "results": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "schedule.json", report)
    write_text_atomic(out / "schedule.md", markdown(report))
    plot(out / "schedule.png", rows)
    return report


def _fmt(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    rows = report["results"]
    dense = rows[0]
    lines = ["# Layer-wise sparsity schedules and distillation: perplexity", "",
             f"- Model: `{report['model']}`"] + [f"- {k.replace('_', ' ').capitalize()}: {v}"
                                                 for k, v in report["protocol"].items()] + [
             f"- Machine: {report['machine']['processor']}, {report['machine']['cpu_threads']} threads, "
             f"torch {report['machine']['torch']}", "",
             "| variant | measured sparsity | WikiText ppl | × dense | 2nd domain ppl | × dense | distilled WikiText "
             "| × dense | distilled 2nd domain | × dense | distill steps (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wt, sd = r.get("ppl_wikitext"), r.get("ppl_second_domain")
        dwt, dsd = r.get("distilled_ppl_wikitext"), r.get("distilled_ppl_second_domain")
        ratio = lambda v, d: None if v is None else v / d  # noqa: E731
        steps = f"{r['distill_steps']} ({r['distill_s'] / 60:.0f})" if r.get("distill_steps") else "—"
        lines.append(f"| {r['variant']} | {_fmt(r['measured_sparsity'], '.4f')} | {_fmt(wt)} | "
                     f"{_fmt(ratio(wt, dense['ppl_wikitext']))} | {_fmt(sd)} | "
                     f"{_fmt(ratio(sd, dense['ppl_second_domain']))} | {_fmt(dwt)} | "
                     f"{_fmt(ratio(dwt, dense['ppl_wikitext']))} | {_fmt(dsd)} | "
                     f"{_fmt(ratio(dsd, dense['ppl_second_domain']))} | {steps} |")
    lines += ["", "Scheduled vs uniform at the same target (perplexity ratio, WikiText; < 1 is better):", ""]
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        if r["mode"] in ("scheduled", "owl"):
            uniform = by_name.get(r["variant"].rsplit("-", 1)[0] + "-uniform")
            if uniform:
                lines.append(f"- {r['variant']}: {r['ppl_wikitext'] / uniform['ppl_wikitext']:.3f}x uniform")
    lines += ["", "Second domain vs WikiText (ratio to dense on the second domain / ratio to dense on WikiText; "
              "the acceptance bar is <= 1.25 for the distilled 2:4 model):", ""]
    for r in rows[1:]:
        for prefix in ("", "distilled_"):
            if r.get(f"{prefix}ppl_wikitext"):
                a = r[f"{prefix}ppl_second_domain"] / dense["ppl_second_domain"]
                b = r[f"{prefix}ppl_wikitext"] / dense["ppl_wikitext"]
                lines.append(f"- {r['variant']}{' distilled' if prefix else ''}: {a / b:.3f}")
    lines += ["", "Written by `make bench-schedule` (`sparsetrt bench-schedule`); each pruned/distilled model and its "
              "schedule.png / loss.png stay in the work directory.", ""]
    return "\n".join(lines)


def plot(path: Path, rows: list[dict]) -> Path | None:
    """Perplexity ratio to dense per variant: one-shot vs distilled, WikiText vs the second domain (log scale)."""
    plt = pyplot()
    if plt is None:
        return None
    dense = rows[0]
    rows = rows[1:]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.2
    series = [("ppl_wikitext", "one-shot, WikiText"), ("ppl_second_domain", "one-shot, 2nd domain"),
              ("distilled_ppl_wikitext", "distilled, WikiText"), ("distilled_ppl_second_domain", "distilled, 2nd domain")]
    for i, (key, label) in enumerate(series):
        base = dense[key.replace("distilled_", "")]
        xs = [j + (i - 1.5) * width for j, r in enumerate(rows) if r.get(key)]
        ys = [r[key] / base for r in rows if r.get(key)]
        if xs:
            ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(2.0, color="grey", lw=0.8, ls="--")
    ax.set(ylabel="perplexity / dense (log)", title="Sparsity schedules, before and after distillation")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
