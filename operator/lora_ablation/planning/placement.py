"""How a trial is placed when it spans nodes (execution.nodes > 1): what `plan` prints and its JSON holds."""

from __future__ import annotations

from typing import Any

from lora_ablation.api.execution import ExecutionSpec


def multi_node_placement(execution: ExecutionSpec) -> dict[str, Any] | None:
    """How each trial runs when it spans nodes (execution.nodes > 1), and why; None for a one-pod trial."""
    if execution.nodes <= 1:
        return None
    engine = execution.multi_node.engine if execution.multi_node and execution.multi_node.engine else None
    gpus = execution.resources.gpus
    return {
        "nodes": execution.nodes,
        "gpusPerNode": gpus,
        "engine": engine or "JobSet",
        "engineFrom": "execution.multiNode.engine" if engine else "the operator's default (chart multiNode.engine)",
        "why": f"execution.nodes is {execution.nodes}: torchrun spans {execution.nodes} pods of {max(1, gpus)} "
        f"process(es) each ({execution.nodes * max(1, gpus)} in all), started and restarted together",
    }


def multi_node_line(execution: ExecutionSpec) -> str | None:
    placement = multi_node_placement(execution)
    if placement is None:
        return None
    return (f"Each trial runs on {placement['nodes']} nodes x {placement['gpusPerNode']} GPUs via "
            f"{placement['engine']} ({placement['engineFrom']}): {placement['why']}.")  # fmt: skip
