"""Multi-node trials end to end: the operator (`kopf run`) with multi-node trials enabled, against the emulated API
server serving the published JobSet or TrainJob CRD (it checks every object against that schema, as the API server
does) and moto S3. The test plays the engine's controller (patching status) and the trainer (writing result.json)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes
import pytest
import yaml

from support.cluster import manifest, pass_preflight, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
ENGINES = {  # CRD file, (group, version, plural), its success condition
    "JobSet": ("jobset.x-k8s.io_jobsets.yaml", ("jobset.x-k8s.io", "v1alpha2", "jobsets"), "Completed"),
    "TrainJob": ("trainer.kubeflow.org_trainjobs.yaml", ("trainer.kubeflow.org", "v1alpha1", "trainjobs"), "Complete"),
}
ENGINE = "JobSet"


@pytest.fixture
def engine(request) -> str:
    return getattr(request, "param", ENGINE)


@pytest.fixture
def cluster(operated, kube_api, engine):
    kubernetes.config.load_kube_config()
    crd = yaml.safe_load((CRDS / ENGINES[engine][0]).read_text())
    kubernetes.client.ApiextensionsV1Api().create_custom_resource_definition(crd)
    cluster = operated(multi_node_enabled="true", multi_node_engine=engine)
    cluster.engine = engine
    return cluster


def jobsets(cluster) -> dict[str, dict]:
    """The engine's objects (JobSets or TrainJobs) by name."""
    items = cluster.custom.list_namespaced_custom_object(*ENGINES[cluster.engine][1][:2], "default",
                                                         ENGINES[cluster.engine][1][2])["items"]  # fmt: skip
    return {j["metadata"]["name"]: j for j in items}


def contract_env(body: dict) -> list[dict]:
    if body["kind"] == "TrainJob":
        return body["spec"]["trainer"]["env"]
    return body["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]


def complete(cluster, body: dict, score: float) -> None:
    """Write the trial's result.json where its contract says (as the trainer on node 0 would), then finish it."""
    as_job = {"spec": {"template": {"spec": {"containers": [{"env": contract_env(body)}]}}}}  # what Cluster reads
    cluster.put_result(as_job, json.dumps(cluster.result_doc(as_job, score)))
    finish(cluster, body["metadata"]["name"], ENGINES[cluster.engine][2], "AllJobsCompleted", "completed")


def finish(cluster, name: str, kind: str, reason: str = "", message: str = "") -> None:
    condition = {"type": kind, "status": "True", "reason": reason or kind, "message": message or kind,
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    status = {"conditions": [condition]}
    group, version, plural = ENGINES[cluster.engine][1]
    cluster.custom.patch_namespaced_custom_object_status(group, version, "default", plural, name, {"status": status})


def trial_state(cluster, ablation: str, trial: str) -> dict:
    return next((t for t in cluster.status(ablation).get("trialStatuses") or [] if t["name"] == trial), {})


@pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
def test_two_node_trials_succeed_fail_and_survive_a_restart(cluster, kube_api, engine):
    spec = manifest("wide", cluster.bucket, search={"moduleSets": [["o_proj"], ["all"]]})["spec"]
    spec["execution"] = {"nodes": 2, "parallelism": 3, "maxFailedTrials": 1, "resources": {"gpus": 8}}
    cluster.apply({**manifest("wide", cluster.bucket), "spec": spec})
    pass_preflight(cluster, "wide")
    sets = wait_for(lambda: jobsets(cluster) if len(jobsets(cluster)) == 3 else None, what="3 multi-node objects")
    assert cluster.jobs(component="trial") == {}, "a multi-node trial is the engine's object, not a Job"
    owner = cluster.ablation("wide")["metadata"]["uid"]
    for body in sets.values():
        assert body["kind"] == engine and body["metadata"]["ownerReferences"][0]["uid"] == owner
    assert not kube_api.emulator.crd_schema(*ENGINES[engine][1]).pruned  # every field set is one the engine knows
    base, oproj, every = (next(n for n in sets if f"-{k}" in n) for k in ("base", "o-proj", "all"))
    # Succeeded: Completed and a result.json.
    complete(cluster, sets[oproj], 0.7)
    wait_for(lambda: trial_state(cluster, "wide", oproj).get("state") == "Succeeded", what="o_proj Succeeded")
    # Failed, seen by a restarted operator (killed without a goodbye): the JobSet's reason and message quoted.
    finish(cluster, every, "Failed", "ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")
    cluster.kill_operator()  # perhaps before it saw the failure: the next process must find it
    cluster.start_operator(multi_node_enabled="true", multi_node_engine=engine)
    failed = wait_for(lambda: trial_state(cluster, "wide", every) if trial_state(cluster, "wide", every).get("state")
                      == "Failed" else None, what="all Failed")  # fmt: skip
    assert "ReachedMaxRestarts" in failed["message"] and "reaching max number of restarts" in failed["message"]
    assert f"{engine} {every}" in failed["message"]  # names the object, for kubectl describe
    assert sorted(jobsets(cluster)) == sorted(sets)  # no second object for any trial
    assert trial_state(cluster, "wide", oproj)["state"] == "Succeeded" and trial_state(cluster, "wide", oproj)["score"]
    assert cluster.trial_events("wide", "TrialStarted") == 3  # the restarted process started nothing again
    complete(cluster, sets[base], 0.1)
    ready = wait_for(lambda: cluster.condition("wide") if cluster.condition("wide").get("status") == "True" else None,
                     what="Ready")  # fmt: skip
    assert ready["reason"] == "CompletedWithFailures" and len(jobsets(cluster)) == 3


def test_suspending_an_ablation_suspends_its_jobsets(cluster):
    spec = manifest("pause", cluster.bucket, search={"moduleSets": [["o_proj"]]})["spec"]
    spec["execution"] = {"nodes": 2, "parallelism": 2}
    cluster.apply({**manifest("pause", cluster.bucket), "spec": spec})
    pass_preflight(cluster, "pause")
    wait_for(lambda: len(jobsets(cluster)) == 2, what="2 JobSets")
    cluster.patch_spec("pause", {"execution": {"nodes": 2, "parallelism": 2, "suspend": True}})
    wait_for(lambda: all(j["spec"].get("suspend") for j in jobsets(cluster).values()), what="JobSets suspended")
    wait_for(lambda: cluster.condition("pause", "Suspended")["status"] == "True", what="Suspended=True")
    cluster.patch_spec("pause", {"execution": {"nodes": 2, "parallelism": 2, "suspend": False}})
    wait_for(lambda: not any(j["spec"].get("suspend") for j in jobsets(cluster).values()), what="JobSets resumed")
    assert len(jobsets(cluster)) == 2
