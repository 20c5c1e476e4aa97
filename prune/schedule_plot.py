"""schedule.png: the sparsity each module got, by depth, with the error estimate that decided it beside it."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.artifacts import pyplot, save_figure


def plot_schedule(path: Path, modules: list[str], layer_of: dict[str, int], sparsity_of: dict[str, float],
                  error_of: dict[str, float], title: str) -> Path | None:
    """Two panels sharing the depth axis; one marker per module kind (q_proj, down_proj, ...). None without
    matplotlib (the `plots` extra)."""
    plt = pyplot()
    if plt is None:
        return None

    kinds = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in modules))
    markers = "os^vD<>px*h"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i, kind in enumerate(kinds):
        names = [n for n in modules if n.rsplit(".", 1)[-1] == kind]
        depth = [layer_of[n] for n in names]
        top.scatter(depth, [sparsity_of[n] for n in names], marker=markers[i % len(markers)], s=18, label=kind)
        if error_of:
            bottom.scatter(depth, [error_of[n] for n in names], marker=markers[i % len(markers)], s=18, label=kind)
    top.set(ylabel="sparsity (0 = dense)", title=title)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=4)
    if error_of:
        bottom.set_yscale("log")
    bottom.set(xlabel="decoder layer", ylabel="error estimate (log)")
    bottom.grid(alpha=0.3)
    return save_figure(fig, Path(path))
