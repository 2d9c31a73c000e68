"""spec.tracking.mlflow with the operator running for real (`kopf run`) against the emulated API, moto S3 and a real
`mlflow server`. The test plays the Job controller and the trainer: it logs each trial's run with the trainer's own
function (lora_ablation.tracking.log_trial, from the TrialSpec the operator put into the Job) and writes result.json;
the operator puts the summary on the ablation's run when the ablation finishes."""

from __future__ import annotations

import uuid

import pytest

from lora_ablation.api.trial import TrialResult, TrialSpec
from lora_ablation.tracking import log_trial
from lora_ablation.tracking.mlflow_runs import PARENT_TAG, RECORD_TAG, TRIAL_TAG
from support.cluster import complete, manifest, pass_preflight, trial_jobs, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_the_operator_puts_the_summary_on_the_parent_of_one_run_per_trial(operated, mlflow_server):
    experiment = f"operator-{uuid.uuid4().hex[:8]}"
    uri = mlflow_server.uri  # waits for the server first: the operator is started right before the ablation
    cluster = operated(policy_secrets="mlflow-creds")  # the run's Secret, allowed as an admin would
    mlflow = {"trackingUri": uri, "experimentName": experiment,
              "credentialsSecretRef": {"name": "mlflow-creds"}}  # fmt: skip
    cluster.apply(manifest("tracked", cluster.bucket, search={"moduleSets": [["o_proj"]], "ranks": [16]},
                           tracking={"mlflow": mlflow}))  # fmt: skip
    pass_preflight(cluster, "tracked")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    for job in jobs.values():
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-creds"
        spec = TrialSpec.model_validate(cluster.trial_spec(job))
        assert spec.tracking is not None and spec.tracking.tracking_uri == mlflow_server.uri
        log_trial(spec, TrialResult.model_validate(cluster.result_doc(job, 0.5)))  # what the trainer logs
        complete(cluster, job, 0.5)
    wait_for(lambda: cluster.condition("tracked").get("reason") == "Completed", what="Ready=True")

    def summarized():
        runs = mlflow_server.runs(experiment)
        parents = [r for r in runs if RECORD_TAG in r.data.tags]
        return (runs, parents[0]) if parents and parents[0].info.status == "FINISHED" else None

    runs, parent = wait_for(summarized, what="the summary on the ablation's run")
    children = {r.data.tags[TRIAL_TAG] for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id}
    assert len(runs) == 3 and children == {cluster.trial_spec(j)["name"] for j in jobs.values()}
    artifacts = {a.path for a in mlflow_server.client().list_artifacts(parent.info.run_id)}
    assert {"summary.json", "summary.md"} <= artifacts
    assert parent.data.tags["lora.ablation.dev/ablation"] == "default/tracked"
    assert parent.data.tags["recommendation.accuracy_first"]
