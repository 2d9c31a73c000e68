"""Factorial effects: what each factor level (a module group present or not, a rank, a variant, a layer subset) and
each two-way interaction the grid supports does to the score, with 95% intervals and a Holm correction.

One linear model per question, fitted by ordinary least squares on every trial's score (each seed an observation),
with one intercept per dataset (the blocking factor: datasets differ in level, not in what the factors do). Main
effects come from the additive model; interactions from the model with every estimable two-way product added. A
column the grid cannot separate (a linear combination of the others: confounded, aliased) is named as such and left
out of the fit, rather than given a number; so is a factor with one level only.

Kept out of the operator's hot path and small: numpy and scipy.special (the t distribution's CDF and quantile, what
scipy.stats.t calls) are imported here, when effects are first computed, and the result is cached by the
observations' identity (the operator rebuilds the summary on every pass, the effects only when the results change).
statsmodels itself is not imported: its OLS and multitest modules bring pandas and scipy.stats and add about 140 MiB
to the operator's resident memory (99 -> 242 MiB measured), past its 200 MiB goal; the fit is numpy's least squares,
and tests/core/summary/test_effects.py checks every figure (estimate, standard error, interval, p, Holm) against
statsmodels' OLS and multipletests to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from lora_ablation.modules.groups import expand_groups
from lora_ablation.summary.models import Effect, Effects

ALPHA = 0.05
MAX_EFFECTS = 200  # main effects and interactions listed in summary.json (a grid of many factors has many pairs)
# Factor levels one fit takes. A real grid has a handful (module groups, ranks, variants, layer subsets); module sets
# of many distinct names give thousands, whose aliasing analysis grows with the cube of their number (3,200 levels
# took 300 s), so the summary, which the operator rebuilds, stays bounded and says why it left effects out.
MAX_FACTOR_COLUMNS = 64
TOL = 1e-9  # relative singular-value cut-off for a column being a combination of the others
INSTALL_STATS = "pip install 'lora-ablation-operator[operator]'"


@dataclass(frozen=True, order=True)
class Observation:
    """One trial's score and its factor levels; hashable, so a tuple of them is the cache key."""

    dataset: str
    modules: tuple[str, ...]
    rank: int
    variant: str
    layers: str
    score: float
    metric: str = ""  # what `score` measures on this dataset: effects pool it across datasets


@dataclass(frozen=True)
class _Column:
    name: str  # what the table shows: 'fc2', 'rank 32 (vs 16)', 'qkv x fc2'
    factors: tuple[str, ...]  # the factor(s) it belongs to: 'fc2', 'rank', ...
    values: tuple[float, ...]
    kind: str = "main"  # or "interaction"


def _module_columns(observations: Sequence[Observation]) -> tuple[list[_Column], list[str]]:
    sets = [expand_groups(list(o.modules)) for o in observations]
    members = [set(groups) | set(raw) for groups, raw in sets]
    names = sorted({m for s in members for m in s}, key=lambda m: (0, ["qkv", "o_proj", "fc1", "fc2"].index(m))
                   if m in ("qkv", "o_proj", "fc1", "fc2") else (1, m))  # fmt: skip
    columns, notes = [], []
    for name in names:
        values = tuple(1.0 if name in s else 0.0 for s in members)
        if all(values):
            notes.append(f"{name}: in every module set (one level only), so its effect cannot be estimated")
            continue
        columns.append(_Column(name, (name,), values))
    return columns, notes


def _level_columns(factor: str, levels: list, reference, shown) -> tuple[list[_Column], list[str]]:
    distinct = sorted(set(levels), key=lambda v: (v != reference, v))
    if len(distinct) < 2:
        return [], [f"{factor}: one level only ({shown(distinct[0])}), so its effect cannot be estimated"]
    ref = distinct[0]
    return [
        _Column(f"{factor} {shown(level)} (vs {shown(ref)})", (factor,), tuple(float(v == level) for v in levels))
        for level in distinct[1:]
    ], []


def _factor_columns(observations: Sequence[Observation]) -> tuple[list[_Column], list[str]]:
    columns, notes = _module_columns(observations)
    ranks = [o.rank for o in observations]
    for factor, levels, reference, shown in (
        ("rank", ranks, min(ranks), lambda r: f"r{r}"),
        ("variant", [o.variant for o in observations], "lora", str),
        ("layers", [o.layers for o in observations], "all", str),
    ):
        more, said = _level_columns(factor, levels, reference, shown)
        columns += more
        notes += said
    return columns, notes


def _interactions(columns: list[_Column]) -> list[_Column]:
    pairs = []
    for i, first in enumerate(columns):
        for second in columns[i + 1 :]:
            if set(first.factors) & set(second.factors):
                continue  # two levels of one factor never occur together
            values = tuple(a * b for a, b in zip(first.values, second.values, strict=True))
            name = f"{first.name} x {second.name}"
            pairs.append(_Column(name, (*first.factors, *second.factors), values, "interaction"))
    return pairs


