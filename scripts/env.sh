# Sourced by the other scripts: create .venv and install the project once, quietly, on any fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
STAMP="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "installing lora-ablation-operator[operator,trainer,report,dev] into $VENV (first run only)..." >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch is pinned to the CPU wheel in the trainer extra; a loose torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet -e ".[operator,trainer,report,dev]"
  rm -f "$VENV"/.installed-* && touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"
