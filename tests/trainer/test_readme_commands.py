"""The README's command list, run exactly as written, so a command or flag it shows cannot silently stop working.

Every line of the ```bash block under "## Commands" runs in a scratch copy of the repository's examples/,
after the demo's first step has built the tiny model there, through a `lora-ablation` on PATH. A line with
bracketed options runs bare, then with every option filled in (once per alternative of `a|b|c`). The only
substitutions are the placeholders below; `s3://bucket/...` is a bucket on the moto server, reached through
$AWS_ENDPOINT_URL_S3 as a user's would be. One module-scoped run of everything is shared by the assertions.
Takes two quickstart runs (12 tiny trials each): a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.s3 import s3_client

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "readme-commands"
PLACEHOLDERS = {"N": "2", "DIR": "plots", "s3://bucket/prefix": f"s3://{BUCKET}/prefix"}
OPTIONAL = re.compile(r"\[([^\[\]]+)\]")


def readme_commands(readme: str) -> list[str]:
    """The command lines of the first ```bash block under '## Commands', comments stripped."""
    section = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line]


def _fill(option: str, choice: int) -> str:
    words = []
    for word in option.split():
        alternatives = word.split("|")
        word = alternatives[choice % len(alternatives)]
        words.append(PLACEHOLDERS.get(word, word))
    return " ".join(words)


def invocations(line: str) -> list[str]:
    """The line without its [options], then with all of them, once per alternative of an `a|b|c`."""
    squeeze = lambda text: " ".join(text.split())  # noqa: E731
    options = OPTIONAL.findall(line)
    found = [squeeze(OPTIONAL.sub("", line))]
    width = max((len(word.split("|")) for option in options for word in option.split()), default=0)
    for choice in range(width):
        found.append(squeeze(OPTIONAL.sub(lambda m, c=choice: _fill(m.group(1), c), line)))
    unfilled = [w for text in found for w in text.split() if w.isupper() and not w.startswith("-")]
    assert not unfilled, f"README placeholder(s) {unfilled} in {line!r}: add them to PLACEHOLDERS"
    return list(dict.fromkeys(found))


COMMANDS = [c for line in readme_commands((ROOT / "README.md").read_text()) for c in invocations(line)]


def _result_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, s3_endpoint) -> dict:
    """Build the demo's model in a scratch copy of examples/, then run every README command in order."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("models"))
    bin_dir = work / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lora-ablation"  # what `pip install` puts on PATH, bound to this interpreter
    entry = "import sys\nfrom lora_ablation.cli import console_main\nsys.exit(console_main())\n"
    shim.write_text(f"#!{sys.executable}\n{entry}")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "AWS_ENDPOINT_URL_S3": s3_endpoint}
    s3_client(s3_endpoint).create_bucket(Bucket=BUCKET)
    started = time.monotonic()
    built = subprocess.run(
        [sys.executable, "-m", "lora_ablation_demo.quickstart", "examples"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    done, local_after = {}, {}
    for command in COMMANDS:
        done[command] = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        if command.startswith("lora-ablation run"):
            local_after[command] = _result_files(work / "ablation-results")
    return {"work": work, "done": done, "local_after": local_after, "seconds": time.monotonic() - started}


def test_the_readme_lists_the_commands_this_test_runs():
    lines = readme_commands((ROOT / "README.md").read_text())
    assert [line.split()[1] for line in lines] == [
        "run", "report", "validate", "plan", "plan", "inspect-model", "suggest", "crd", "--version",
    ]  # fmt: skip
    assert "lora-ablation run examples/quickstart.yaml --store s3://readme-commands/prefix --parallel 2" in COMMANDS
    assert "lora-ablation inspect-model examples/models/tiny-llama --rank 16 -o json --source catalog" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(readme_run, command):
    done = readme_run["done"][command]
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), command
    assert "Traceback" not in done.stderr, command


def test_run_as_written_fills_the_specs_store(readme_run):
    out = readme_run["work"] / "ablation-results" / "default" / "quickstart"
    done = readme_run["done"]["lora-ablation run examples/quickstart.yaml"]
    assert "12 of 12 trials to run" in done.stdout and done.stdout.count(" done ") == 12
    assert len(list(out.glob("*/result.json"))) == 12
    assert all((out / name).is_file() for name in ("summary.json", "summary.md", "pareto.png", "heatmap.png"))


def test_run_with_store_and_parallel_goes_to_the_bucket_only(readme_run, s3_endpoint):
    command = f"lora-ablation run examples/quickstart.yaml --store s3://{BUCKET}/prefix --parallel 2"
    done = readme_run["done"][command]
    assert "12 of 12 trials to run, 2 at a time" in done.stdout  # nothing read from the spec's store
    assert f"summary: s3://{BUCKET}/prefix/default/quickstart/summary.json" in done.stdout
    pages = s3_client(s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="prefix/")
    keys = [item["Key"] for item in pages.search("Contents")]
    assert sum(key.endswith("/result.json") for key in keys) == 12
    base = "prefix/default/quickstart/"
    assert {base + name for name in ("summary.json", "summary.md", "pareto.png", "heatmap.png")} <= set(keys)
    before, after = (
        readme_run["local_after"]["lora-ablation run examples/quickstart.yaml"],
        readme_run["local_after"][command],
    )
    assert after == before  # the spec's file store is left exactly as the first run wrote it


def test_report_reads_what_run_wrote(readme_run):
    work, done = readme_run["work"], readme_run["done"]
    prefix = "lora-ablation report file://ablation-results/default/quickstart"
    stored = json.loads((work / "ablation-results" / "default" / "quickstart" / "summary.json").read_text())
    as_json = json.loads(done[f"{prefix} -o json --plots plots"].stdout)
    assert as_json["recommendation"] == stored["recommendation"]
    assert done[f"{prefix} -o markdown --plots plots"].stdout.startswith("# LoRA ablation `default/quickstart`")
    assert "Leaderboard: default/quickstart" in done[prefix].stdout
    assert (work / "plots" / "pareto.png").is_file() and (work / "plots" / "heatmap.png").is_file()


def test_the_other_commands_say_what_the_readme_says(readme_run):
    done = readme_run["done"]
    examples = len(list((ROOT / "examples").glob("*.yaml")))
    assert done["lora-ablation validate examples/*.yaml"].stdout.count(" is valid") == examples
    assert len(json.loads(done["lora-ablation plan examples/module-study.yaml -o json"].stdout)["trials"]) == 40
    inspect = "lora-ablation inspect-model examples/models/tiny-llama --rank 16 -o json"
    assert json.loads(done[f"{inspect} --source tree"].stdout)["source"] == "module tree"
    assert json.loads(done[f"{inspect} --source catalog"].stdout)["source"] == "catalog"
    assert done["lora-ablation crd"].stdout == (ROOT / "crds" / "lora.ablation.dev_loraablations.yaml").read_text()
    assert done["lora-ablation --version"].stdout.startswith("lora-ablation ")


def test_the_quickstart_adapters_learn_something_measurable(readme_run):
    # Every score at 0 means evaluation is broken, not that LoRA failed (a prompt budget once cut each eval
    # prompt to one token): on this toy task the adapters that see attention inputs learn part of a skill.
    work = readme_run["work"]
    results = sorted((work / "ablation-results" / "default" / "quickstart").glob("*/result.json"))
    scores = {p.parent.name: json.loads(p.read_text())["eval"]["score"] for p in results}
    assert len(scores) == 12 and max(scores.values()) > 0.05, scores


def readme_demo_figures(readme: str) -> dict[tuple[str, str], float]:
    """(dataset, configuration) -> score, from the README's table of the demo's figures."""
    lines = [line for line in readme.splitlines() if line.startswith("| ")]
    header = next(line for line in lines if line.startswith("| dataset | all |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    rows = [line for line in lines[lines.index(header) + 1 :] if not line.startswith("|---")][:2]
    figures = {}
    for row in rows:
        dataset, *cells = [cell.strip() for cell in row.strip("|").split("|")]
        figures.update({(dataset, column): float(cell) for column, cell in zip(columns, cells, strict=True)})
    return figures


def test_the_readme_demo_figures_are_what_the_demo_gives(readme_run):
    # The run is deterministic on one machine; 0.05 (5 of 100 prompts) absorbs float differences between CPUs, and
    # still catches figures gone stale (they once had, by up to 0.2, unnoticed).
    figures = readme_demo_figures((ROOT / "README.md").read_text())
    assert len(figures) == 12, figures
    results = (readme_run["work"] / "ablation-results" / "default" / "quickstart").glob("*/result.json")
    measured = {}
    for path in results:
        doc = json.loads(path.read_text())
        config = "base" if doc["variant"] == "none" else "+".join(doc["modules"])
        measured[(doc["dataset"], config)] = doc["eval"]["score"]
    assert set(measured) == set(figures)
    off = {key: (figures[key], round(measured[key], 4)) for key in figures if abs(figures[key] - measured[key]) > 0.05}
    assert not off, f"README figures (stated, measured) that moved: {off}; update the README's table"
    for dataset in ("shift", "reverse"):  # the sentence above the table: attention inputs learn most
        attention, others = (
            (measured[(dataset, c)] for c in ("all", "qkv")),
            (measured[(dataset, c)] for c in ("o_proj", "fc2")),
        )
        assert min(attention) > max(others), dataset
