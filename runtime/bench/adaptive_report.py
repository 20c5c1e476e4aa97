"""adaptive.md and adaptive.png from adaptive.json (sparsetrt.runtime.bench.adaptive)."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.artifacts import pyplot, save_figure, write_text_atomic


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _within(agreement: dict) -> str:
    """The best bandit and the best static variant at <= 60 % of dense cost (reports from before they were
    recorded say so)."""
    if "best_bandit_within_cost" not in agreement:
        return "not recorded by this run"
    parts = []
    for label, key in (("bandit", "best_bandit_within_cost"), ("static variant", "best_static_within_cost")):
        r = agreement[key]
        parts.append(f"{label} none that cheap" if r is None else
                     f"{label} {r['policy']} {r['agreement_with_dense']:.3f} (at {r['relative_cost']:.3f}× dense "
                     f"cost, NLL {r['nll']:.3f})")
    return "; ".join(parts)


def markdown(report: dict) -> str:
    machine = report["machine"]
    stream = report["stream"]
    acc = report["acceptance"]
    lines = ["# Adaptive sparsity: a controller per input vs one static variant", "",
             f"Machine: {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} CPUs), {machine.get('platform', '')}"
             f"; variants on {report['variants'][0]['backend']}. Dense reference: `{report['dense']}`; probe "
             f"(cheapest measured): `{report['probe']}`.",
             f"Stream: {stream['inputs']} inputs ({stream['train']} to learn on, fully audited; {stream['evaluate']} "
             f"scored, {report['settings']['audit_fraction']:.0%} audited), {stream['new_tokens']} true continuation "
             f"tokens each, prompts of {report['settings']['min_prompt_tokens']}-"
             f"{report['settings']['max_prompt_tokens']} tokens. Sources:", ""]
    lines += [f"- {name} ({stream['per_source'][name]} inputs): {desc}" for name, desc in stream["sources"].items()]
    lines += ["", "## Policies (evaluation half)", "",
              "| policy | mean cost (ms) | × dense cost | NLL | static frontier NLL at that cost | beats frontier | "
              "agreement with dense | decision µs | decisions |",
              "|---|---:|---:|---:|---:|:---:|---:|---:|---|"]
    for row in report["policies"]:
        decisions = ", ".join(f"{k} {v}" for k, v in row["decisions"].items() if v)
        frontier = f"{row['frontier_nll']:.3f}"
        static = row["policy"].startswith("static:")
        lines.append(f"| {row['policy']} | {row['mean_cost']:.0f} | {row['relative_cost']:.3f} | {row['nll']:.3f} | "
                     f"{frontier} | {'(frontier)' if static else _yes(row['beats_static_frontier'])} | "
                     f"{row['agreement_with_dense']:.3f} | {row['decision_overhead_us']:.0f} | {decisions} |")
    how = ("the static frontier's slope between the probe variant and dense on the training half"
           if report["settings"]["lam"] is None else "set by --lam")
    lines += ["", f"λ = {report['lam']:.3f} nats per unit of cost relative to dense for the rows above ({how}); "
              "the sweep below varies it.", "",
              "## Acceptance (computed by this run)", "",
              f"- Bandit below the static frontier at its own cost: **{_yes(acc['frontier']['passed'])}** "
              + "; ".join(f"{k}: NLL {v['nll']:.3f} vs frontier {v['frontier_nll']:.3f} at {v['relative_cost']:.3f}× "
                          "dense cost" for k, v in acc["frontier"]["rows"].items()),
              f"- >= 95 % of dense agreement at <= 60 % of dense cost: **{_yes(acc['agreement_at_cost']['passed'])}**"
              + ("" if not acc["agreement_at_cost"]["cheapest_bandit_reaching_95"] else
                 " (cheapest bandit setting that reaches 95 %: {policy} at {relative_cost:.3f}× dense cost, agreement "
                 "{agreement_with_dense:.3f})".format(**acc["agreement_at_cost"]["cheapest_bandit_reaching_95"])),
              f"- Best agreement with dense at <= 60 % of dense cost: {_within(acc['agreement_at_cost'])}",
              f"- Decision overhead <= 2 % of the cheapest variant's prefill: **{_yes(acc['overhead']['passed'])}** "
              f"(max {acc['overhead']['max_decision_overhead_us']:.0f} µs vs limit {acc['overhead']['limit_us']:.0f} µs; "
              f"probe prefill median {acc['overhead']['cheapest_prefill_ms_median']:.1f} ms; feature extraction "
              f"{report['feature_us_mean']:.0f} µs, counted in the probe's cost)",
              f"- Modelled GPU cost: {report['modelled_gpu_cost_note']}.", ""]
    lines += modelled_gpu_section(report.get("modelled_gpu"))
    lines += ["## λ sweep", "", "| policy | × dense cost | NLL | agreement | beats frontier |", "|---|---:|---:|---:|:---:|"]
    for row in report["sweep"]:
        lines.append(f"| {row['policy']} | {row['relative_cost']:.3f} | {row['nll']:.3f} | "
                     f"{row['agreement_with_dense']:.3f} | {_yes(row['beats_static_frontier'])} |")
    lines += ["", "## Static variants per source (evaluation half): NLL / agreement", "",
              "| source | " + " | ".join(report["per_source"][next(iter(report["per_source"]))]) + " |",
              "|---|" + "---:|" * len(report["per_source"][next(iter(report["per_source"]))])]
    for source, cells in report["per_source"].items():
        lines.append(f"| {source} | " + " | ".join(f"{c['nll']:.2f} / {c['agreement']:.2f}" for c in cells.values())
                     + " |")
    lines += ["", "Cost per request = probe prefill + features + decision (controllers only) + the chosen variant's "
              "prefill (skipped when it is the probe's variant) and decode + an escalation's dense prefill + the "
              "dense audit pass on audited requests; all latencies measured on this machine, teacher-forced over "
              "the true continuation. Written by `make bench-adaptive` (`sparsetrt bench-adaptive`)."]
    return "\n".join(lines) + "\n"


def modelled_gpu_section(gpu: dict | None) -> list[str]:
    """The policies on GPU-modelled costs beside the measured ones (nothing when no gpu.json was given)."""
    if not gpu:
        return []
    acc = gpu["acceptance"]
    lines = ["## Modelled on GPU costs (a model, not a measurement)", "", gpu["note"] + f" (`{gpu['source']}`).", "",
             "| variant | prefill time × | decode time × | from |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {f['prefill']:.3f} | {f['decode']:.3f} | {f['source']} |"
              for name, f in gpu["factors"].items()]
    lines += ["", "| policy | × dense cost (modelled) | NLL | agreement with dense | beats frontier |",
              "|---|---:|---:|---:|:---:|"]
    for row in gpu["policies"]:
        static = row["policy"].startswith("static:")
        lines.append(f"| {row['policy']} | {row['relative_cost']:.3f} | {row['nll']:.3f} | "
                     f"{row['agreement_with_dense']:.3f} | {'(frontier)' if static else _yes(row['beats_static_frontier'])} |")
    reach = acc["agreement_at_cost"]["cheapest_bandit_reaching_95"]
    lines += ["", f"On the modelled costs: bandit below the static frontier **{_yes(acc['frontier']['passed'])}**; "
                  f">= 95 % agreement at <= 60 % cost **{_yes(acc['agreement_at_cost']['passed'])}**"
                  + ("" if not reach else f" (cheapest reaching 95 %: {reach['policy']} at "
                                          f"{reach['relative_cost']:.3f}×)") + ".", ""]
    return lines


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, zoom, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    statics = [r for r in report["policies"] if r["policy"].startswith("static:")]
    dense_cost = next(r for r in statics if r["policy"] == f"static:{report['dense']}")["mean_cost"]
    hull = report["frontier"]
    for axis in (left, zoom):
        axis.plot([c / dense_cost for c, _ in hull], [n for _, n in hull], "k--", lw=1,
                  label="static frontier (mixtures)")
    for axis, key in ((left, "nll"), (zoom, "nll"), (right, "agreement_with_dense")):
        for r in statics:
            axis.scatter(r["relative_cost"], r[key], marker="s", color="gray")
            axis.annotate(r["policy"].split(":", 1)[1], (r["relative_cost"], r[key]), fontsize=7,
                          textcoords="offset points", xytext=(4, 3))
        for policy, style in (("linucb", "o-"), ("thompson", "^-"), ("oracle", "x:")):
            rows = sorted((r for r in report["sweep"] if r["policy"].startswith(policy + "@")),
                          key=lambda r: r["relative_cost"])
            axis.plot([r["relative_cost"] for r in rows], [r[key] for r in rows], style, ms=4,
                      label=f"{policy} (λ sweep)")
        axis.set_xlabel("mean cost per request / dense (measured latency)")
    left.set_ylabel("NLL of the true continuation (nats/token)")
    # the zoom: the band where the frontier and the controllers lie (static variants far above it are cut off)
    near = [n for _, n in hull] + [r["nll"] for r in report["sweep"] + report["policies"]
                                   if not r["policy"].startswith("static:")]
    zoom.set_ylim(min(near) - 0.03, max(near) + 0.03)
    zoom.set_title("the same, zoomed on the frontier")
    right.set_ylabel("next-token agreement with dense")
    right.axhline(0.95, color="red", lw=0.8, ls=":")
    right.axvline(0.6, color="red", lw=0.8, ls=":")
    left.legend(fontsize=7)
    left.set_title("quality-cost frontier (lower-left is better)")
    right.set_title("agreement; red: the 95 % at 60 % cost target")
    return save_figure(fig, path)


def write_adaptive_report(out: Path, report: dict) -> None:
    write_text_atomic(Path(out) / "adaptive.md", markdown(report))
    plot(report, Path(out) / "adaptive.png")
