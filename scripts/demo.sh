#!/usr/bin/env bash
# The whole offline demo in one command on a fresh machine: set up .venv, then run every stage
# (data -> tiny base -> LoRA -> report -> merge -> push -> app). Arguments go to `assistant demo`:
#   bash scripts/demo.sh --name Alice [--author Bob] [--workdir demo_out] [--remote URL] [--fresh] [--no-app]
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_BROWSER=${SETUP_BROWSER:-0} bash scripts/setup.sh  # the demo needs no browser; the tests do
. .venv/bin/activate
exec python -m myassistant.scripts.cli demo "$@"
