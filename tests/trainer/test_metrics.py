"""Eval metrics on hand-computed cases: the choice parser's traps, SQuAD normalisation, ROUGE-Lsum, JSON matching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lora_ablation_trainer.errors import DataError
from lora_ablation_trainer.metrics import (
    GENERATION_METRICS,
    MetricResult,
    accuracy,
    compute_metric,
    eval_loss_metric,
    exact_match,
    flatten,
    json_kv_match,
    max_new_tokens_hint,
    normalize_answer,
    parse_choice,
    rouge_lsum,
    split_sentences,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B)", "B"),
        ("  J \n", "J"),
        ("Answer: B", "B"),
        ("The answer is B", "B"),
        ("answer is (C)", "C"),
        ("**C**", "C"),
        ("The correct answer is **D**.", "D"),
        ("B. Vitamin D deficiency", "B"),  # the leading letter, not the D in the echoed option text
        ("I think B", "B"),  # "I" before a lowercase word is the pronoun
        ("Option B or option C. The answer is C", "C"),  # a final-answer phrase settles it
        ("The answer is B. No wait, the answer is E.", "E"),  # the last statement wins
    ],
)
def test_parse_choice_accepts(text: str, expected: str) -> None:
    assert parse_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A patient with fever should rest",  # the article "A", not option A
        "I am not sure",
        "Option B or option C",  # two candidates, no final-answer phrase
        "A or B",
        "The answer is a bit unclear",  # lowercase "a" is a word
        "Answer: Because of the fever",  # the B of "Because" is not an option
        "K",  # outside A-J
    ],
)
def test_parse_choice_rejects(text: str) -> None:
    assert parse_choice(text) is None


def test_accuracy_counts_parse_failures_as_wrong() -> None:
    predictions = ["B", "The answer is (c)", "A patient with fever", "Answer: D", "C or D"]
    references = ["b", "C", "A", " (d) ", "C"]
    # 1 right, 2 wrong ("c" lowercase inside parens is not accepted), 3 parse failure, 4 right, 5 parse failure.
    assert accuracy(predictions, references) == MetricResult(score=2 / 5, samples=5, parse_failures=3, details={})


def test_accuracy_rejects_a_reference_that_is_not_a_letter() -> None:
    with pytest.raises(DataError, match="reference 1"):
        accuracy(["A", "B"], ["A", "fever"])


def test_normalize_answer_is_squad_like() -> None:
    assert normalize_answer('  "The  Eiffel\tTower." ') == "eiffel tower"
    assert normalize_answer("An apple, a day") == "apple, day"  # inner punctuation stays


def test_exact_match() -> None:
    predictions = ["The Eiffel Tower.", "paris", "1 ,000", "'Blue'"]
    result = exact_match(predictions, ["eiffel tower", "Paris!", "1,000", "blue"])  # the inner space in "1 ,000" stays
    assert (result.score, result.samples, result.parse_failures) == (3 / 4, 4, 0)


def test_split_sentences() -> None:
    text = "Dr. Smith arrived. He was late! Was he? Yes.\nJ. Smith said 3 things. 4 were true. e.g. not this"
    assert split_sentences(text) == [
        "Dr. Smith arrived.",
        "He was late!",
        "Was he?",
        "Yes.",
        "J. Smith said 3 things.",
        "4 were true.",
        "e.g. not this",
    ]


# Report text as GovReport-style references are written: a month abbreviation before a day, a title before a name,
# an inline numbered list and "Sept." before a number. A person splits it into these five sentences.
REPORT = [
    "On Jan. 5, 2024 Dr. Smith testified before the committee.",
    "GAO made two recommendations.",
    "1. Improve oversight of the 24 contracts.",
    "2. Track costs by Sept. 30.",
    "DOE agreed with both.",
]
SUMMARY = ["Dr. Smith testified on Jan. 5, 2024.", "1. Improve oversight of the contracts.", "2. Track costs.",
           "DOE agreed."]  # fmt: skip
# pysbd reads "1. ... 2. ..." as a numbered list; a lone "1." before a capital it takes for a sentence end.


def test_report_sentences_split_where_a_person_splits_them() -> None:
    assert split_sentences(" ".join(REPORT)) == REPORT
    assert split_sentences(" ".join(SUMMARY)) == SUMMARY


def test_rouge_lsum_on_report_text_is_rouge_scores_on_the_correct_sentences() -> None:
    """The hand-written splitter this replaced broke after "Jan.", "1.", "2." and "Sept.", which moved Lsum away
    from the reference package's score on the correctly split text."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    expected = scorer.score("\n".join(REPORT), "\n".join(SUMMARY))["rougeLsum"]
    result = rouge_lsum([" ".join(SUMMARY)], [" ".join(REPORT)])
    assert result.score == pytest.approx(expected.fmeasure, abs=1e-12)
    assert result.details == pytest.approx({"precision": expected.precision, "recall": expected.recall}, abs=1e-12)


