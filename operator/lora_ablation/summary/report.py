"""Render a Summary for people: a terminal table, Markdown, and the two pictures (plots.py).

Labels, dataset and metric names, notes and the rationale can come from trial files (or labels built from them), so
every string is shown through render_safe: plain_text for the terminal (no escape sequences), markdown_text for
summary.md (no HTML, links or images; no broken tables)."""

from __future__ import annotations

from collections.abc import Callable

from lora_ablation.api.render_safe import MAX_LABEL, markdown_text, plain_text
from lora_ablation.summary.effects_view import beyond_noise, effects_intro, effects_table
from lora_ablation.summary.models import Summary

Text = Callable[[object], str]  # how an untrusted string is shown: plain_text or markdown_text
NOTE_LIMIT = 4000  # a note names up to a few dozen configurations


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


def with_interval(value: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """'0.912 ±0.012' when a 95% interval exists, else the bare value."""
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ±{(high - low) / 2:.{digits}f}"


def overhead_text(pct: float | None, ci: float | None, within_noise: bool | None) -> str:
    """'+1.5% ±3.0 within noise': a latency difference smaller than its noise is never stated bare."""
    if pct is None:
        return "-"
    text = f"{pct:+.1f}%" + (f" ±{ci:.1f}" if ci is not None else "")
    return text + (" within noise" if within_noise else "")


def _position(summary: Summary, index: int) -> str:
    """'2=' when the configuration shares its position (overlapping 95% intervals)."""
    position = summary.configs[index].position
    shared = sum(1 for c in summary.configs if c.position == position) > 1
    return f"{position}=" if shared else str(position)


def _merged(summary: Summary) -> bool:
    return any(c.merged_overhead_pct is not None for c in summary.configs)


def leaderboard_headers(summary: Summary) -> list[str]:
    """The leaderboard's columns; MERGED (the overhead with the adapter merged into the weights) when timed."""
    return [*LEADERBOARD_HEADERS[:-1], *(["MERGED"] if _merged(summary) else []), LEADERBOARD_HEADERS[-1]]


def leaderboard_rows(summary: Summary, text: Text = plain_text) -> list[list[str]]:
    total = len(summary.datasets)
    merged = _merged(summary)
    rows = []
    for index, c in enumerate(summary.configs):
        marks = ("*" if c.pareto else "") + ("" if c.complete else " (partial)")
        rows.append(
            [
                _position(summary, index),
                text(c.config) + marks,
                with_interval(c.mean_score, c.score_ci_low, c.score_ci_high),
                _fmt(c.mean_rank, 2),
                _fmt(c.worst_gap),
                "-" if c.beats_baseline is None else f"{c.beats_baseline}/{c.datasets if c.complete else total}",
                _fmt(c.tpot_p95_ms) + (f" ±{c.tpot_ci_ms:.3f}" if c.tpot_ci_ms is not None else ""),
                overhead_text(c.latency_overhead_pct, c.latency_overhead_ci_pct, c.latency_within_noise),
                *([overhead_text(c.merged_overhead_pct, c.merged_overhead_ci_pct, c.merged_within_noise)] * merged),
                human_count(c.trainable_params or None),
            ]
        )
    return rows


def matrix_configs(summary: Summary) -> list[str]:
    """The rows of the score table and the heatmap: the ranked configurations, then those with no score anywhere
    because they were eliminated after stage one or never started (the budget), so every planned one shows."""
    ranked = [c.config for c in summary.configs]
    unscored = [x.config for x in [*summary.eliminated, *summary.skipped] if x.config not in ranked]
    return ranked + list(dict.fromkeys(unscored))


def unscored_cell(summary: Summary, dataset: str, config: str) -> str:
    """Why a cell has no score: eliminated after stage one (on purpose), skipped (the budget), or missing."""
    if any(e.dataset == dataset and e.config == config for e in summary.eliminated):
        return "eliminated"
    if any(s.dataset == dataset and s.config == config for s in summary.skipped):
        return "skipped"
    return "missing"


def dataset_matrix(summary: Summary, text: Text = plain_text) -> tuple[list[str], list[list[str]]]:
    """Rows: configurations (plus the baseline); columns: datasets; cells: score (delta vs baseline)."""
    headers = ["CONFIG", *(text(t.name) for t in summary.datasets)]
    rows = [["base (no adapter)", *(_fmt(t.baseline_score) for t in summary.datasets)]]
    for config in matrix_configs(summary):
        row = [text(config)]
        for table in summary.datasets:
            cell = next((c for c in table.cells if c.config == config), None)
            if cell is None:
                row.append(unscored_cell(summary, table.name, config))
                continue
            score = with_interval(cell.score, cell.score_ci_low, cell.score_ci_high)
            row.append(score if cell.delta_vs_baseline is None else f"{score} ({cell.delta_vs_baseline:+.3f})")
        rows.append(row)
    return headers, rows


def legend(summary: Summary) -> str:
    if summary.seeds < 2:
        return "* = on the score/latency Pareto front; one seed: no intervals"
    return (
        f"* = on the score/latency Pareto front; ± = 95% Student-t interval over {summary.seeds} seeds; "
        "'=' after a position = tied: the intervals overlap, the noise cannot order them"
    )


def latency_noise(summary: Summary) -> list[str]:
    """The protocol's measured noise, printed so nobody reads a smaller latency difference as a finding."""
    if summary.latency_cv_pct is None:
        return []
    return [
        f"Latency noise: base-model TPOT varies {summary.latency_cv_pct:.1f}% (median coefficient of variation "
        "over each trial's repeats); overheads inside their 95% interval are marked 'within noise'"
    ]


def _verdict(summary: Summary, text: Text = plain_text) -> list[str]:
    rec = summary.recommendation
    if len(rec.tied) > 1:
        tied, cheapest = ", ".join(text(t) for t in rec.tied), text(rec.cheapest_tied)
        return [f"No winner: {tied} are tied with the best; cheapest of them: {cheapest}"]
    return []


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the terminal tables of every command."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([render(headers), *(render(r) for r in rows)])


def render_text(summary: Summary) -> str:
    headers, rows = dataset_matrix(summary)
    rec = summary.recommendation
    parts = [
        f"Leaderboard: {plain_text(summary.namespace)}/{plain_text(summary.ablation)} ({legend(summary)})",
        text_table(leaderboard_headers(summary), leaderboard_rows(summary)),
        "",
        "Scores per dataset (delta vs the base model):",
        text_table(headers, rows),
        "",
        *latency_noise(summary),
        *_verdict(summary),
        f"Recommendation: accuracy-first {plain_text(rec.accuracy_first or '-')}; balanced "
        f"{plain_text(rec.balanced or '-')}",
        f"  {plain_text(rec.rationale or '', NOTE_LIMIT)}",
    ]
    if summary.effects and summary.effects.effects:
        found = beyond_noise(summary.effects)
        parts.append("Effects beyond noise (Holm): " + ("; ".join(found) if found else "none"))
    parts += [f"Note: {plain_text(note, NOTE_LIMIT)}" for note in summary.notes]
    return "\n".join(parts)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("*", "\\*") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def _md(value: object) -> str:
    return markdown_text(value, MAX_LABEL)


def render_markdown(summary: Summary) -> str:
    headers, rows = dataset_matrix(summary, _md)
    rec = summary.recommendation
    parts = [
        f"# LoRA ablation `{_md(summary.namespace)}/{_md(summary.ablation)}`",
        "",
        f"**Accuracy-first:** `{_md(rec.accuracy_first or '-')}`  ",
        f"**Balanced:** `{_md(rec.balanced or '-')}` (within {summary.tolerance} of the best mean, lowest TPOT p95)  ",
        *(f"**{line}**  " for line in _verdict(summary, _md)),
        markdown_text(rec.rationale or "", NOTE_LIMIT),
        "",
        "## Leaderboard",
        "",
        "`*` marks the Pareto front of mean score vs adapter TPOT p95. Worst gap: the largest distance to a "
        "dataset's best configuration (lower is more robust). Beats base: datasets where it scores above "
        "the model without an adapter. "
        + (
            f"± is the 95% Student-t interval over {summary.seeds} seeds; positions marked `=` are tied (their "
            "intervals overlap). "
            if summary.seeds > 1
            else "One seed per configuration: no intervals, so small differences may be training noise. "
        )
        + "An overhead marked *within noise* is smaller than its measured noise.",
        "",
        _markdown_table(leaderboard_headers(summary), leaderboard_rows(summary, _md)),
        "",
        "## Scores per dataset",
        "",
        _markdown_table(headers, rows),
    ]
    parts += ["", *latency_noise(summary)] if summary.latency_cv_pct is not None else []
    if summary.effects is not None:
        parts += ["", "## Factorial effects", "", markdown_text(effects_intro(summary.effects), NOTE_LIMIT), ""]
        if summary.effects.effects:
            parts += [_markdown_table(*effects_table(summary.effects, _md)), ""]
        parts += [f"- {markdown_text(note, NOTE_LIMIT)}" for note in summary.effects.notes]
    if summary.notes:
        parts += ["", "## Notes", "", *(f"- {markdown_text(note, NOTE_LIMIT)}" for note in summary.notes)]
    return "\n".join(parts) + "\n"
