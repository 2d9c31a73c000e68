"""The pictures of an ablation: score vs latency (Pareto), datasets x configurations (heatmap), the factorial
effects with their intervals, and the training curves (curves.py)."""

from __future__ import annotations

from pathlib import Path

from lora_ablation.api.render_safe import plain_text
from lora_ablation.summary.models import Summary
from lora_ablation.summary.report import matrix_configs, unscored_cell

MAX_PLOT_LABEL = 80  # longer labels would cover the points they name


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed (the `report` extra): the summary stands, the pictures are not drawn."""


INSTALL_REPORT = "pip install 'lora-ablation-operator[report]'"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(f"plots need matplotlib: {INSTALL_REPORT}") from None
    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_text(value: object, limit: int = MAX_PLOT_LABEL) -> str:
    """Untrusted text as matplotlib shows it: one short line, and '$' escaped (a pair would start mathtext, which
    raises on what it cannot parse when the figure is drawn)."""
    return plain_text(value, limit).replace("$", r"\$")


def pareto_label(name: str, within_noise: bool | None) -> str:
    """A point's label; an overhead over the base model smaller than its noise says so on the plot."""
    return f"{plot_text(name)} (overhead within noise)" if within_noise else plot_text(name)


def pareto_plot(summary: Summary, path: Path) -> Path | None:
    """Mean score vs adapter TPOT p95; front joined, recommendations marked. None when nothing was timed."""
    return _save(pareto_figure(summary), path)


def pareto_figure(summary: Summary):
    """The Pareto figure itself (None when nothing was timed), so tests can read what it says."""
    timed = [c for c in summary.configs if c.tpot_p95_ms is not None]
    if not timed:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    rec = summary.recommendation
    for c in timed:
        on_front = c.config in summary.pareto_front
        # Error bars: the 95% interval of the mean score over seeds and the measured latency noise.
        yerr = (c.score_ci_high - c.score_ci_low) / 2 if c.score_ci_low is not None else None
        if yerr is not None or c.tpot_ci_ms is not None:
            ax.errorbar(c.tpot_p95_ms, c.mean_score, xerr=c.tpot_ci_ms, yerr=yerr, fmt="none", ecolor="0.45",
                        elinewidth=1, capsize=3, zorder=2)  # fmt: skip
        ax.scatter(c.tpot_p95_ms, c.mean_score, s=70 if on_front else 40, zorder=3,
                   color="tab:blue" if on_front else "tab:gray", edgecolor="black", linewidth=0.5)  # fmt: skip
        name = c.config.rsplit(" r", 1)[0] if len({x.rank for x in timed}) == 1 else c.config
        ax.annotate(pareto_label(name, c.latency_within_noise), (c.tpot_p95_ms, c.mean_score),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)  # fmt: skip
    front = sorted((c for c in timed if c.config in summary.pareto_front), key=lambda c: c.tpot_p95_ms)
    if len(front) > 1:
        ax.plot([c.tpot_p95_ms for c in front], [c.mean_score for c in front], color="tab:blue", linewidth=1.5,
                zorder=2, label="Pareto front (beaten by none beyond noise)")  # fmt: skip
    elif front:  # one point has no line to show in the legend: its marker stands for the front
        ax.plot([front[0].tpot_p95_ms], [front[0].mean_score], linestyle="none", marker="o", markersize=8,
                color="tab:blue", markeredgecolor="black", zorder=3,
                label=f"Pareto front: {plot_text(front[0].config)} alone")  # fmt: skip
    picks = (("balanced", rec.balanced, "*", "tab:green"), ("accuracy-first", rec.accuracy_first, "D", "tab:red"))
    for label, name, marker, color in picks:
        chosen = next((c for c in timed if c.config == name), None)
        if chosen:
            ax.scatter(chosen.tpot_p95_ms, chosen.mean_score, marker=marker, s=260 if marker == "*" else 110,
                       facecolor="none", edgecolor=color, linewidth=2, zorder=4,
                       label=f"{label}: {plot_text(name)}")  # fmt: skip
    if summary.base_tpot_p95_ms:
        ax.axvline(summary.base_tpot_p95_ms, color="black", linestyle=":", linewidth=1, label="base model TPOT p95")
    bars = " (bars: 95% intervals)" if summary.seeds > 1 or any(c.tpot_ci_ms for c in timed) else ""
    ax.set_xlabel("adapter TPOT p95 (ms per output token, lower is better)" + bars)
    ax.set_ylabel("mean score over datasets (higher is better)")
    ax.set_title(f"{plot_text(summary.ablation)}: quality vs latency")
    ax.grid(alpha=0.3)
    if ax.get_xlim()[0] < 0:  # a latency is never negative: symmetric noise bars must not draw the axis below 0
        ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def heatmap_plot(summary: Summary, path: Path) -> Path | None:
    """Scores per dataset (rows) and configuration (columns), the baseline first, each cell annotated."""
    return _save(heatmap_figure(summary), path)