def test_rouge_lsum_uses_sentence_level_lcs() -> None:
    # Per reference sentence, the union LCS against all predicted sentences:
    #   "the cat sat" vs {"the cat ran", "the dog sat"} -> the, cat | the, sat -> union the cat sat = 3
    #   "the dog ran" vs {"the cat ran", "the dog sat"} -> the, ran | the, dog -> union the dog ran = 3
    # 6 hits of 6 tokens each side: F = 1. As one sentence the LCS is "the cat the dog" (4/6), so this
    # also fails if the splitter is not used.
    result = rouge_lsum(["The cat ran. The dog sat."], ["The cat sat. The dog ran."])
    assert result.score == pytest.approx(1.0)


def test_rouge_lsum_precision_recall_and_stemming() -> None:
    # Prediction "the cats sat" stems to the cat sat (3 tokens); reference has 6; LCS = 3.
    # precision 3/3, recall 3/6, F = 2 * 1 * 0.5 / 1.5 = 2/3. Second pair shares nothing: all zero.
    result = rouge_lsum(["The cats sat.", "Nothing here"], ["The cat sat on the mat.", "Totally different"])
    assert result.samples == 2
    assert result.score == pytest.approx((2 / 3 + 0) / 2)
    assert result.details == pytest.approx({"precision": 0.5, "recall": 0.25})


def test_flatten_nested_objects_and_lists() -> None:
    flat = flatten({"a": {"b": 1}, "items": [{"name": "X  y"}, 2], "empty": []})
    assert flat == {
        "a.b": ("number", 1),
        "items.0.name": ("string", "x y"),
        "items.1": ("number", 2),
        "empty": ("empty", "list"),
    }


REFERENCE = json.dumps(
    {"name": "Ada Lovelace", "age": 36, "address": {"city": "London", "zip": "W1"}, "tags": ["math", "poetry"]}
)


def test_json_kv_match_hand_computed() -> None:
    # Reference keys: name, age, address.city, address.zip, tags.0, tags.1 (6).
    partial = '{"name": "ada   LOVELACE", "age": 36.0, "address": {"city": "Paris"}, "tags": ["math"], "extra": 1}'
    # present: name, age, address.city, tags.0 -> recall 4/6; equal values: name, age (1 == 1.0), tags.0 -> 3/6.
    fenced = "```json\n" + REFERENCE + "\n```"
    result = json_kv_match([partial, "not json at all", fenced], [REFERENCE] * 3)
    assert result.samples == 3
    assert result.parse_failures == 1
    assert result.score == pytest.approx(((4 / 6 + 3 / 6) / 2 + 0 + 1) / 3)  # 19/36
    assert result.details == pytest.approx(
        {"key_recall": (4 / 6 + 0 + 1) / 3, "value_accuracy": (3 / 6 + 0 + 1) / 3, "whole_object_match": 1 / 3}
    )


