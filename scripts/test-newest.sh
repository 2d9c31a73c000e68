#!/usr/bin/env bash
# The drift check: a fresh .venv-newest with the newest releases pyproject.toml's ranges allow (no lock), then the
# whole suite. Run weekly by .github/workflows/newest-dependencies.yaml; green means the lock can be regenerated
# (bash scripts/lock.sh), red names the release that broke a promise before a newcomer finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-newest
export VENV=.venv-newest LOCK=none
source scripts/env.sh
python -m pip list --format=freeze > .venv-newest/versions.txt  # what was tested
python - <<'PY'  # where it is newer than the lock
import importlib.metadata, pathlib, re
from packaging.utils import canonicalize_name as name
locked = {}
for line in pathlib.Path("requirements/constraints.txt").read_text().splitlines():
    if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;]+)", line):
        locked.setdefault(name(match[1]), set()).add(match[2])
for dist in sorted(importlib.metadata.distributions(), key=lambda d: name(d.metadata["Name"])):
    key, version = name(dist.metadata["Name"]), dist.version.split("+")[0]
    if key in locked and version not in locked[key]:
        print(f"newer than the lock: {key} {'/'.join(sorted(locked[key]))} -> {version}")
PY
exec python -m pytest -p no:cacheprovider "$@"
