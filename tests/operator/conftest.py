"""The operator under test: `operated(**settings)` starts `kopf run` against the emulated API and moto S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from harness import Cluster


@pytest.fixture
def operated(kube_api, kubeconfig, s3_bucket, tmp_path) -> Iterator[Callable[..., Cluster]]:
    endpoint, bucket = s3_bucket
    started: list[Cluster] = []

    def start(interval: float = 0.3, **settings: str) -> Cluster:
        cluster = Cluster(kubeconfig, endpoint, bucket, tmp_path)
        cluster.install_crd()
        cluster.start_operator(interval, **settings)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop_operator()
