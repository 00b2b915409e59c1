#!/usr/bin/env bash
# Creates .venv-airflow: a SEPARATE virtual environment with Apache Airflow and its Spark provider,
# used only to load deploy/airflow/ with Airflow's DagBag (tests/test_airflow_dag.py).
# Why separate: Airflow pins its own versions of packages that sparkrec also pins (and brings
# many more); keeping it apart leaves .venv's pins (numpy 1.26.4, pyarrow 14, pandas 2.3.3,
# pyspark 3.5.9, mlflow) untouched. Idempotent; prints the venv's python.
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${SPARKREC_AIRFLOW_VENV:-$_repo/.venv-airflow}"
_python="${PYTHON:-python3.11}"
command -v "$_python" >/dev/null 2>&1 || _python=python3
_airflow="apache-airflow==3.3.2"
_spark="apache-airflow-providers-apache-spark==6.3.4"
if [ -x "$_venv/bin/python" ] && "$_venv/bin/python" -c 'import airflow, airflow.providers.apache.spark' >/dev/null 2>&1; then
  echo "$_venv/bin/python"
  exit 0
fi
"$_python" -m venv "$_venv"
"$_venv/bin/python" -m pip install -q --upgrade "pip>=24" >&2
"$_venv/bin/python" -m pip install -q "$_airflow" "$_spark" >&2
echo "$_venv/bin/python"
