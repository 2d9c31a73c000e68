"""The factorial effects as people read them: one line each (status, terminal) and a table (summary.md)."""

from __future__ import annotations

from collections.abc import Callable

from lora_ablation.api.render_safe import plain_text
from lora_ablation.summary.models import Effect, Effects

MAX_STATUS_EFFECTS = 10  # status.effects: the effects beyond noise, largest first
MAX_EFFECT_LINE = 256


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def effect_line(effect: Effect) -> str:
    """'o_proj +0.1235 [+0.0474, +0.1997] Holm p=0.017', or the term and why it has no figure."""
    if effect.estimate is None:
        return plain_text(f"{effect.term}: {effect.reason or 'not estimated'}", MAX_EFFECT_LINE)
    text = f"{effect.term} {_signed(effect.estimate)}"
    if effect.ci_low is not None and effect.ci_high is not None:
        text += f" [{_signed(effect.ci_low)}, {_signed(effect.ci_high)}]"
    if effect.p_holm is not None:
        text += f" Holm p={effect.p_holm:.3g}"
    elif effect.reason:
        text += f" ({effect.reason})"
    return plain_text(text, MAX_EFFECT_LINE)


def beyond_noise(effects: Effects | None, limit: int = MAX_STATUS_EFFECTS) -> list[str]:
    """The effects that are more than noise after the Holm correction, largest magnitude first, as status lines."""
    if effects is None:
        return []
    found = sorted((e for e in effects.effects if e.beyond_noise and e.estimate is not None),
                   key=lambda e: (-abs(e.estimate or 0.0), e.term))  # fmt: skip
    return [effect_line(e) for e in found[:limit]]


def _figure(value: float | None) -> str:
    return "-" if value is None else _signed(value)


def effects_table(effects: Effects, text: Callable[[object], str]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows; `text` makes each untrusted string safe where it is shown (Markdown, terminal)."""
    headers = ["Effect", "Kind", "Estimate", "95% interval", "p", "p (Holm)", "Verdict"]
    rows = []
    for e in effects.effects:
        known = e.ci_low is not None and e.ci_high is not None
        interval = f"[{_signed(e.ci_low)}, {_signed(e.ci_high)}]" if known else "-"
        if not e.separable:
            verdict = e.reason or "not separable"
        elif e.p_holm is None:
            verdict = e.reason or "not tested"
        else:
            verdict = "beyond noise" if e.beyond_noise else "within noise"
            if e.aliased_with:
                verdict += f" (assumes {', '.join(e.aliased_with)} = 0)"
        rows.append([
            text(e.term), e.kind, _figure(e.estimate), interval,
            "-" if e.p_value is None else f"{e.p_value:.3g}", "-" if e.p_holm is None else f"{e.p_holm:.3g}",
            text(verdict),
        ])  # fmt: skip
    return headers, rows


def effects_intro(effects: Effects) -> str:
    df = f"{effects.residual_df} residual df" if effects.residual_df is not None else "no residual df"
    return (
        f"{effects.observations} trial scores over {effects.datasets} dataset(s), {df}. Model: {effects.model}. An "
        "effect is beyond noise when its Holm-adjusted p-value is at most 0.05."
    )
