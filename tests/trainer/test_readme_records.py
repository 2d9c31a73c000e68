"""README "Dataset record shapes": every example line it shows is read by the trainer's own loader, in the format
the text names for it, and together they cover every format and image parts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lora_ablation.api.spec import DatasetFormat
from lora_ablation_trainer.data import load_examples

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_blocks() -> list[tuple[str, str]]:
    """(format, block) for each ```jsonl block of the section, the format the last `format: X` before it names."""
    text = README.read_text()
    assert "### Dataset record shapes\n" in text, "README has no 'Dataset record shapes' section"
    section = text.split("### Dataset record shapes\n", 1)[1].split("\n### ", 1)[0]
    blocks = []
    for match in re.finditer(r"```jsonl\n(.*?)```", section, re.DOTALL):
        formats = re.findall(r"`format: ([\w-]+)`", section[: match.start()])
        assert formats, f"no `format: X` before {match[1][:60]!r}"
        blocks.append((formats[-1], match[1]))
    return blocks


def test_every_documented_record_parses_with_the_trainers_loader(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    blocks = documented_blocks()
    assert {fmt for fmt, _ in blocks} == {f.value for f in DatasetFormat}
    with_images = 0
    for index, (fmt, block) in enumerate(blocks):
        lines = [line for line in block.splitlines() if line.strip()]
        assert all(isinstance(json.loads(line), dict) for line in lines)
        path = tmp_path / f"block{index}.jsonl"
        path.write_text(block)
        images = '"type": "image"' in block
        # Image parts are rendered by a vision-language model's processor: the text-only tiny model checks their
        # structure (tokenizer None), as the preflight does.
        examples = load_examples(path, fmt, None if images else tokenizer)
        assert len(examples) == len(lines)
        for example in examples:
            assert example.completion.strip(), (fmt, example)
            if fmt == "chat" and not images:
                assert example.prompt, "the chat template rendered the conversation"
        if images:
            with_images += 1
            assert all(example.images for example in examples)
    assert with_images, "the section shows no image parts"
