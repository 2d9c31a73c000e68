"""Several trials in one process share more than the base model's weights: what each trial reports and resumes must
still be its own (issue 25's batch-path defects). Real tiny models, run through the trainer's own entry points."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import numpy
import pytest
import torch
from transformers import AutoTokenizer

from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation.storage.open import open_store
from lora_ablation_trainer.adapters import attach_adapter, load_model, make_optimizer, resolve_targets
from lora_ablation_trainer.data import encode, load_examples
from lora_ablation_trainer.run import run_batch
from lora_ablation_trainer.train import CHECKPOINT, train_adapter
from lora_ablation_trainer.trial import Clock
from support.s3 import s3_client
from support.trainer_data import long_records, trial_spec, write_jsonl

pytestmark = pytest.mark.trainer


def test_a_later_trial_of_a_batch_reports_its_own_peak_memory(tiny_models, choice_data, tmp_path):
    """The first trial holds far more activations than the second: the second's peak must not be the first's."""
    long = write_jsonl(tmp_path / "long.jsonl", long_records(64, 5, 300))
    heavy = trial_spec(tiny_models["llama"], long, choice_data["eval"], f"file://{tmp_path}/heavy", name="heavy",
                       latency={"enabled": False}, modules=["qkv", "o_proj", "fc1", "fc2"],
                       training={"maxSteps": 2, "batchSize": 64, "maxSeqLength": 1024})  # fmt: skip
    light = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/light",
                       name="light", latency={"enabled": False}, modules=["o_proj"],
                       training={"maxSteps": 2, "batchSize": 1, "maxSeqLength": 32})  # fmt: skip
    first, second = run_batch(TrialBatch(trials=[heavy, light]))
    assert isinstance(first, TrialResult) and isinstance(second, TrialResult)
    heavy_peak, light_peak = first.train.peak_memory_bytes, second.train.peak_memory_bytes
    assert heavy_peak and light_peak, (heavy_peak, light_peak)
    # The heavy trial's activations alone are hundreds of MB; the light one's a few MB over the resident base.
    assert light_peak < heavy_peak - 100 * 2**20, (heavy_peak, light_peak)


def _tiny_training(tiny_models, choice_data, tmp_path, steps: int = 4, **training):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": steps, "batchSize": 4, "loraDropout": 0.1, **training})  # fmt: skip
    model = load_model(tiny_models["llama"], torch.float32, torch.device("cpu"))
    model = attach_adapter(spec, resolve_targets(spec, tiny_models["llama"]), model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    examples = load_examples(choice_data["train"], "prompt-completion", tokenizer, limit=64)
    features = [encode(e, tokenizer, 64) for e in examples]
    store = open_store(spec.storage.uri)

    def train(stop_at=None):
        optimizer = make_optimizer(model, spec)
        return train_adapter(model, features, spec.training, optimizer, tokenizer.pad_token_id, torch.device("cpu"),
                             store, stop_at=stop_at)  # fmt: skip

    return train, store


def _scramble() -> None:
    torch.manual_seed(12345)
    random.seed(12345)
    numpy.random.seed(12345)


def test_a_checkpoint_round_trips_every_rng_state(tiny_models, choice_data, tmp_path):
    train, store = _tiny_training(tiny_models, choice_data, tmp_path)
    random.random(), numpy.random.random()  # the global generators away from any seed
    train(stop_at=2)  # checkpointed at step 2, the last thing the loop does
    written = (torch.get_rng_state(), random.getstate(), numpy.random.get_state())
    payload = torch.load(io.BytesIO(store.read_bytes(CHECKPOINT)), map_location="cpu", weights_only=False)
    assert ("cuda_rng" in payload) == torch.cuda.is_available()
    _scramble()
    resumed = train(stop_at=2)  # resumes at step 2 and trains no further: the generators are as restored
    assert resumed.resumed_from_step == 2
    assert torch.equal(torch.get_rng_state(), written[0])
    assert random.getstate() == written[1]
    kind, keys, *rest = numpy.random.get_state()
    assert kind == written[2][0] and numpy.array_equal(keys, written[2][1]) and tuple(rest) == written[2][2:]
    if torch.cuda.is_available():
        restored = torch.cuda.get_rng_state_all()
        assert all(torch.equal(a, b) for a, b in zip(restored, payload["cuda_rng"], strict=True))


def test_a_checkpoint_from_before_the_new_rng_keys_still_resumes(tiny_models, choice_data, tmp_path):
    train, store = _tiny_training(tiny_models, choice_data, tmp_path)
    train(stop_at=2)
    payload = torch.load(io.BytesIO(store.read_bytes(CHECKPOINT)), map_location="cpu", weights_only=False)
    old = {key: value for key, value in payload.items() if key not in {"python_rng", "numpy_rng", "cuda_rng"}}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    store.write_bytes(CHECKPOINT, buffer.getvalue())  # as the trainer before this change wrote it
    _scramble()
    cpu_state = old["rng"]
    resumed = train(stop_at=2)
    assert resumed.resumed_from_step == 2 and torch.equal(torch.get_rng_state(), cpu_state)
    finished = train()
    assert finished.steps == 4 and finished.resumed_from_step == 2


def test_a_multi_node_trial_costs_every_node(monkeypatch):
    clock = Clock(wall=time.perf_counter() - 10.0)
    alone = clock.figures(torch.device("cpu"))
    monkeypatch.setenv("PET_NNODES", "2")  # as a multi-node trial's pods are started
    two = clock.figures(torch.device("cpu"))
    assert alone["compute_seconds"] == pytest.approx(10.0, abs=0.5)
    assert two["compute_seconds"] == pytest.approx(20.0, abs=1.0)
    assert two["gpu_seconds"] == alone["gpu_seconds"] == 0.0  # no GPU here: a CPU trial costs its nodes' time


def test_the_base_download_is_charged_once_to_the_first_trial(tiny_models, choice_data, tmp_path, s3_bucket):
    """The first trial's clock runs while the base model is fetched from S3; the second's does not, and nothing is
    charged twice. The fetch is made slow at the network boundary (each request of the base's files waits DELAY in
    botocore's before-send hook), so the first trial's extra cost is at least the time the requests waited."""
    import boto3

    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    for file in Path(tiny_models["llama"]).iterdir():
        client.upload_file(str(file), bucket, f"models/llama/{file.name}")
    delay, waited = 0.4, []

    def slow(request, **_):
        if "/models/llama/" in request.url:
            time.sleep(delay)
            waited.append(delay)

    boto3.setup_default_session()  # the store's clients are made with it
    boto3.DEFAULT_SESSION.events.register("before-send.s3", slow)

    def spec(name):
        trial = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{name}",
                           name=name, latency={"enabled": False}, training={"maxSteps": 1},
                           storage_options={"endpoint": endpoint})  # fmt: skip
        trial.base_model.uri = f"s3://{bucket}/models/llama/"
        return trial

    try:
        started = time.perf_counter()
        results = run_batch(TrialBatch(trials=[spec("one"), spec("two")]))
        wall = time.perf_counter() - started
    finally:
        boto3.DEFAULT_SESSION = None
    charged = [r.compute_seconds for r in results]
    assert len(waited) >= len(list(Path(tiny_models["llama"]).iterdir())), "every base file was fetched once"
    assert sum(charged) <= wall + 0.01, "nothing is charged twice"
    # The trials are alike but for the fetch; the first one's cost holds all of the time the fetch waited.
    assert charged[0] - charged[1] >= sum(waited) * 0.9, (charged, sum(waited))