NO_SCORE_COLOR = "#d9d9d9"  # cells without a score: light grey, their label in black


def heatmap_figure(summary: Summary):
    """The heatmap figure itself (None without datasets or configurations), so tests can read what it says. A
    configuration eliminated at stage one on a dataset reads "eliminated" there (with its stage-one score); any
    configuration none of whose trials started (execution.maxGpuHours reached) reads "skipped"; any other cell without
    a score reads "missing", as in the score table."""
    if not summary.datasets or not matrix_configs(summary):
        return None
    plt = _pyplot()
    eliminated = {(e.dataset, e.config): e.stage_one_score for e in summary.eliminated}
    configs = ["base", *matrix_configs(summary)]
    grid: list[list[float | None]] = []
    spread: dict[tuple[int, int], float] = {}  # (row, column) -> 95% half-width, annotated as ±
    for i, table in enumerate(summary.datasets):
        cells = {c.config: c.score for c in table.cells}
        for c in table.cells:
            if c.score_ci_low is not None and c.score_ci_high is not None:
                spread[(i, configs.index(c.config))] = (c.score_ci_high - c.score_ci_low) / 2
        grid.append([table.baseline_score, *(cells.get(c) for c in configs[1:])])
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(configs), 1.4 + 0.6 * len(summary.datasets)), dpi=120)
    cmap = plt.get_cmap("viridis").with_extremes(bad=NO_SCORE_COLOR)
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(configs)), labels=[plot_text(c) for c in configs], rotation=35, ha="right", fontsize=8)
    rows = [f"{plot_text(t.name, 40)} ({plot_text(t.metric, 40)})" for t in summary.datasets]
    ax.set_yticks(range(len(summary.datasets)), labels=rows, fontsize=8)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            gone = eliminated.get((summary.datasets[i].name, configs[j])) if j else None
            if np.isnan(value) and gone is not None:
                text = f"eliminated\nstage 1: {gone:.3f}"
            elif np.isnan(value):
                text = unscored_cell(summary, summary.datasets[i].name, configs[j]) if j else "missing"
                text = "skipped\n(budget)" if text == "skipped" else text
            else:
                text = f"{value:.3f}"
            if (i, j) in spread:
                text += f"\n±{spread[(i, j)]:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if np.isnan(value) else 8,
                    color="black" if np.isnan(value) or value >= middle else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, label="score")
    ax.set_title(f"{plot_text(summary.ablation)}: score per dataset and configuration")
    fig.tight_layout()
    return fig


