"""The emulated API server behaves as the real one where the operator depends on it (each test is one
of the kmock 0.8 gaps that tests/support/kube.py closes), checked with the official client over HTTP. What
kube-apiserver would refuse, the emulator refuses alike: tests/test_kube_refusals.py."""

from __future__ import annotations

import json
import urllib.request

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from lora_ablation.api.crdgen import build_crd
from support.kube_objects import job


# -- a fresh server per test: the kmock gaps -----------------------------------------------------------------
@pytest.fixture
def batch(kubeconfig):
    kubernetes.config.load_kube_config(config_file=str(kubeconfig))
    return kubernetes.client.BatchV1Api()


@pytest.fixture
def core(kubeconfig):
    kubernetes.config.load_kube_config(config_file=str(kubeconfig))
    return kubernetes.client.CoreV1Api()


def test_create_returns_201_with_server_metadata_and_409_on_repeat(batch):
    created = batch.create_namespaced_job("default", job("a"))
    assert created is not None, "the client returns None unless the status is 201"
    meta = created.metadata
    assert meta.uid and meta.resource_version and meta.creation_timestamp and meta.generation == 1
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job("default", job("a"))
    assert caught.value.status == 409 and "already exists" in caught.value.body.lower()


def test_patches_bump_versions_and_status_subresource_is_separate(batch):
    batch.create_namespaced_job("default", job("a"))
    before = batch.read_namespaced_job("a", "default").metadata
    batch.patch_namespaced_job_status("a", "default", {"status": {"active": 1}, "spec": {"parallelism": 5}})
    after_status = batch.read_namespaced_job("a", "default")
    assert after_status.status.active == 1 and after_status.spec.parallelism != 5
    assert int(after_status.metadata.resource_version) > int(before.resource_version)
    assert after_status.metadata.generation == 1
    batch.patch_namespaced_job("a", "default", {"spec": {"parallelism": 2}, "status": {"active": 7}})
    after_spec = batch.read_namespaced_job("a", "default")
    assert after_spec.spec.parallelism == 2 and after_spec.status.active == 1 and after_spec.metadata.generation == 2


def test_lists_have_kind_and_honour_label_selectors(batch):
    batch.create_namespaced_job("default", job("a", team="x"))
    batch.create_namespaced_job("default", job("b", team="y"))
    listed = json.loads(batch.list_namespaced_job("default", label_selector="team=x", _preload_content=False).data)
    assert listed["kind"] == "JobList" and listed["apiVersion"] == "batch/v1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    assert int(listed["metadata"]["resourceVersion"]) >= 2


def test_watch_from_a_version_streams_only_newer_events_and_ends_on_timeout(batch):
    batch.create_namespaced_job("default", job("old"))
    version = batch.list_namespaced_job("default").metadata.resource_version
    batch.create_namespaced_job("default", job("new"))
    events = [(e["type"], e["object"].metadata.name)
              for e in kubernetes.watch.Watch().stream(batch.list_namespaced_job, "default", resource_version=version,
                                                       timeout_seconds=1)]  # fmt: skip
    assert events == [("ADDED", "new")]


def test_creating_a_crd_registers_it_in_discovery(kube_api, kubeconfig):
    kubernetes.config.load_kube_config(config_file=str(kubeconfig))
    kubernetes.client.ApiextensionsV1Api().create_custom_resource_definition(build_crd())
    with urllib.request.urlopen(f"{kube_api.url}/apis/lora.ablation.dev/v1alpha1") as response:
        names = {r["name"] for r in json.loads(response.read())["resources"]}
    assert names == {"loraablations", "loraablations/status"}


def test_pods_are_listed_watched_by_label_and_their_status_patched(core):
    pod = {"metadata": {"name": "trial-pod", "labels": {"job-name": "trial"}},
           "spec": {"containers": [{"name": "c", "image": "missing:1"}]}}  # fmt: skip
    core.create_namespaced_pod("default", pod)
    core.create_namespaced_pod("default", {**pod, "metadata": {"name": "other-pod", "labels": {"job-name": "other"}}})
    listed = core.list_namespaced_pod("default", label_selector="job-name=trial")
    assert [p.metadata.name for p in listed.items] == ["trial-pod"]
    state = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
    waiting = {"containerStatuses": [{"name": "c", "image": "missing:1", "imageID": "", "ready": False,
                                      "restartCount": 0, "state": state}]}  # fmt: skip
    core.patch_namespaced_pod_status("other-pod", "default", {"status": {"phase": "Pending"}})
    core.patch_namespaced_pod_status("trial-pod", "default", {"status": {"phase": "Pending", **waiting}})
    read = core.read_namespaced_pod_status("trial-pod", "default")
    assert read.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    watch = kubernetes.watch.Watch()
    events = watch.stream(core.list_namespaced_pod, "default", label_selector="job-name=trial",
                          resource_version=listed.metadata.resource_version, timeout_seconds=5)  # fmt: skip
    event = next(iter(events))
    watch.stop()
    # (A cluster would say MODIFIED: the emulator replays objects changed since the version as ADDED.)
    assert event["type"] in ("ADDED", "MODIFIED") and event["object"].metadata.name == "trial-pod"
    assert event["object"].status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
