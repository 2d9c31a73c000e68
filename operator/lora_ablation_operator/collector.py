"""Results storage as the operator sees it: result.json of finished trials (cached, read once each),
the preflight report, and summary.json. Storage I/O only; no Kubernetes here."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.trial import PreflightReport
from lora_ablation.report import render_markdown
from lora_ablation.results import SUMMARY_FILE, ResultRead, read_result
from lora_ablation.store import Store, open_store
from lora_ablation.summary_models import Summary


class ResultCache:
    """A finished trial's result never changes, so each is read from storage once per operator process;
    a restarted operator re-reads them, which is what makes a restart lose nothing."""

    def __init__(self) -> None:
        self._reads: dict[tuple[str, str], ResultRead] = {}

    def collect(self, uid: str, store: Store, trials: list[str]) -> dict[str, ResultRead]:
        out = {}
        for trial in trials:
            key = (uid, trial)
            if key not in self._reads:
                self._reads[key] = read_result(store, trial)
            out[trial] = self._reads[key]
        return out

    def forget(self, uid: str) -> None:
        for key in [k for k in self._reads if k[0] == uid]:
            del self._reads[key]


@lru_cache(maxsize=256)
def _root_store(uri: str, endpoint: str | None, region: str | None) -> Store:
    # One client per storage location, reused by every reconcile (building a boto3 client costs ~10 ms).
    return open_store(uri, endpoint, region)


def ablation_store(spec: LoraAblationSpec, namespace: str, name: str, default_endpoint: str | None) -> Store:
    endpoint = spec.storage.endpoint or default_endpoint
    return _root_store(spec.storage.uri, endpoint, spec.storage.region).child(namespace, name)


def preflight_problems(store: Store) -> list[str] | None:
    try:
        raw: Any = store.read_json("preflight/preflight.json")
    except (FileNotFoundError, ValueError):
        return None
    return PreflightReport.model_validate(raw).problems or None


def write_summary(store: Store, summary: Summary) -> None:
    store.write_json(SUMMARY_FILE, summary.to_wire())
    store.write_text("summary.md", render_markdown(summary))


def write_trial_statuses(store: Store, statuses: list[dict[str, Any]]) -> None:
    store.write_json("trials.json", statuses)
