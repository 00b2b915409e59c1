"""User-facing failures (issue 15, findings 5-6): one line on stderr naming what to fix, exit
code 2, nothing written, and a traceback only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkrec.cli import main

REPO = Path(__file__).resolve().parents[1]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sparkrec: ")
    return lines[0]


def test_ingest_with_a_missing_column_fails_before_items_are_committed(tmp_path):
    """It used to fail after ~30 s with exit 1 and the items table already committed."""
    (tmp_path / "items.csv").write_text("sku,name\nI1,One\n")
    (tmp_path / "events.csv").write_text("user,item,rating\nU1,I1,5\n")
    conf = tmp_path / "shop.yaml"
    conf.write_text(f"""
lake: {{root: {tmp_path / 'lake'}}}
data:
  dataset: generic
  generic:
    items: {{path: {tmp_path / 'items.csv'}, columns: {{id: sku, title: name}}}}
    interactions: {{path: {tmp_path / 'events.csv'}, columns: {{user: user, item: item, rating: stars}}}}
""")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "-m", "sparkrec", "ingest", "--conf", str(conf)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(tmp_path / "events.csv") in lines[0] and "'stars' (interactions.columns.rating)" in lines[0]
    assert not (tmp_path / "lake" / "generic" / "items").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("evaluation.ks=[0,-3]", "evaluation.ks.0 = 0"),
    ("train.split=nope", "train.split = 'nope'"),
    ("lake.namespace=../../etc", "lake.namespace = '../../etc'"),
    ("spark.driver_memory=lots", "spark.driver_memory = 'lots'"),
    ("ingest.timestamp_min=2999-01-01", "is in the future"),
])
def test_config_errors_exit_2_in_one_line(capsys, override, expected):
    # show-config: where such a value used to be accepted, nothing runs (or writes) in its name
    assert main(["show-config", override]) == 2
    assert expected in one_line(capsys)


def test_lake_root_that_is_a_file_exits_2_without_a_traceback(tmp_path, capsys):
    (tmp_path / "root").write_text("")
    assert main(["features", f"lake.root={tmp_path / 'root'}"]) == 2
    assert one_line(capsys) == f"sparkrec: lake.root = '{tmp_path / 'root'}': is a file, not a directory"


def test_debug_adds_the_traceback(tmp_path, capsys):
    (tmp_path / "root").write_text("")
    assert main(["features", "--debug", f"lake.root={tmp_path / 'root'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "PreflightError" in err
    assert err.strip().splitlines()[-1].startswith("sparkrec: lake.root")


@pytest.mark.parametrize(("model", "split"), [("hybrid", None), ("hybrid", "temporal_loo"), ("ease", "stratified")])
def test_the_command_a_missing_model_error_suggests_is_one_the_cli_accepts(tmp_path, model, split):
    """An error that tells users what to run must name a command that exists (one once said
    ``--set``, which the CLI never had)."""
    import re
    import shlex

    from sparkrec.cli import _parser
    from sparkrec.config import load_config
    from sparkrec.errors import ModelNotFoundError
    from sparkrec.model.registry import latest_run_id, mlflow_setup

    mlflow_setup(str(tmp_path / "ml"), "sparkrec")
    with pytest.raises(ModelNotFoundError) as err:
        latest_run_id(str(tmp_path / "ml"), "sparkrec", split=split, model=model)
    (command,) = re.findall(r"run `([^`]+)` first", str(err.value))
    words = shlex.split(command)
    assert words[0] == "sparkrec"
    args = _parser().parse_args(words[1:])
    load_config(None, args.overrides)  # every override it names is a real config key
