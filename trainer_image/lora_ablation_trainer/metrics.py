"""Eval metrics on generated text: strict multiple-choice accuracy, exact match, ROUGE-Lsum and JSON key/value match.

Pure Python (no torch), so the scoring rules can be unit-tested on hand-computed cases. Every metric returns a
MetricResult whose score is higher-is-better; predictions the metric cannot read count as wrong and are tallied in
parse_failures, while a reference it cannot read is a broken dataset and raises DataError (a permanent trial error).
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lora_ablation_trainer.errors import DataError


@dataclass(frozen=True)
class MetricResult:
    score: float
    samples: int
    parse_failures: int = 0
    details: dict[str, float] = field(default_factory=dict)


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --- multiple choice -------------------------------------------------------------------------------------------------

_LETTER = r"\(?(?P<letter>[A-J])\)?(?![A-Za-z0-9'])"
# "The answer is (C)", "answer: B", "Final answer - D"; the letter itself stays case-sensitive ("the answer is a bit").
_FINAL_ANSWER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*" + _LETTER)
# An option letter opening the output ("B. Vitamin D", "(C) ...", "D\n..."): models lead with the answer and then
# echo the option text, which often holds other capitals, so a leading letter wins over later ones.
_LEADING = re.compile(r"^\(?(?P<letter>[A-J])(?:\)|[.:](?=\s|$)|(?=\s*\n)|$)")
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9'])" + _LETTER)
# A bare "A" or "I" followed by a lowercase word is English ("A patient", "I think"), unless it is "A or B".
_ENGLISH_WORD_AFTER = re.compile(r"\s+(?!(?:or|and)\b)[a-z]")


def _is_english_word(text: str, match: re.Match[str]) -> bool:
    wrapped = match.group(0).startswith("(") or match.group(0).endswith(")")
    return match["letter"] in "AI" and not wrapped and bool(_ENGLISH_WORD_AFTER.match(text, match.end()))


def parse_choice(text: str) -> str | None:
    """The one option letter A-J a model output commits to, or None when it names none or several."""
    clean = re.sub(r"[*`]", "", text).strip()  # markdown emphasis: "**C**"
    finals = list(_FINAL_ANSWER.finditer(clean))
    if finals:
        return finals[-1]["letter"]  # the last statement wins when a model corrects itself
    leading = _LEADING.match(clean)
    if leading:
        return leading["letter"]
    letters = {m["letter"] for m in _CANDIDATE.finditer(clean) if not _is_english_word(clean, m)}
    return letters.pop() if len(letters) == 1 else None


def _reference_choice(reference: str, index: int) -> str:
    letter = reference.strip().strip("()[].:").strip().upper()
    if len(letter) == 1 and letter in "ABCDEFGHIJ":
        return letter
    parsed = parse_choice(reference)
    if parsed is None:
        raise DataError(f"accuracy: reference {index} ({reference[:40]!r}) is not an option letter A-J")
    return parsed


def accuracy(predictions: list[str], references: list[str]) -> MetricResult:
    _check_lengths(predictions, references)
    correct = failures = 0
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        expected = _reference_choice(reference, index)
        parsed = parse_choice(prediction)
        failures += parsed is None
        correct += parsed == expected
    return MetricResult(correct / len(predictions) if predictions else 0.0, len(predictions), failures)


# --- exact match -----------------------------------------------------------------------------------------------------

_SURROUNDING = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019\u00ab\u00bb"
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style: lowercase, no surrounding punctuation or quotes, no articles, single spaces."""
    text = text.lower().strip(_SURROUNDING)
    text = " ".join(_ARTICLES.sub(" ", text).split())
    return text.strip(_SURROUNDING)


def exact_match(predictions: list[str], references: list[str]) -> MetricResult:
    _check_lengths(predictions, references)
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return MetricResult(hits / len(predictions) if predictions else 0.0, len(predictions))


# --- ROUGE-Lsum ------------------------------------------------------------------------------------------------------

