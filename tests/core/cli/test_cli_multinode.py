"""`plan` says how a trial that spans nodes runs, and why."""

from __future__ import annotations

import json

import yaml

from conftest import minimal_manifest
from lora_ablation.api.execution import ExecutionSpec
from lora_ablation.cli import main
from lora_ablation.planning.placement import multi_node_line, multi_node_placement


def test_one_node_says_nothing_more():
    assert multi_node_placement(ExecutionSpec()) is None and multi_node_line(ExecutionSpec()) is None


def test_nodes_and_engine_are_explained():
    wide = {"nodes": 4, "resources": {"gpus": 8}, "multiNode": {"engine": "TrainJob"}}
    execution = ExecutionSpec.model_validate(wide)
    placement = multi_node_placement(execution)
    assert placement["nodes"] == 4 and placement["gpusPerNode"] == 8 and placement["engine"] == "TrainJob"
    assert "32 in all" in placement["why"] and placement["engineFrom"] == "execution.multiNode.engine"
    assert multi_node_line(execution).startswith("Each trial runs on 4 nodes x 8 GPUs via TrainJob")


def test_plan_prints_it(tmp_path, capsys):
    manifest = minimal_manifest(execution={"nodes": 2, "resources": {"gpus": 4}})
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Each trial runs on 2 nodes x 4 GPUs via JobSet (the operator's default" in out
    assert main(["plan", str(path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["multiNode"]["nodes"] == 2
