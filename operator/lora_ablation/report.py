"""Render a Summary for people: a terminal table, Markdown, and the two pictures (plots.py)."""

from __future__ import annotations

from lora_ablation.summary_models import Summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def human_count(n: int | None, missing: str = "-") -> str:
    """12_345_678 -> '12.35M'; also what `plan` and `inspect-model` print for parameter counts."""
    if n is None:
        return missing
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


LEADERBOARD_HEADERS = [
    "#",
    "CONFIG",
    "MEAN",
    "MEAN RANK",
    "WORST GAP",
    "BEATS BASE",
    "TPOT P95 MS",
    "OVERHEAD",
    "PARAMS",
]


def leaderboard_rows(summary: Summary) -> list[list[str]]:
    total = len(summary.datasets)
    rows = []
    for position, c in enumerate(summary.configs, start=1):
        marks = ("*" if c.pareto else "") + ("" if c.complete else " (partial)")
        rows.append(
            [
                str(position),
                c.config + marks,
                _fmt(c.mean_score),
                _fmt(c.mean_rank, 2),
                _fmt(c.worst_gap),
                "-" if c.beats_baseline is None else f"{c.beats_baseline}/{c.datasets if c.complete else total}",
                _fmt(c.tpot_p95_ms),
                "-" if c.latency_overhead_pct is None else f"{c.latency_overhead_pct:+.1f}%",
                human_count(c.trainable_params or None),
            ]
        )
    return rows


def dataset_matrix(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Rows: configurations (plus the baseline); columns: datasets; cells: score (delta vs baseline)."""
    headers = ["CONFIG", *(t.name for t in summary.datasets)]
    rows = [["base (no adapter)", *(_fmt(t.baseline_score) for t in summary.datasets)]]
    for config in summary.configs:
        row = [config.config]
        for table in summary.datasets:
            cell = next((c for c in table.cells if c.config == config.config), None)
            if cell is None:
                row.append("missing")
            elif cell.delta_vs_baseline is None:
                row.append(_fmt(cell.score))
            else:
                row.append(f"{cell.score:.3f} ({cell.delta_vs_baseline:+.3f})")
        rows.append(row)
    return headers, rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the terminal tables of every command."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([render(headers), *(render(r) for r in rows)])


def render_text(summary: Summary) -> str:
    headers, rows = dataset_matrix(summary)
    rec = summary.recommendation
    parts = [
        f"Leaderboard: {summary.namespace}/{summary.ablation} (* = on the score/latency Pareto front)",
        text_table(LEADERBOARD_HEADERS, leaderboard_rows(summary)),
        "",
        "Scores per dataset (delta vs the base model):",
        text_table(headers, rows),
        "",
        f"Recommendation: accuracy-first {rec.accuracy_first or '-'}; balanced {rec.balanced or '-'}",
        f"  {rec.rationale or ''}",
    ]
    parts += [f"Note: {note}" for note in summary.notes]
    return "\n".join(parts)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("*", "\\*") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: Summary) -> str:
    headers, rows = dataset_matrix(summary)
    rec = summary.recommendation
    parts = [
        f"# LoRA ablation `{summary.namespace}/{summary.ablation}`",
        "",
        f"**Accuracy-first:** `{rec.accuracy_first or '-'}`  ",
        f"**Balanced:** `{rec.balanced or '-'}` (within {summary.tolerance} of the best mean, lowest TPOT p95)  ",
        f"{rec.rationale or ''}",
        "",
        "## Leaderboard",
        "",
        "`*` marks the Pareto front of mean score vs adapter TPOT p95. Worst gap: the largest distance to a "
        "dataset's best configuration (lower is more robust). Beats base: datasets where it scores above "
        "the model without an adapter.",
        "",
        _markdown_table(LEADERBOARD_HEADERS, leaderboard_rows(summary)),
        "",
        "## Scores per dataset",
        "",
        _markdown_table(headers, rows),
    ]
    if summary.notes:
        parts += ["", "## Notes", "", *(f"- {note}" for note in summary.notes)]
    return "\n".join(parts) + "\n"
