"""deploy/airflow/: the DAGs load with Airflow's own DagBag, in the separate .venv-airflow.

Airflow pins numpy / pandas / pyspark-client versions of its own that sparkrec's pins exclude,
so it lives in its own virtual environment (scripts/setup_airflow.sh) and the DagBag load runs
there in a subprocess; this test reads back what it found as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = Path(os.environ.get("SPARKREC_AIRFLOW_VENV", REPO / ".venv-airflow")) / "bin" / "python"

PROBE = textwrap.dedent("""
    import json, sys
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2.x
        from airflow.models.dagbag import DagBag
    import airflow

    bag = DagBag(dag_folder=sys.argv[1])  # examples: off through AIRFLOW__CORE__LOAD_EXAMPLES
    out = {"airflow": airflow.__version__, "errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            ctx = {"run_id": "scheduled__2026-12-02T03:00:00+00:00", "ds_nodash": "20261202"}
            tasks[t.task_id] = {
                "type": type(t).__name__,
                "upstream": sorted(t.upstream_task_ids),
                "retries": t.retries,
                "application": t.application,
                "py_files": t.py_files,
                "args": t.render_template(list(t.application_args), ctx),
                "env": t.render_template(dict(t.env_vars or {}), ctx),
                "name": t.render_template(t.name, ctx),
                "conn_id": getattr(t, "_conn_id", None),
            }
        schedule = getattr(dag, "schedule", None) or getattr(dag, "schedule_interval", None)
        out["dags"][dag_id] = {"schedule": str(schedule),
                               "max_active_runs": dag.max_active_runs, "catchup": dag.catchup, "tasks": tasks}
    print("PROBE-JSON " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    if not VENV_PYTHON.is_file():
        message = f"no Airflow venv at {VENV_PYTHON.parent.parent}: run scripts/setup_airflow.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: scripts/test.sh creates it, so the DAG test must run)")
        pytest.skip(message)
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SPARKREC_", "PYTHON"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__UNIT_TEST_MODE="True", SPARKREC_HOME=str(REPO),
               SPARKREC_CONF=str(REPO / "conf" / "cluster.yaml"),
               SPARKREC_TRAIN_CONF="train.local_mode=false train.num_workers=2")
    done = subprocess.run([str(VENV_PYTHON), "-c", PROBE, str(REPO / "deploy" / "airflow")], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE-JSON ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("PROBE-JSON "))


def test_dags_load_without_errors(dagbag):
    assert dagbag["errors"] == {}
    assert set(dagbag["dags"]) == {"sparkrec_pipeline", "sparkrec_evaluate"}


def test_pipeline_runs_the_stages_in_order_with_retries_and_the_run_id(dagbag):
    dag = dagbag["dags"]["sparkrec_pipeline"]
    tasks = dag["tasks"]
    order = ["ingest", "features", "embed", "train", "recommend"]
    assert set(tasks) == set(order)
    for before, stage in zip([None, *order], order, strict=False):
        task = tasks[stage]
        assert task["upstream"] == ([before] if before else [])
        assert task["type"] == "SparkSubmitOperator"
        assert task["retries"] >= 1
        assert Path(task["application"]) == REPO / "jobs" / f"{stage}.py"
        assert Path(task["application"]).is_file()
        args = task["args"]
        # the scheduler's run id reaches the stage, rendered from {{ run_id }}
        assert args[args.index("--run-id") + 1] == "scheduled__2026-12-02T03:00:00+00:00"
        assert task["env"]["SPARKREC_RUN_ID"] == "scheduled__2026-12-02T03:00:00+00:00"
        assert Path(args[args.index("--conf") + 1]).is_file()
        assert task["name"] == f"sparkrec-{stage}-20261202"
        assert task["conn_id"] == "spark_default"
    assert tasks["train"]["args"][-2:] == ["train.local_mode=false", "train.num_workers=2"]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["schedule"] == "0 3 * * *"


def test_weekly_evaluation(dagbag):
    dag = dagbag["dags"]["sparkrec_evaluate"]
    tasks = dag["tasks"]
    assert set(tasks) == {"train_on_split", "evaluate"}
    assert tasks["evaluate"]["upstream"] == ["train_on_split"]
    assert Path(tasks["evaluate"]["application"]) == REPO / "jobs" / "evaluate.py"
    assert Path(tasks["train_on_split"]["application"]) == REPO / "jobs" / "train.py"
    assert "train.split=temporal_loo" in tasks["train_on_split"]["args"]
    assert "evaluation.split=temporal_loo" in tasks["evaluate"]["args"]
    assert dag["schedule"] == "0 5 * * 0"


def test_the_stage_accepts_the_run_id_the_dag_passes():
    """What the DAG passes (--run-id) is an argument the stages parse, and a bad one is refused
    in one line before Spark starts."""
    done = subprocess.run([sys.executable, "-m", "sparkrec", "ingest", "--run-id", "a b"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--run-id" in done.stderr and len(done.stderr.strip().splitlines()) == 1
