"""The Argo CD health check, run by a real Lua 5.1 interpreter (Argo CD's gopher-lua speaks 5.1) on status
fixtures shaped like the operator writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

lua51 = pytest.importorskip("lupa.lua51", reason="lupa provides the Lua interpreter")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "gitops" / "argocd" / "health.lua").read_text()


def health(obj: dict) -> dict:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


def ablation(conditions: list[tuple[str, str, str, str]] | None, progress: str = "7/12", generation: int = 1,
             observed: int = 1) -> dict:  # fmt: skip
    obj: dict = {"metadata": {"name": "study", "generation": generation}}
    if conditions is not None:
        obj["status"] = {
            "observedGeneration": observed,
            "progress": progress,
            "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions],
        }
    return obj


def test_no_status_yet_is_progressing():
    assert health(ablation(None)) == {"status": "Progressing", "message": "Waiting for the operator to reconcile"}


def test_running_trials_report_progress():
    obj = ablation(
        [("Ready", "False", "TrialsRunning", "7/12 trials done"), ("Suspended", "False", "NotSuspended", "")]
    )
    assert health(obj) == {"status": "Progressing", "message": "7/12 trials done"}


def test_completed_is_healthy_with_the_answer():
    message = "12/12 trials done; accuracy-first all r16 lora, balanced o_proj r16 lora"
    assert health(ablation([("Ready", "True", "Completed", message)], "12/12")) == {
        "status": "Healthy",
        "message": message,
    }


@pytest.mark.parametrize("reason", ["InvalidSpec", "Forbidden", "PreflightFailed", "TooManyFailedTrials"])
def test_terminal_failures_are_degraded(reason):
    result = health(ablation([("Ready", "False", reason, "spec.search.ranks[0]: must be >= 1")]))
    assert result["status"] == "Degraded" and result["message"].startswith(reason + ":")


def test_suspended():
    obj = ablation([("Ready", "False", "TrialsRunning", ""), ("Suspended", "True", "SuspendedBySpec", "")], "3/12")
    assert health(obj) == {"status": "Suspended", "message": "Suspended: 3/12 trials done"}


def test_unobserved_spec_change_is_progressing_even_if_ready():
    obj = ablation([("Ready", "True", "Completed", "done")], "12/12", generation=3, observed=2)
    assert health(obj)["status"] == "Progressing"


def test_argocd_cm_snippet_embeds_the_same_script():
    config = yaml.safe_load((ROOT / "gitops" / "argocd" / "argocd-cm-health.yaml").read_text())
    embedded = config["data"]["resource.customizations.health.lora.ablation.dev_LoraAblation"]
    assert embedded.strip() == SCRIPT.strip()