@functools.cache
def _segmenter() -> Any:
    import pysbd  # imported here: only ROUGE-Lsum needs it

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Sentences as ROUGE-Lsum wants them (one a line), by pysbd's rules (the Golden Rules of sentence boundaries:
    "Jan. 5", "Dr. Smith", "the U.S. Army", "1. Item" end no sentence), within each line of the text."""
    return [s.strip() for line in text.splitlines() for s in _segmenter().segment(line) if s.strip()]


def rouge_lsum(predictions: list[str], references: list[str]) -> MetricResult:
    from rouge_score import rouge_scorer  # imported here: only this metric needs it (and it pulls in nltk)

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    scores = [
        scorer.score("\n".join(split_sentences(r)), "\n".join(split_sentences(p)))["rougeLsum"]  # (target, pred)
        for p, r in zip(predictions, references, strict=True)
    ]
    return MetricResult(
        _mean([s.fmeasure for s in scores]),
        len(predictions),
        details={"precision": _mean([s.precision for s in scores]), "recall": _mean([s.recall for s in scores])},
    )


# --- JSON key/value match --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?[ \t]*\n?(?P<body>.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN and Infinity unless told otherwise


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a model output (optionally inside a ```json fence), or None."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced["body"].strip()
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _normalize_value(value: Any) -> tuple[str, Any]:
    # Tagged so that "1" != 1 and True != 1, while 1 == 1.0 (Python compares int and float numerically).
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", " ".join(value.casefold().split()))
    return ("empty", type(value).__name__)  # an empty object or list kept as a leaf


def flatten(value: Any, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """{"a": {"b": 1}, "items": [{"name": "x"}]} -> {"a.b": 1, "items.0.name": "x"}, values normalised."""
    if isinstance(value, dict | list) and value:
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        flat: dict[str, tuple[str, Any]] = {}
        for key, item in pairs:
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: _normalize_value(value)}


def _json_sample(prediction: str, reference: dict[str, Any]) -> tuple[float, float, float] | None:
    parsed = parse_json_object(prediction)
    if parsed is None:
        return None
    pred, ref = flatten(parsed) if parsed else {}, flatten(reference) if reference else {}
    if not ref:
        return 1.0, 1.0, float(not pred)  # nothing to recall: vacuously complete
    key_recall = len(pred.keys() & ref.keys()) / len(ref)
    value_accuracy = sum(pred.get(k) == v for k, v in ref.items()) / len(ref)
    return key_recall, value_accuracy, float(pred == ref)


def json_kv_match(predictions: list[str], references: list[str]) -> MetricResult:
    _check_lengths(predictions, references)
    rows: list[tuple[float, float, float]] = []
    failures = 0
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        ref = parse_json_object(reference)
        if ref is None:
            raise DataError(f"json_kv_match: reference {index} is not a JSON object")
        row = _json_sample(prediction, ref)
        failures += row is None
        rows.append(row or (0.0, 0.0, 0.0))
    recall, values, whole = ([row[i] for row in rows] for i in range(3))
    return MetricResult(
        _mean([(k + v) / 2 for k, v in zip(recall, values, strict=True)]),
        len(predictions),
        failures,
        {"key_recall": _mean(recall), "value_accuracy": _mean(values), "whole_object_match": _mean(whole)},
    )


# --- eval loss and dispatch ------------------------------------------------------------------------------------------


def eval_loss_metric(mean_loss: float, samples: int) -> MetricResult:
    """Negated so that higher is better like every other metric; exp capped so a diverged run cannot overflow."""
    return MetricResult(-mean_loss, samples, 0, {"eval_loss": mean_loss, "perplexity": math.exp(min(mean_loss, 50.0))})


_GENERATION: dict[str, tuple[Callable[[list[str], list[str]], MetricResult], int]] = {
    "accuracy": (accuracy, 16),  # a letter, maybe "The answer is (C)."
    "exact_match": (exact_match, 64),
    "rougeLsum": (rouge_lsum, 512),
    "json_kv_match": (json_kv_match, 512),
}
GENERATION_METRICS = set(_GENERATION)


def _lookup(name: str) -> tuple[Callable[[list[str], list[str]], MetricResult], int]:
    if name not in _GENERATION:
        raise ValueError(f"unknown generation metric {name!r}; supported: {', '.join(sorted(_GENERATION))}")
    return _GENERATION[name]


def compute_metric(name: str, predictions: list[str], references: list[str]) -> MetricResult:
    return _lookup(name)[0](predictions, references)


def max_new_tokens_hint(name: str) -> int:
    return _lookup(name)[1]
