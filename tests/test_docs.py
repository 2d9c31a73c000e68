"""The documentation's structure (#26): the README is for users (internals live in docs/operator.md), the study
the method comes from is introduced once before anything refers to it, and every relative link and anchor in the
README and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path):
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))  # code is not a link
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: no heading #{anchor} in {file.name}"


def test_the_readme_is_for_users_and_internals_have_their_page():
    readme, internals = (ROOT / "README.md").read_text(), (ROOT / "docs" / "operator.md").read_text()
    for heading in ("How it reacts: watches, a work queue", "## Layout", "The trainer contract", "Launch contract"):
        assert heading not in readme and heading in internals, heading
    users = ("## Commands", "### Metrics", "### Dataset record shapes", "### Troubleshooting", "## Security model")
    for heading in users:
        assert heading in readme, heading
    top = readme.split("\n## ", 1)[0]
    assert "docs/operator.md" in top and "docs/cluster-quickstart.md" in top


def test_the_study_is_introduced_once_before_it_is_referred_to():
    readme = (ROOT / "README.md").read_text()
    intro = readme.split("\n## Where the method comes from\n", 1)[1].split("\n## ", 1)[0]
    before = readme.split("\n## Where the method comes from\n", 1)[0]
    for name in ("seed 000", "seed 002", "Nova"):
        assert name.lower() not in before.lower(), f"{name} used before it is introduced"
        assert name.lower() in intro.lower(), f"{name} is not introduced"
    for figure in ("10.085 ms", "7.803 ms", "22.6%", "seven\ndatasets"):
        assert readme.count(figure) == 1, figure
