# shellcheck shell=bash
# Sourced by the other scripts: create .venv and install the project once, quietly, on any fresh machine.
# Installs go through the lock (requirements/constraints.txt), so a new release never changes what the README's
# commands do; LOCK=none installs the newest releases pyproject.toml's ranges allow (scripts/test-newest.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
LOCK="${LOCK:-requirements/constraints.txt}"
if [ "$LOCK" = none ]; then
  constrain=()
  inputs=$(cat pyproject.toml)
else
  constrain=(-c "$LOCK")
  inputs=$(cat pyproject.toml requirements/build.in "$LOCK")
fi
STAMP="$VENV/.installed-$(printf '%s\n%s' "$LOCK" "$inputs" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "installing lora-ablation-operator[operator,trainer,tracking,report,dev] into $VENV (lock: $LOCK; first run only)..." >&2
  # pip, setuptools and wheel first, from the lock, and the project built with them: the build is locked too.
  "$VENV/bin/python" -m pip install --quiet --upgrade "${constrain[@]}" -r requirements/build.in
  # torch is pinned to the CPU wheel in the trainer extra; a loose torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet --upgrade --no-build-isolation "${constrain[@]}" \
    -e ".[operator,trainer,tracking,report,dev]"
  # pip keeps an installed editable project of the same version as it was: its metadata (entry points) follows
  # pyproject.toml only when reinstalled.
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall --no-build-isolation -e .
  rm -f "$VENV"/.installed-* && touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"
