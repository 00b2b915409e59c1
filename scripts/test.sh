#!/usr/bin/env bash
# Installs sparkrec with its dev tools, then lints and runs the whole test suite
# (slow end-to-end tests included; pass -m "not slow" to skip them locally).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh ml,dev,serve,notebooks,llm,horovod
# The HTML report test renders in headless Chromium: required in CI, skipped locally without it.
if [ "${CI:-}" = "true" ]; then bash scripts/install_chromium.sh
else bash scripts/install_chromium.sh || echo "no chromium: the report's browser test will skip" >&2; fi
# Airflow lives in its own venv (its pins conflict with ours): tests/test_airflow_dag.py loads the DAGs there.
if [ "${CI:-}" = "true" ]; then bash scripts/setup_airflow.sh >/dev/null
else bash scripts/setup_airflow.sh >/dev/null || echo "no .venv-airflow: the Airflow DAG test will skip" >&2; fi
ruff check sparkrec tests jobs benchmarks scripts notebooks deploy
# Two workers (CI has two cores; much of a Spark test on the sample is JVM start-up, Python and
# I/O): tests/conftest.py groups modules so shared fixtures are built once and orders the longest
# first. SPARKREC_TEST_WORKERS=0 runs them in one process.
workers="${SPARKREC_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then parallel=(); else parallel=(-n "$workers" --dist loadgroup --no-loadscope-reorder); fi
python -m pytest -q --durations=40 "${parallel[@]}" "$@"
