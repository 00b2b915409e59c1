#!/usr/bin/env bash
# Installs sparkrec and runs the whole pipeline on the embedded default (Spark local[*],
# delta-rs, the bundled sample). Extra arguments are config overrides, e.g.
#   scripts/run.sh data.dataset=bookcrossing
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh ml
sparkrec pipeline --conf conf/local.yaml "$@"