def _rank(np, matrix) -> int:
    if matrix.shape[1] == 0:
        return 0
    singular = np.linalg.svd(matrix, compute_uv=False)
    return int((singular > TOL * max(matrix.shape) * singular[0]).sum()) if singular.size else 0


def _shown(names: list[str], indices, blocks: int) -> list[str]:
    shown = sorted({names[k] for k in indices if k >= blocks})
    return shown + (["the dataset means"] if any(k < blocks for k in indices) else [])


def _strict(np, matrix, names: list[str], blocks: int) -> tuple[list[int], dict[int, list[str]]]:
    """Main effects: a column is estimable when it is no combination of the others (it leaves the null space alone);
    one that is, is confounded with the columns sharing a null-space direction with it."""
    padded = np.vstack([matrix, np.zeros((max(matrix.shape[1] - matrix.shape[0], 0), matrix.shape[1]))])
    vt = np.linalg.svd(padded, full_matrices=False)[2]  # p x p: never the n x n left factor
    null = vt[_rank(np, matrix) :]  # rows spanning the null space
    keep, aliased = [], {}
    for j in range(blocks, matrix.shape[1]):
        involved = [v for v in null if abs(v[j]) > 1e-8]
        if not involved:
            keep.append(j)
            continue
        aliased[j] = _shown(names, {k for v in involved for k in range(len(v)) if k != j and abs(v[k]) > 1e-8}, blocks)
    return keep, aliased


def _greedy(np, matrix, names: list[str], blocks: int, start: int) -> tuple[list[int], dict[int, list[str]]]:
    """Interactions, after the estimable main effects (columns blocks..start): taken in order (best supported first),
    each kept when it adds a dimension; one that does not is aliased with the kept columns it is a combination of,
    and the kept ones are estimated as if it were 0 (the fractional-factorial convention)."""
    keep = list(range(blocks, start))
    aliased = {}
    for j in range(start, matrix.shape[1]):
        base = matrix[:, list(range(blocks)) + keep]
        if _rank(np, np.hstack([base, matrix[:, [j]]])) > base.shape[1]:
            keep.append(j)
            continue
        coefficients = np.linalg.lstsq(base, matrix[:, j], rcond=None)[0]
        chosen = [*range(blocks), *keep]
        aliased[j] = _shown(names, {chosen[i] for i, c in enumerate(coefficients) if abs(c) > 1e-8}, blocks)
    return keep, aliased


@dataclass
class _Ols:
    params: list[float]
    bse: list[float]
    pvalues: list[float]
    bounds: list[tuple[float, float]]


