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


def _tracked_run(cluster, name: str, uri: str, experiment: str) -> dict:
    """Apply a tracked ablation, play the Job controller and the trainer (which logs each trial's run), finish it."""
    mlflow = {"trackingUri": uri, "experimentName": experiment, "credentialsSecretRef": {"name": "mlflow-creds"}}
    cluster.apply(manifest(name, cluster.bucket, search={"moduleSets": [["o_proj"]], "ranks": [16]},
                           tracking={"mlflow": mlflow}))  # fmt: skip
    pass_preflight(cluster, name, first=False)  # another ablation's Jobs may exist

    def own() -> dict:
        jobs = {n: j for n, j in trial_jobs(cluster).items() if n.startswith(f"{name}-")}
        return jobs if len(jobs) == 2 else None

    jobs = wait_for(own, what=f"{name}'s 2 trial Jobs")
    for job in jobs.values():
        log_trial(TrialSpec.model_validate(cluster.trial_spec(job)),
                  TrialResult.model_validate(cluster.result_doc(job, 0.5)))  # fmt: skip
        complete(cluster, job, 0.5)
    wait_for(lambda: cluster.condition(name).get("reason") == "Completed", what=f"{name} Completed")
    return jobs


def test_the_operator_sends_its_own_credentials_and_a_refusal_only_costs_a_warning(operated, mlflow_server,
                                                                                    monkeypatch):  # fmt: skip
    """The operator logs the summary with its own MLflow credentials (the chart's extraEnv MLFLOW_TRACKING_TOKEN),
    not the tenant's Secret, which only trial pods get. Behind a bearer-token front: with the right token the
    summary arrives and nothing is refused; with a stale one the server refuses it, the ablation still completes,
    the operator's log says why, and the token is never printed."""
    from support.auth_proxy import TokenProxy

    proxy = TokenProxy(mlflow_server.uri, "operator-token")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "operator-token")  # the trainer's (this test's) and the operator's
        cluster = operated(policy_secrets="mlflow-creds")
        experiment = f"operator-auth-{uuid.uuid4().hex[:8]}"
        _tracked_run(cluster, "authed", proxy.uri, experiment)

        def summarized():
            parents = [r for r in mlflow_server.runs(experiment) if RECORD_TAG in r.data.tags]
            return parents[0] if parents and parents[0].info.status == "FINISHED" else None

        parent = wait_for(summarized, what="the summary on the ablation's run")
        assert parent.data.tags["lora.ablation.dev/ablation"] == "default/authed"
        assert proxy.counts["refused"] == 0 and proxy.counts["forwarded"] > 0

        cluster.stop_operator()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "stale-token")  # a rotated Secret the operator never got
        cluster.start_operator(policy_secrets="mlflow-creds")
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "operator-token")  # the trials' token is still good
        stale = f"operator-stale-{uuid.uuid4().hex[:8]}"
        _tracked_run(cluster, "stale", proxy.uri, stale)
        warned = wait_for(lambda: [line for line in cluster.operator_log().splitlines()
                                   if "MLflow tracking: the summary of ablation default/stale failed" in line],
                          what="the operator's warning")  # fmt: skip
        assert proxy.counts["refused"] > 0
        assert cluster.condition("stale")["status"] == "True"  # advisory: tracking never fails an ablation
        assert not [r for r in mlflow_server.runs(stale) if r.info.status == "FINISHED" and RECORD_TAG in r.data.tags]
        log = cluster.operator_log()
        assert "stale-token" not in log and "operator-token" not in log, warned
    finally:
        proxy.stop()
