#!/usr/bin/env bash
# The main-job command from the README: sets up .venv on a fresh machine, then plans the seed study's
# module ablation and shows how the tiny quickstart model's groups resolve.
# (When the local runner lands, this runs the quickstart ablation end to end.)
source "$(dirname "$0")/env.sh"
lora-ablation inspect-model examples/models/tiny-llama --rank 8
echo
lora-ablation plan examples/module-study.yaml
