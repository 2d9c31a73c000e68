#!/usr/bin/env bash
# The main-job command from the README: sets up .venv on a fresh machine, builds the quickstart's tiny
# model (a 2-layer Llama trained in code to copy letter strings, ~15 s), then runs the quickstart
# ablation end to end on this machine: 12 trials, the leaderboard, summary.md and two PNGs.
source "$(dirname "$0")/env.sh"
python -m lora_ablation_demo.quickstart examples
lora-ablation run examples/quickstart.yaml "$@"
