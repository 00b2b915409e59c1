"""Airflow DAGs that schedule sparkrec without Databricks: one spark-submit per stage.

``sparkrec_pipeline`` (daily): ingest -> features -> embed -> train -> recommend, each a
``SparkSubmitOperator`` running ``jobs/<stage>.py`` with the same ``--conf`` and Airflow's run id
(``--run-id {{ run_id }}``), so every Delta commit of one scheduled run carries the same id
(``sparkrec.run_id`` in the tables' history). ``sparkrec_evaluate`` (weekly) runs
``jobs/train.py train.split=<split>`` then ``jobs/evaluate.py evaluation.split=<split>``
(``SPARKREC_EVAL_SPLIT``, default ``temporal_loo``).

Settings (environment variables of the scheduler and workers):

- ``SPARKREC_HOME``: the sparkrec checkout or install dir holding ``jobs/`` and ``conf/``
  (default: two folders above this file, i.e. the repository when the DAG is used in place);
- ``SPARKREC_CONF``: the config file (default ``<home>/conf/cluster.yaml``);
- ``SPARKREC_WHEEL``: the built wheel shipped with ``--py-files`` (``python -m build --wheel``);
  empty: the workers must have sparkrec installed;
- ``SPARKREC_SPARK_CONN``: the Airflow Spark connection (default ``spark_default``: its host is
  the master, e.g. ``spark://host:7077``, ``yarn`` or ``k8s://...``);
- ``SPARKREC_TRAIN_CONF``: extra config overrides for the train stage only (space separated),
  e.g. ``train.local_mode=false train.num_workers=2``.

Loaded by tests/test_airflow_dag.py with Airflow's DagBag, in the separate .venv-airflow.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3: the task SDK
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG

STAGES = ("ingest", "features", "embed", "train", "recommend")


def setting(name: str, default: str) -> str:
    # Environment only: reading Airflow Variables at parse time would hit the metadata
    # database on every parse of this file (Airflow's own advice is not to).
    return os.environ.get(name, default)


HOME = Path(setting("SPARKREC_HOME", str(Path(__file__).resolve().parents[2])))
CONF = setting("SPARKREC_CONF", str(HOME / "conf" / "cluster.yaml"))
WHEEL = setting("SPARKREC_WHEEL", "")
CONN = setting("SPARKREC_SPARK_CONN", "spark_default")
TRAIN_OVERRIDES = shlex.split(setting("SPARKREC_TRAIN_CONF", ""))
EVAL_SPLIT = setting("SPARKREC_EVAL_SPLIT", "temporal_loo")

DEFAULT_ARGS = {
    "owner": "sparkrec",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=6),
}


def stage_task(stage: str, extra: list[str] | None = None, task_id: str | None = None) -> SparkSubmitOperator:
    """One stage as a spark-submit of ``jobs/<stage>.py``. The stages' exit code 2 (refused
    before any write: a config or input to fix) fails the task like any other; retries cover
    the cluster's transient failures, and every stage is safe to re-run (MERGE / atomic overwrite)."""
    return SparkSubmitOperator(
        task_id=task_id or stage,
        application=str(HOME / "jobs" / f"{stage}.py"),
        application_args=["--conf", CONF, "--run-id", "{{ run_id }}", *(extra or [])],
        py_files=WHEEL or None,
        conn_id=CONN,
        name=f"sparkrec-{task_id or stage}-{{{{ ds_nodash }}}}",
        env_vars={"SPARKREC_RUN_ID": "{{ run_id }}"},
        verbose=False,
    )


with DAG(
    dag_id="sparkrec_pipeline",
    description="sparkrec: ingest -> features -> embed -> train -> recommend, one spark-submit per stage",
    schedule="0 3 * * *",
    start_date=datetime(2026, 12, 1),
    catchup=False,
    max_active_runs=1,  # stages write the same tables: never two runs at once
    default_args=DEFAULT_ARGS,
    tags=["sparkrec"],
) as pipeline:
    previous = None
    for stage in STAGES:
        task = stage_task(stage, TRAIN_OVERRIDES if stage == "train" else None)
        if previous is not None:
            previous >> task
        previous = task


with DAG(
    dag_id="sparkrec_evaluate",
    description="sparkrec: weekly evaluation of every model on the configured split (HTML report, champion)",
    schedule="0 5 * * 0",
    start_date=datetime(2026, 12, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["sparkrec"],
) as evaluate:
    # the hybrid judged must be trained on the split's train part (evaluate refuses one trained on all events)
    (stage_task("train", [*TRAIN_OVERRIDES, f"train.split={EVAL_SPLIT}"], task_id="train_on_split")
     >> stage_task("evaluate", [f"evaluation.split={EVAL_SPLIT}"]))