def _ols(np, y, x, df_resid: int) -> _Ols:
    """Least squares with classical standard errors and t intervals, as statsmodels' OLS(y, x).fit() (x full rank)."""
    from scipy.special import stdtr, stdtrit

    params = np.linalg.lstsq(x, y, rcond=None)[0]
    if df_resid <= 0:
        return _Ols([float(v) for v in params], [], [], [])
    residual = y - x @ params
    scale = float(residual @ residual) / df_resid
    bse = np.sqrt(np.diag(np.linalg.pinv(x.T @ x)) * scale)
    quantile = float(stdtrit(df_resid, 1 - ALPHA / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        pvalues = 2 * stdtr(df_resid, -np.abs(params / bse))
    bounds = [(float(b - quantile * e), float(b + quantile * e)) for b, e in zip(params, bse, strict=True)]
    return _Ols([float(v) for v in params], [float(v) for v in bse], [float(v) for v in pvalues], bounds)


def _fit(observations: Sequence[Observation], columns: list[_Column], interactions: int = 0):
    """OLS with one intercept per dataset; returns (effects, residual df) for `columns`, the last `interactions` of
    them two-way products (the others are main effects estimable on their own)."""
    import numpy as np

    datasets = sorted({o.dataset for o in observations})
    blocks = len(datasets)
    y = np.array([o.score for o in observations], dtype=float)
    block_matrix = np.array([[1.0 if o.dataset == d else 0.0 for d in datasets] for o in observations])
    factor_matrix = np.array([c.values for c in columns], dtype=float).T.reshape(len(observations), len(columns))
    matrix = np.hstack([block_matrix, factor_matrix])
    names = [*datasets, *(c.name for c in columns)]
    if interactions:
        keep, aliased = _greedy(np, matrix, names, blocks, matrix.shape[1] - interactions)
    else:
        keep, aliased = _strict(np, matrix, names, blocks)
    effects = []
    for j, partners in aliased.items():
        column = columns[j - blocks]
        shown = ", ".join(partners[:6]) + (" ..." if len(partners) > 6 else "")
        if not any(column.values):
            why = "no configuration combines them"
        elif column.kind == "interaction":
            why = f"aliased with {shown}: the grid cannot separate it (the interactions shown assume it is 0)"
        else:
            why = f"confounded with {shown}: the grid cannot separate it"
        effects.append(Effect(term=column.name, kind=column.kind, factors=list(column.factors), reason=why,
                              aliased_with=partners[:20]))  # fmt: skip
    fitted = matrix[:, list(range(blocks)) + keep]
    df_resid = len(observations) - fitted.shape[1]
    if keep:
        result = _ols(np, y, fitted, df_resid)
        for position, j in enumerate(keep, start=blocks):
            column = columns[j - blocks]
            if column.kind != ("interaction" if interactions else "main"):
                continue  # the interaction model's main effects are its baseline, not reported twice
            # What the grid aliases onto it: kept terms are estimated assuming these are 0.
            onto = sorted(columns[k - blocks].name for k, partners in aliased.items() if column.name in partners)
            fields = dict(term=column.name, kind=column.kind, factors=list(column.factors), separable=True,
                          estimate=float(result.params[position]), aliased_with=onto[:20])  # fmt: skip
            known = df_resid > 0 and math.isfinite(result.bse[position]) and math.isfinite(result.pvalues[position])
            if known:
                low, high = result.bounds[position]
                effects.append(Effect(**fields, std_error=float(result.bse[position]), ci_low=low, ci_high=high,
                                      p_value=float(result.pvalues[position])))  # fmt: skip
            else:
                effects.append(Effect(**fields, reason="no residual degrees of freedom (every score fitted exactly): "
                                      "no interval, nothing tested"))  # fmt: skip
    order = {c.name: i for i, c in enumerate(columns)}
    effects = [e for e in effects if e.kind == ("interaction" if interactions else "main")]
    effects.sort(key=lambda e: order[e.term])
    return effects, max(df_resid, 0)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (as statsmodels' multipletests(method="holm")): the i-th smallest times
    (m - i), made non-decreasing, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _holm(effects: list[Effect]) -> None:
    tested = [e for e in effects if e.p_value is not None]
    for effect, p in zip(tested, holm([e.p_value for e in tested]), strict=True):
        effect.p_holm = p
        effect.beyond_noise = p <= ALPHA


def _metric_notes(observations: Sequence[Observation]) -> list[str]:
    """The fit's one coefficient per factor level pools every dataset's score: in one unit only if one metric."""
    metrics = sorted({o.metric for o in observations if o.metric})
    if len(metrics) < 2:
        return []
    shown = ", ".join(metrics[:5]) + (f" and {len(metrics) - 5} more" if len(metrics) > 5 else "")
    return [f"datasets are scored by different metrics ({shown}): each effect averages their units, so read its sign "
            "and its interval here, and its size in each dataset's leaderboard"]


@lru_cache(maxsize=16)
def factorial_effects(observations: tuple[Observation, ...]) -> Effects:
    """The effects of the grid behind `observations` (trials of adapters, no baseline), cached by their identity."""
    if not observations:
        return Effects(notes=["no adapter results yet"])
    try:
        import numpy  # noqa: F401
        import scipy.special  # noqa: F401
    except ImportError:
        return Effects(observations=len(observations),
                       notes=[f"factorial effects need numpy and scipy: {INSTALL_STATS}"])  # fmt: skip
    columns, notes = _factor_columns(observations)
    notes = _metric_notes(observations) + notes
    if len(columns) > MAX_FACTOR_COLUMNS:
        notes.append(f"not estimated: the grid has {len(columns)} factor levels (module names, ranks, variants, "
                     f"layer subsets), more than the {MAX_FACTOR_COLUMNS} one fit takes; group modules into fewer "
                     "module sets to get effects (the leaderboard does not depend on them)")  # fmt: skip
        return Effects(observations=len(observations), datasets=len({o.dataset for o in observations}), notes=notes)
    main, df_main = _fit(observations, columns)
    estimable = [c for c in columns if c.name in {e.term for e in main if e.separable}]
    # Best supported first (most trials having both), so the greedy pass keeps those and aliases the rarer ones.
    pairs = sorted(_interactions(estimable), key=lambda c: -sum(c.values))
    if len(pairs) > MAX_EFFECTS:
        notes.append(f"{len(pairs)} two-way interactions: the {MAX_EFFECTS} best supported were fitted")
        pairs = pairs[:MAX_EFFECTS]
    found, df_pairs = _fit(observations, estimable + pairs, len(pairs)) if pairs else ([], None)
    every = (main + found)[:MAX_EFFECTS]
    _holm(every)
    if not columns:
        notes.append("no factor has two levels: nothing to estimate")
    return Effects(
        observations=len(observations),
        datasets=len({o.dataset for o in observations}),
        residual_df=df_main,
        interaction_residual_df=df_pairs,
        effects=every,  # unrounded: the figures are what statsmodels computes, to 1e-9
        notes=notes,
    )
