"""`lora-ablation run` and `report` as a user runs them: real subprocesses, real trainer, real files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.s3 import s3_client
from support.trainer_data import choice_records, write_jsonl

pytestmark = pytest.mark.trainer


def ablation_file(tmp_path: Path, model: Path, train: Path, eval_: Path, bad_dataset: Path | None = None) -> Path:
    datasets = [
        {"name": "first", "train": f"file://{train}", "eval": f"file://{eval_}", "format": "prompt-completion",
         "metric": "accuracy", "maxEvalSamples": 12},
        {"name": "second", "train": f"file://{bad_dataset or train}", "eval": f"file://{eval_}",
         "format": "prompt-completion", "metric": "eval_loss", "maxEvalSamples": 12},
    ]  # fmt: skip
    manifest = {
        "apiVersion": "lora.ablation.dev/v1alpha1",
        "kind": "LoraAblation",
        "metadata": {"name": "mini"},
        "spec": {
            "baseModel": {"uri": f"file://{model}", "dtype": "float32"},
            "datasets": datasets,
            "search": {"moduleSets": [["o_proj"], ["fc2"]], "ranks": [4]},
            "training": {"maxSteps": 4, "batchSize": 8, "gradientAccumulation": 1, "maxSeqLength": 48},
            "latency": {"promptTokens": 8, "outputTokens": 4, "warmup": 1, "repeats": 2},
            "storage": {"uri": f"file://{tmp_path / 'results'}"},
        },
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def lora_ablation(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lora_ablation.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def mini(tiny_models, choice_data, tmp_path) -> Path:
    return ablation_file(tmp_path, tiny_models["llama"], choice_data["train"], choice_data["eval"])


@pytest.fixture(scope="module")
def mini_run(tiny_models, choice_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `run --parallel 2` of the mini ablation, which the tests reading its results share."""
    work = tmp_path_factory.mktemp("mini-run")
    path = ablation_file(work, tiny_models["llama"], choice_data["train"], choice_data["eval"])
    return work, lora_ablation("run", str(path), "--parallel", "2", "--logs", str(work / "logs"), cwd=work)


def _is_png(path: Path) -> bool:
    import matplotlib.image

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).shape[0] > 100


def test_run_writes_results_summary_and_plots(mini_run):
    work, done = mini_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = work / "results" / "default" / "mini"
    trials = [p for p in out.iterdir() if p.is_dir()]
    assert len(trials) == 6 and all((p / "result.json").exists() for p in trials)
    summary = json.loads((out / "summary.json").read_text())
    assert {c["config"] for c in summary["configs"]} == {"o_proj r4 lora", "fc2 r4 lora"}
    assert summary["recommendation"]["accuracyFirst"] in {"o_proj r4 lora", "fc2 r4 lora"}
    assert "## Leaderboard" in (out / "summary.md").read_text()
    assert _is_png(out / "pareto.png") and _is_png(out / "heatmap.png") and _is_png(out / "curves.png")
    assert len(summary["curves"]) == 4 and all(c["curve"]["steps"] == [1, 2, 3, 4] for c in summary["curves"])
    assert all([p["stage"] for p in c["evalPoints"]] == ["final"] for c in summary["curves"])
    assert "Leaderboard: default/mini" in done.stdout and "Recommendation: accuracy-first" in done.stdout
    assert done.stdout.count(" done ") == 6