def effects_figure(summary: Summary):
    """One row per estimated effect: its point and 95% interval, those beyond noise (Holm) in colour; the effects the
    grid cannot separate are listed under the axis. None when no effect was estimated."""
    effects = summary.effects.effects if summary.effects else []
    shown = [e for e in effects if e.estimate is not None]
    if not shown:
        return None
    plt = _pyplot()
    unseparable = [e for e in effects if e.estimate is None]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.38 * len(shown) + 0.18 * min(len(unseparable), 12)), dpi=120)
    for row, effect in enumerate(reversed(shown)):
        color = "tab:red" if effect.beyond_noise else ("tab:blue" if effect.kind == "main" else "tab:purple")
        if effect.ci_low is not None and effect.ci_high is not None:
            ax.plot([effect.ci_low, effect.ci_high], [row, row], color=color, linewidth=2, alpha=0.8)
        ax.scatter(effect.estimate, row, color=color, edgecolor="black", linewidth=0.5, zorder=3, s=45)
    ax.axvline(0, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(shown)), labels=[plot_text(e.term) for e in reversed(shown)], fontsize=8)
    caption = "change in score (95% interval); red: beyond noise after Holm correction"
    if unseparable:
        names = ", ".join(plot_text(e.term, 40) for e in unseparable[:12]) + (" ..." if len(unseparable) > 12 else "")
        caption += f"\nnot separable on this grid: {names}"
    ax.set_xlabel(caption, fontsize=8)
    ax.set_title(f"{plot_text(summary.ablation)}: factorial effects (datasets as blocks)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def effects_plot(summary: Summary, path: Path) -> Path | None:
    return _save(effects_figure(summary), path)


def config_color(summary: Summary, config: str) -> tuple[str, str]:
    """A configuration's colour and role as the Pareto plot draws it: the accuracy-first pick red, the balanced pick
    green, the rest of the front blue, everything else grey."""
    rec = summary.recommendation
    if config == rec.accuracy_first:
        return "tab:red", "accuracy-first"
    if config == rec.balanced:
        return "tab:green", "balanced"
    if config in summary.pareto_front:
        return "tab:blue", "Pareto front"
    return "tab:gray", "other"


MAX_CURVE_PANELS = 12


def curves_figure(summary: Summary):
    """One panel per dataset: every trial's training loss against steps, coloured as in the Pareto plot, eliminated
    trials dashed, eval losses marked (o: final, s: stage one). None when no result carries a curve."""
    datasets = list(dict.fromkeys(c.dataset for c in summary.curves))[:MAX_CURVE_PANELS]
    if not datasets:
        return None
    plt = _pyplot()
    columns = min(3, len(datasets))
    rows = -(-len(datasets) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), dpi=120, squeeze=False)
    seen: dict[str, object] = {}  # legend: one entry per role
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        for trial in (c for c in summary.curves if c.dataset == dataset):
            color, role = ("tab:gray", "eliminated after stage one") if trial.eliminated else config_color(
                summary, trial.config)  # fmt: skip
            (line,) = ax.plot(trial.curve.steps, trial.curve.loss, color=color, linewidth=1.2, alpha=0.85,
                              linestyle="--" if trial.eliminated else "-")  # fmt: skip
            seen.setdefault(role, line)
            for point in trial.eval_points:
                if point.eval_loss is not None:
                    ax.scatter(point.step, point.eval_loss, color=color, edgecolor="black", linewidth=0.5, zorder=3,
                               s=28, marker="s" if point.stage == "stage-one" else "o")  # fmt: skip
        ax.set_title(plot_text(dataset, 40), fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("loss (nats/token)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 5), fontsize=8)
    fig.suptitle(f"{plot_text(summary.ablation)}: training loss (lines) and eval loss (markers)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def curves_plot(summary: Summary, path: Path) -> Path | None:
    return _save(curves_figure(summary), path)


def _save(fig, path: Path) -> Path | None:
    """Write a figure (None: nothing to draw) to `path` and release it."""
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def write_plots(summary: Summary, directory: Path) -> list[Path]:
    made = [
        pareto_plot(summary, directory / "pareto.png"),
        heatmap_plot(summary, directory / "heatmap.png"),
        effects_plot(summary, directory / "effects.png"),
        curves_plot(summary, directory / "curves.png"),
    ]
    return [p for p in made if p is not None]
