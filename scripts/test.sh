#!/usr/bin/env bash
# The test command from the README: sets up .venv on a fresh machine, then runs the whole suite.
source "$(dirname "$0")/env.sh"
exec python -m pytest "$@"