def test_interrupted_run_resumes_only_the_missing_trials(mini, tmp_path):
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "lora_ablation.cli", "run", str(mini), "--parallel", "1", "--logs", str(logs)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "results" / "default" / "mini"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(out.glob("*/result.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted:" in output and "run the same command again" in output
    finished = sorted(p.parent.name for p in out.glob("*/result.json"))
    assert 2 <= len(finished) < 6
    stamps = {name: (out / name / "result.json").stat().st_mtime_ns for name in finished}

    again = lora_ablation("run", str(mini), "--parallel", "2", "--logs", str(logs), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"{6 - len(finished)} of 6 trials to run" in again.stdout
    assert again.stdout.count(" cached ") == len(finished)
    assert {name: (out / name / "result.json").stat().st_mtime_ns for name in finished} == stamps
    assert len(list(out.glob("*/result.json"))) == 6


def test_a_failing_trial_does_not_touch_the_others(tiny_models, choice_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(choice_records(1, 0)[0]) + "\n{broken\n")
    path = ablation_file(tmp_path, tiny_models["llama"], choice_data["train"], choice_data["eval"], bad_dataset=bad)
    done = lora_ablation("run", str(path), "--parallel", "2", "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.count("FAILED") == 2  # the two adapter trials of the bad dataset; its baseline trains nothing
    assert "bad.jsonl:2: not valid JSON" in done.stdout  # the trainer's own words, from its failure.json
    out = tmp_path / "results" / "default" / "mini"
    assert len(list(out.glob("*/result.json"))) == 4
    summary = json.loads((out / "summary.json").read_text())
    second = next(d for d in summary["datasets"] if d["name"] == "second")
    assert second["missing"] == ["fc2 r4 lora", "o_proj r4 lora"]
    failures = [json.loads(f.read_text()) for f in out.glob("*/failure.json")]
    assert [(f["exitCode"], f["recordedBy"]) for f in failures] == [(42, "trainer")] * 2
    bad.write_text(choice_data["train"].read_text())  # fixed: a new run is a new attempt at the failed trials
    again = lora_ablation("run", str(path), "--parallel", "2", "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:]
    assert again.stdout.count("cached") == 4 and len(list(out.glob("*/result.json"))) == 6
    assert not list(out.glob("*/failure.json"))


def test_report_reads_any_store_including_s3(mini_run, tmp_path, s3_bucket):
    work, done = mini_run
    assert done.returncode == 0, done.stdout[-2000:]
    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    local = work / "results" / "default" / "mini"
    for file in local.rglob("*"):
        if file.is_file():
            client.upload_file(str(file), bucket, f"ablations/default/mini/{file.relative_to(local)}")
    uri = f"s3://{bucket}/ablations/default/mini"
    table = lora_ablation("report", uri, "--endpoint", endpoint, "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Leaderboard: default/mini" in table.stdout
    assert _is_png(tmp_path / "plots" / "pareto.png")
    as_json = json.loads(lora_ablation("report", uri, "--endpoint", endpoint, "-o", "json", cwd=tmp_path).stdout)
    local_summary = json.loads((local / "summary.json").read_text())
    assert as_json["recommendation"] == local_summary["recommendation"]
    markdown = lora_ablation("report", f"file://{local}", "-o", "markdown", cwd=tmp_path).stdout
    assert markdown.startswith("# LoRA ablation `default/mini`")


def test_report_on_an_empty_prefix_exits_2(tmp_path):
    (tmp_path / "nothing").mkdir()
    done = lora_ablation("report", f"file://{tmp_path}/nothing", cwd=tmp_path)
    assert done.returncode == 2 and "nothing stored under this location" in done.stderr
    (tmp_path / "nothing" / "notes.txt").write_text("not a result")
    done = lora_ablation("report", f"file://{tmp_path}/nothing", cwd=tmp_path)
    assert done.returncode == 2 and "no trial results" in done.stderr


def _trial_files(logs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(logs.rglob("*.trial.json"))]


@pytest.mark.slow
def test_run_store_puts_everything_under_the_given_directory(mini, tmp_path):
    """`run --store file:///DIR`: trials, summary and plots land there, nothing at spec.storage.uri (issue 17)."""
    store, logs = tmp_path / "elsewhere", tmp_path / "logs"
    done = lora_ablation("run", str(mini), "--store", f"file://{store}", "--logs", str(logs), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "results").exists()  # the spec's storage.uri is untouched
    out = store / "default" / "mini"
    assert len(list(out.glob("*/result.json"))) == 6 and len(list(out.glob("*/adapter/*"))) > 0
    # [o_proj] and [fc2] alone: their presence is the dataset mean minus the other's, so no effect and no effects.png.
    assert {p.name for p in out.iterdir() if p.is_file()} == {"summary.json", "summary.md", "pareto.png", "heatmap.png",
                                                              "curves.png"}  # fmt: skip
    assert _is_png(out / "pareto.png") and _is_png(out / "heatmap.png")
    trials = _trial_files(logs)
    assert len(trials) == 6
    assert all(t["storage"]["uri"] == f"file://{out}/{t['name']}" for t in trials)
    assert f"summary: file://{out}/summary.json" in done.stdout and "NO RESULT" not in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["configs"]) == 2

    report = lora_ablation("report", f"file://{out}", "-o", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["recommendation"] == summary["recommendation"]

    again = lora_ablation("run", str(mini), "--store", str(store), "--logs", str(logs), cwd=tmp_path)  # a plain DIR
    assert again.returncode == 0, again.stdout[-3000:]
    assert "0 of 6 trials to run" in again.stdout and again.stdout.count(" cached ") == 6
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_run_store_s3_puts_everything_in_the_bucket(mini, tmp_path, s3_bucket):
    """`run --store s3://bucket/prefix --endpoint URL` on the moto server: nothing lands on the local disk."""
    endpoint, bucket = s3_bucket
    logs = tmp_path / "logs"
    store = f"s3://{bucket}/team/ablations"
    done = lora_ablation("run", str(mini), "--store", store, "--endpoint", endpoint, "--logs", str(logs), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    client = s3_client(endpoint)
    keys = [o["Key"] for o in client.get_paginator("list_objects_v2").paginate(Bucket=bucket).search("Contents")]
    prefix = "team/ablations/default/mini/"
    assert all(key.startswith(prefix) for key in keys)
    assert sum(key.endswith("/result.json") for key in keys) == 6
    assert {prefix + name for name in ("summary.json", "summary.md", "pareto.png", "heatmap.png")} <= set(keys)
    trials = _trial_files(logs)
    assert all(t["storage"] == {"uri": f"{store}/default/mini/{t['name']}", "endpoint": endpoint} for t in trials)
    assert f"summary: {store}/default/mini/summary.json" in done.stdout

    table = lora_ablation("report", f"{store}/default/mini", "--endpoint", endpoint, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Leaderboard: default/mini" in table.stdout


def test_run_without_the_quickstart_model_says_how_to_build_it(tmp_path):
    root = Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((root / "examples" / "quickstart.yaml").read_text())
    manifest["spec"]["baseModel"]["uri"] = f"file://{tmp_path}/models/tiny-llama"
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(manifest))
    done = lora_ablation("run", str(path), cwd=root)
    assert done.returncode == 2
    assert "no config.json there (build it with: python -m lora_ablation_demo.quickstart examples)" in done.stderr


def test_quickstart_data_are_what_the_generator_writes(tmp_path):
    from lora_ablation_demo.quickstart import write_datasets

    write_datasets(tmp_path)
    root = Path(__file__).resolve().parents[2] / "examples" / "data"
    for task in ("reverse", "shift"):
        for split in ("train", "eval"):
            assert (tmp_path / task / f"{split}.jsonl").read_text() == (root / task / f"{split}.jsonl").read_text()
    assert write_jsonl  # the shared helper stays importable for the data generator's callers


def test_run_prints_the_running_trials_progress(mini, tmp_path, monkeypatch):
    manifest = yaml.safe_load(mini.read_text())
    manifest["spec"]["datasets"] = manifest["spec"]["datasets"][:1]
    manifest["spec"]["search"]["moduleSets"] = [["o_proj"]]
    manifest["spec"]["training"]["maxSteps"] = 12
    mini.write_text(yaml.safe_dump(manifest))
    monkeypatch.setenv("LORA_ABLATION_PROGRESS_SECONDS", "0.05")  # the trainer writes and the runner reads as often
    done = lora_ablation("run", str(mini), "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trial = re.compile(r"^    (\S+): step (\d+)/12 \((\d+)%\) loss \d+\.\d{4}, \d+ tok/s, ETA \d+s", re.M)
    seen = trial.findall(done.stdout)
    assert seen, done.stdout
    steps = [int(step) for _, step, _ in seen]
    assert steps == sorted(steps) and steps[-1] == 12  # the trainer's last write, read before the trial ended
    assert all("base" not in name for name, _, _ in seen)  # the baseline trains nothing and reports nothing
    assert re.search(r"^    progress \d+\.\d%, ETA \d+", done.stdout, re.M), done.stdout
