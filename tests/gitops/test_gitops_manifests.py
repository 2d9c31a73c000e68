"""The GitOps examples, checked offline as Flux and Argo CD would see them: every document against its published
schema (Flux: the cloudcoil-models-fluxcd models from PyPI, generated from Flux's CRDs; Argo CD: its Application
CRD schema, vendored in schemas/; built-in kinds: kubernetes-validate; LoraAblation: our CRD and models), every
reference resolved (paths, sources, dependsOn naming Kustomizations only, health checks, namespaces created), and
the ablations allowed by the policy the operator is installed with (operator and admission policy alike)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lora_ablation.api.crdgen import build_crd
from lora_ablation.api.resource import parse_spec
from lora_ablation_operator.policy import violations
from lora_ablation_operator.settings import Settings
from support.chart import admit, chart
from support.kube_schema import CrdSchema

fluxcd = pytest.importorskip("cloudcoil.models.fluxcd", reason="cloudcoil-models-fluxcd has Flux's schemas")
from cloudcoil.models.fluxcd.helm import v2 as helm_v2  # noqa: E402
from cloudcoil.models.fluxcd.kustomize import v1 as kustomize_v1  # noqa: E402
from cloudcoil.models.fluxcd.source import v1 as source_v1  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "gitops"
FLUX_MODELS = {
    ("source.toolkit.fluxcd.io/v1", "GitRepository"): source_v1.GitRepository,
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): kustomize_v1.Kustomization,
    ("helm.toolkit.fluxcd.io/v2", "HelmRelease"): helm_v2.HelmRelease,
}
ARGO_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "argoproj.io_v1alpha1_application.json").read_text())
KUSTOMIZE = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(GITOPS.rglob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def kinds(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in documents() if d["kind"] == kind and d["apiVersion"] != KUSTOMIZE[0]]


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields in `given` a model does not know (it ignores them, as the API server prunes them)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [f"{path}.{k}" for k in given if k not in kept] + [
            d for k in given if k in kept for d in _dropped(given[k], kept[k], f"{path}.{k}")
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [d for i, (g, k) in enumerate(zip(given, kept, strict=False)) for d in _dropped(g, k, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize(("path", "doc"), documents(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_document_validates_against_its_published_schema(path, doc):
    key = (doc["apiVersion"], doc["kind"])
    if key in FLUX_MODELS:
        model = FLUX_MODELS[key].model_validate(doc)
        kept = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert not _dropped(doc, kept), f"{path.name}: fields unknown to Flux: {_dropped(doc, kept)}"
    elif key == ("argoproj.io/v1alpha1", "Application"):
        schema = CrdSchema(ARGO_SCHEMA)
        _, errors = schema.admit(doc)
        assert not errors and not schema.pruned, (errors, schema.pruned)
    elif key == ("lora.ablation.dev/v1alpha1", "LoraAblation"):
        schema = CrdSchema(build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        _, errors = schema.admit(doc)
        assert not errors and not schema.pruned, (errors, schema.pruned)
        parse_spec(doc["spec"])
    elif key == KUSTOMIZE:
        assert path.name == "kustomization.yaml"
        for resource in doc["resources"]:
            assert (path.parent / resource).is_file(), f"{path}: {resource} does not exist"
            assert (path.parent / resource).resolve().is_relative_to(path.parent), "Argo CD's kustomize loads below"
    elif doc["apiVersion"] == "v1":
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    else:
        raise AssertionError(f"{path.name}: no schema for {key}")


def test_no_file_is_named_like_a_kustomize_config_unless_it_is_one():
    for path in GITOPS.rglob("kustomization.yaml"):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert (doc["apiVersion"], doc["kind"]) == KUSTOMIZE, f"{path}: kustomize would read it as its config"


def test_flux_kustomizations_resolve():
    kustomizations = {d["metadata"]["name"]: d for _, d in kinds("Kustomization")}
    sources = {d["metadata"]["name"] for _, d in kinds("GitRepository")}
    releases = {(d["metadata"]["namespace"], d["metadata"]["name"]): (p, d) for p, d in kinds("HelmRelease")}
    assert set(kustomizations) == {"lora-ablation-operator", "lora-ablations"}
    for name, k in kustomizations.items():
        assert k["spec"]["sourceRef"]["name"] in sources
        folder = ROOT / k["spec"]["path"]
        assert (folder / "kustomization.yaml").is_file(), f"{name}: {folder} has no kustomization.yaml"
        for dependency in k["spec"].get("dependsOn", []):
            assert dependency["name"] in kustomizations, f"{name}: dependsOn names no Kustomization"
    operator = kustomizations["lora-ablation-operator"]
    (check,) = operator["spec"]["healthChecks"]
    release_path, release = releases[(check["namespace"], check["name"])]
    assert check["kind"] == "HelmRelease" and release_path.parent == ROOT / operator["spec"]["path"]
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    assert kustomizations["lora-ablations"]["spec"]["dependsOn"] == [{"name": "lora-ablation-operator"}]


def _folder_objects(folder: Path) -> list[dict[str, Any]]:
    (config,) = [d for d in yaml.safe_load_all((folder / "kustomization.yaml").read_text()) if d]
    return [d for r in config["resources"] for d in yaml.safe_load_all((folder / r).read_text()) if d]


@pytest.mark.parametrize("folder", ["gitops/flux/operator", "gitops/ablations"])
def test_every_namespace_used_is_created_in_the_same_folder(folder):
    objects = _folder_objects(ROOT / folder)
    created = {d["metadata"]["name"] for d in objects if d["kind"] == "Namespace"}
    used = {d["metadata"]["namespace"] for d in objects if d["kind"] != "Namespace"}
    assert used and used <= created


def test_argo_applications_resolve_and_order():
    apps = {d["metadata"]["name"]: d for _, d in kinds("Application")}
    operator, ablations = apps["lora-ablation-operator"], apps["lora-ablations"]
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").is_file()
    assert (ROOT / ablations["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    wave = [int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for a in (operator, ablations)]
    assert wave[0] < wave[1] and "SkipDryRunOnMissingResource=true" in ablations["spec"]["syncPolicy"]["syncOptions"]


def _installed_values() -> list[tuple[str, dict[str, Any]]]:
    (release,) = [d for _, d in kinds("HelmRelease")]
    app = next(d for _, d in kinds("Application") if d["metadata"]["name"] == "lora-ablation-operator")
    return [("flux", release["spec"]["values"]), ("argocd", app["spec"]["source"]["helm"]["valuesObject"])]


CHART_VALUES = yaml.safe_load((ROOT / "helm" / "lora-ablation-operator" / "values.yaml").read_text())


def _paths(values: dict[str, Any], chart_values: dict[str, Any], prefix: str = "") -> list[tuple[str, bool]]:
    """Every key path of `values`, each with whether values.yaml has it (below a free-form {} anything goes)."""
    found = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        known = key in chart_values
        found.append((path, known))
        below = chart_values.get(key)
        if known and isinstance(value, dict) and isinstance(below, dict) and below:
            found += _paths(value, below, f"{path}.")
    return found


@pytest.mark.parametrize(("tool", "values"), _installed_values(), ids=["flux", "argocd"])
def test_every_installed_value_is_a_chart_value(tool, values):
    unknown = [path for path, known in _paths(values, CHART_VALUES) if not known]
    assert not unknown, f"{tool}: keys not in values.yaml: {unknown}"


@pytest.mark.parametrize("name", ["argocd/application.yaml", "flux/operator/helmrelease.yaml"])
def test_the_values_a_comment_says_to_set_are_chart_values_and_set_there(name):
    text = (GITOPS / name).read_text()
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    given = doc["spec"]["values"] if doc["kind"] == "HelmRelease" else doc["spec"]["source"]["helm"]["valuesObject"]
    comments = " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    # Chart value paths named in prose: dotted or camelCase words whose first part is a top-level chart value.
    named = {w for w in re.findall(r"\b[a-z][\w.]*\w\b", comments)
             if ("." in w or not w.islower()) and w.split(".")[0] in CHART_VALUES}  # fmt: skip
    assert {"image.repository", "trainerImage"} <= named
    given_paths = {path for path, _ in _paths(given, CHART_VALUES)}
    chart_paths = {path for path, _ in _paths(CHART_VALUES, CHART_VALUES)}
    for path in sorted(named):
        assert path in chart_paths, f"{name}: its comments name {path}, which values.yaml does not have"
        assert path in given_paths, f"{name}: its comments say to set {path}, which its values do not"


@pytest.mark.parametrize(("tool", "values"), _installed_values(), ids=["flux", "argocd"])
def test_the_ablations_are_allowed_by_the_policy_they_are_installed_with(tool, values, monkeypatch):
    docs = chart(values["policy"], **{k: v for k, v in values.items() if k != "policy"})
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"].startswith("LORA_ABLATION_"):
            monkeypatch.setenv(env["name"], env["value"])
    settings = Settings.from_env()
    ablations = [d for d in _folder_objects(ROOT / "gitops" / "ablations") if d["kind"] == "LoraAblation"]
    assert ablations
    for ablation in ablations:
        assert admit(docs, ablation) == [], f"{tool}: the admission policy refuses {ablation['metadata']['name']}"
        assert violations(parse_spec(ablation["spec"]), settings.policy, trainer_image=settings.trainer_image,
                          default_secret=settings.default_credentials_secret,
                          default_endpoint=settings.default_storage_endpoint) == []  # fmt: skip
        for uri in [ablation["spec"]["baseModel"]["uri"], ablation["spec"]["storage"]["uri"]]:
            assert not uri.startswith("file://"), "file:// is InvalidSpec in a cluster"


def test_the_gitops_ablation_is_the_documented_example():
    copy = yaml.safe_load((GITOPS / "ablations" / "module-study.yaml").read_text())
    assert copy == yaml.safe_load((ROOT / "examples" / "module-study.yaml").read_text())
