#!/usr/bin/env bash
# Regenerate requirements/constraints.txt: every dependency of every extra, transitive ones included, at the newest
# versions pyproject.toml's ranges allow, for every platform and for Python 3.11 and newer (markers split where
# releases differ). uv resolves it; a pinned uv lives in a throwaway venv so the lock does not depend on the host.
# scripts/env.sh installs with this file; pyproject.toml keeps its ranges for people who install the package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
# --python-version 3.11: kmock (dev extra) needs 3.11, so the development environment does too.
"$tool/venv/bin/uv" pip compile pyproject.toml requirements/build.in --all-extras --universal \
  --python-version 3.11 --no-header --quiet -o "$tool/constraints.txt"
{
  echo "# The lock: every dependency, transitive ones included, that scripts/env.sh (the tests, the demo, CI) installs."
  echo "# Regenerate with 'bash scripts/lock.sh'; 'bash scripts/test-newest.sh' tests the newest releases instead."
  echo "# Used as pip constraints (-c): an entry for a platform or extra that is not installed costs nothing."
  cat "$tool/constraints.txt"
} > requirements/constraints.txt
echo "wrote requirements/constraints.txt ($(grep -c '^[A-Za-z0-9]' requirements/constraints.txt) pins)" >&2