@pytest.mark.parametrize(
    ("prediction", "key_recall", "value_accuracy"),
    [
        ('{"n": "1", "ok": 1}', 1.0, 0.0),  # a string is not a number, and 1 is not true
        ('{"n": 1.0, "ok": true}', 1.0, 1.0),
        ('{"n": 1}', 0.5, 0.5),
    ],
)
def test_json_value_types(prediction: str, key_recall: float, value_accuracy: float) -> None:
    result = json_kv_match([prediction], ['{"n": 1, "ok": true}'])
    assert (result.details["key_recall"], result.details["value_accuracy"]) == (key_recall, value_accuracy)


@pytest.mark.parametrize("prediction", ["[1, 2]", '{"n": NaN}', '{"n": 1} trailing', "```json\n{broken\n```"])
def test_json_parse_failures(prediction: str) -> None:
    result = json_kv_match([prediction], ['{"n": 1}'])
    assert (result.score, result.parse_failures) == (0.0, 1)


def test_json_reference_must_be_an_object() -> None:
    with pytest.raises(DataError, match="reference 0"):
        json_kv_match(['{"a": 1}'], ["[1]"])


def test_eval_loss_metric() -> None:
    result = eval_loss_metric(2.0, 10)
    assert (result.score, result.samples, result.parse_failures) == (-2.0, 10, 0)
    assert result.details == pytest.approx({"eval_loss": 2.0, "perplexity": math.exp(2.0)})
    assert eval_loss_metric(1e6, 1).details["perplexity"] == pytest.approx(math.exp(50))


@pytest.mark.parametrize("name", sorted(GENERATION_METRICS))
def test_empty_and_mismatched_inputs(name: str) -> None:
    empty = compute_metric(name, [], [])
    assert (empty.score, empty.samples, empty.parse_failures) == (0.0, 0, 0)
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        compute_metric(name, ["A"], ["A", "B"])


def test_dispatch() -> None:
    assert sorted(GENERATION_METRICS) == ["accuracy", "exact_match", "json_kv_match", "rougeLsum"]
    assert compute_metric("exact_match", ["x"], ["X"]).score == 1.0
    assert [max_new_tokens_hint(n) for n in ("accuracy", "exact_match", "json_kv_match", "rougeLsum")] == [
        16,
        64,
        512,
        512,
    ]
    with pytest.raises(ValueError, match="supported: accuracy, exact_match, json_kv_match, rougeLsum"):
        compute_metric("bleu", [], [])
    with pytest.raises(ValueError, match="eval_loss"):
        max_new_tokens_hint("eval_loss")


# ROUGE-Lsum as published numbers compute it: the reference package (Google's rouge-score, which Hugging Face's
# `evaluate` wraps) on summaries with one sentence per line. Hugging Face splits with nltk's punkt, a download;
# pysbd needs none. Shipped cases carry each summary's sentences as a person splits them.
ROUGE_CASES = json.loads((Path(__file__).parent / "data" / "rouge_lsum_cases.json").read_text())


@pytest.mark.parametrize("case", ROUGE_CASES, ids=[c["note"] for c in ROUGE_CASES])
def test_rouge_lsum_agrees_with_the_reference_package_on_sentence_split_summaries(case) -> None:
    from rouge_score import rouge_scorer

    prediction, reference = " ".join(case["prediction"]), " ".join(case["reference"])
    if case["note"].startswith("a summary written as lines"):
        prediction, reference = "\n".join(case["prediction"]), "\n".join(case["reference"])
    assert split_sentences(prediction) == case["prediction"] and split_sentences(reference) == case["reference"]
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    expected = scorer.score("\n".join(case["reference"]), "\n".join(case["prediction"]))["rougeLsum"].fmeasure
    assert rouge_lsum([prediction], [reference]).score == pytest.approx(expected, abs=1e-12)


def test_unsplit_summaries_would_score_as_rouge_l_which_published_lsum_numbers_are_not() -> None:
    from rouge_score import rouge_scorer

    case = ROUGE_CASES[0]  # sentences reordered: Lsum (sentence-level LCS union) credits them, plain LCS cannot
    prediction, reference = " ".join(case["prediction"]), " ".join(case["reference"])
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    unsplit = scorer.score(reference, prediction)["rougeLsum"].fmeasure
    assert rouge_lsum([prediction], [reference]).score > unsplit + 0.05
