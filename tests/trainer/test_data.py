"""Dataset parsing and encoding: the loss sees only completions, and bad lines are named."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lora_ablation_trainer.data import (
    IGNORE_INDEX,
    Example,
    chat_template_problem,
    encode,
    iterate_micro_batches,
    load_examples,
    micro_batch_order,
    read_jsonl,
)
from lora_ablation_trainer.errors import DataError, PermanentTrialError


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["llama"])


def test_loss_only_on_completion_and_eos(tokenizer):
    feature = encode(Example("cue a options", " B"), tokenizer, 64)
    prompt_len = 1 + len(tokenizer("cue a options", add_special_tokens=False)["input_ids"])
    completion = tokenizer(" B", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert feature["input_ids"][0] == tokenizer.bos_token_id
    assert feature["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert feature["labels"][prompt_len:] == completion
    assert feature["input_ids"][prompt_len:] == completion


def test_truncation_drops_prompt_tokens_first(tokenizer):
    long_prompt = "cue a options " * 40
    feature = encode(Example(long_prompt, " B"), tokenizer, 16)
    assert len(feature["input_ids"]) == 16
    assert feature["input_ids"][0] == tokenizer.bos_token_id
    assert feature["labels"][-1] == tokenizer.eos_token_id  # the answer survives
    assert (
        sum(1 for x in feature["labels"] if x != IGNORE_INDEX)
        == len(tokenizer(" B", add_special_tokens=False)["input_ids"]) + 1
    )


def test_text_format_trains_on_everything(tokenizer, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "cue a"}\n')
    (example,) = load_examples(path, "text", tokenizer)
    feature = encode(example, tokenizer, 64)
    assert feature["labels"][0] == IGNORE_INDEX  # only BOS is masked
    assert all(x != IGNORE_INDEX for x in feature["labels"][1:])


def test_chat_format_uses_the_chat_template(tokenizer, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "B"}]}\n')
    (example,) = load_examples(path, "chat", tokenizer)
    assert example.prompt == "user: hi\nassistant: " and example.completion == "B"


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"prompt": "a", "completion": "b"}\n\n[1, 2]\n', "prompt-completion", ":3: expected a JSON object"),
        ('{"prompt": "a"}\n', "prompt-completion", ":1: field 'completion' must be a string"),
        ('{"messages": []}\n', "chat", ":1: field 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "chat", "last message must be the assistant's"),
        ('{"messages": [{"content": "x"}]}\n', "chat", "messages[0] must have string 'role' and 'content'"),
        ("\n\n", "text", "no records"),
    ],
)
def test_bad_records_name_file_and_line(tokenizer, tmp_path, content, fmt, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        load_examples(path, fmt, tokenizer)
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert isinstance(caught.value, PermanentTrialError)


CHAT_LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "B"}]}\n'


def test_chat_records_need_a_chat_template(tokenizer, no_template_model, tmp_path):
    bare = AutoTokenizer.from_pretrained(no_template_model)
    assert chat_template_problem(tokenizer, "talk", ["s3://b/train.jsonl"]) is None
    problem = chat_template_problem(bare, "talk", ["s3://b/train.jsonl", "s3://b/eval.jsonl"])
    assert problem.startswith("dataset 'talk' (s3://b/train.jsonl, s3://b/eval.jsonl) has format 'chat', but ")
    path = tmp_path / "c.jsonl"
    path.write_text(CHAT_LINE)
    with pytest.raises(DataError, match=r"c\.jsonl:1: format 'chat' needs a chat template, but the tokenizer has none"):
        load_examples(path, "chat", bare)  # a DataError (exit 42) even for a caller that did not check first
    (unrendered,) = load_examples(path, "chat", None)  # the preflight checks the records without a template
    assert unrendered.completion == "B"


def test_a_chat_template_that_rejects_the_messages_names_the_line(no_template_model, tmp_path):
    strict = AutoTokenizer.from_pretrained(no_template_model)
    strict.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    path = tmp_path / "c.jsonl"
    path.write_text(CHAT_LINE + CHAT_LINE)
    with pytest.raises(DataError, match=r"c\.jsonl:1: the tokenizer's chat template rejects .*roles must alternate"):
        load_examples(path, "chat", strict)


def test_read_jsonl_limit_and_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')
    records = read_jsonl(path, limit=2)
    assert [(r["a"], r["_line"]) for r in records] == [(1, 1), (2, 3)]


def test_micro_batch_order_is_deterministic_and_resumable():
    assert micro_batch_order(10, 3, seed=1, epoch=0) == micro_batch_order(10, 3, seed=1, epoch=0)
    assert micro_batch_order(10, 3, seed=1, epoch=0) != micro_batch_order(10, 3, seed=1, epoch=1)
    full = iterate_micro_batches([{}] * 10, 3, seed=7)
    first_nine = [next(full) for _ in range(9)]  # crosses two epoch boundaries (4 batches per epoch)
    resumed = iterate_micro_batches([{}] * 10, 3, seed=7, start=5)
    assert [next(resumed) for _ in range(4)] == first_nine[5:9]
