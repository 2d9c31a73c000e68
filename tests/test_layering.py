"""The core's structure as the import graph has it: no module reaches itself through its imports (the planner,
sharding and the memory estimate once did, and so did the two storage backends), and the rooms stay layered as
.importlinter says (lint-imports checks that in CI; this keeps the cycle check next to the code)."""

from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("lora_ablation", "lora_ablation_operator")


def test_no_module_imports_itself_through_others(graph):
    cycles = []
    for module in sorted(graph.modules):
        if not module.startswith(("lora_ablation.", "lora_ablation_operator.")):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(module + ".") or module.startswith(imported + "."):
                continue  # a package and its own modules
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and not any(m.startswith(module + ".") for m in chain):
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(cycles)


def test_the_core_never_names_the_trainer_or_the_operator(graph):
    for module in graph.modules:
        if module.startswith("lora_ablation.") or module == "lora_ablation":
            imported = graph.find_modules_directly_imported_by(module)
            assert not {m for m in imported if m.startswith(("lora_ablation_trainer", "lora_ablation_operator"))}
