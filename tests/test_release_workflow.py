"""The release workflow, linted offline by actionlint (with shellcheck on its run: scripts) and zizmor, and read for
what a release of an operator must do: on a tag, both images multi-arch with an SBOM, the chart as an OCI artifact
pointing at them, everything signed, least privilege, actions pinned by commit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
BIN = Path(sys.executable).parent  # the dev extra installs actionlint, zizmor and shellcheck there


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.skip(f"{name} is not installed (the dev extra has it)")
    return found


def lint(path: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(path.parent)}  # shellcheck from the venv
    actionlint = subprocess.run([tool("actionlint"), str(path)], capture_output=True, text=True, env=env, timeout=120)
    zizmor = subprocess.run([tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", str(path)],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    return actionlint, zizmor


def test_release_workflow_passes_actionlint_and_zizmor():
    actionlint, zizmor = lint(WORKFLOW)
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr


def test_the_linters_catch_what_they_are_here_for(tmp_path):
    bad = WORKFLOW.read_text().replace('version="${TAG#v}"', 'version=${{ github.ref_name }}; echo $TAG', 1)
    bad = bad.replace("        with:\n          persist-credentials: false\n", "", 1)  # checkout keeps the token
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "release.yaml"
    path.write_text(bad)
    actionlint, zizmor = lint(path)
    assert actionlint.returncode != 0 and "SC2086" in actionlint.stdout, actionlint.stdout  # shellcheck ran
    assert zizmor.returncode != 0 and "template-injection" in zizmor.stdout and "artipacked" in zizmor.stdout


def test_a_tag_builds_both_images_multi_arch_with_sbom_then_the_signed_chart():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True]["push"]["tags"] and "branches" not in workflow[True]["push"]  # `on:` parses as True
    assert workflow["permissions"] == {}
    images, chart = workflow["jobs"]["images"], workflow["jobs"]["chart"]
    built = {m["name"]: m for m in images["strategy"]["matrix"]["include"]}
    assert set(built) == {"operator", "trainer"}
    for name, entry in built.items():
        assert (ROOT / entry["dockerfile"]).is_file() and set(entry["platforms"].split(",")) >= {"linux/amd64",
                                                                                               "linux/arm64"}, name
    script = "\n".join(s.get("run", "") for s in images["steps"])
    assert "--sbom=true" in script and "--push" in script and "cosign sign --yes" in script
    assert chart["needs"] == "images"
    script = "\n".join(s.get("run", "") for s in chart["steps"])
    assert "helm push" in script and "oci://" in script and "cosign sign --yes" in script
    for job in (images, chart):
        assert job["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"{step['uses']}: pin by commit"


def test_the_release_points_the_chart_at_the_images_it_pushed():
    values = (ROOT / "helm" / "lora-ablation-operator" / "values.yaml").read_text()
    script = WORKFLOW.read_text()
    assert "  repository: ghcr.io/lora-ablation/operator\n" in values  # what the sed in the chart job replaces
    assert re.search(r"^trainerImage: ", values, re.MULTILINE)
    assert "image=\"${REGISTRY}/${OWNER,,}/${NAME}\"" in script and "/${owner}/operator|" in script
