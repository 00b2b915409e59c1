from pathlib import Path

import pytest

from sparkrec.config import ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml", "databricks.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "conf" / name)
    assert cfg.namespace


def test_overrides_parse_yaml_values():
    assert parse_override("features.history_length=20") == (["features", "history_length"], 20)
    assert parse_override("spark.master=local[2]") == (["spark", "master"], "local[2]")
    assert parse_override("lake.catalog=null") == (["lake", "catalog"], None)
    cfg = load_config(None, ["data.dataset=bookcrossing", "features.splits.random_ratio=0.7"])
    assert cfg.data.dataset == "bookcrossing" and cfg.features.splits.random_ratio == 0.7
    assert cfg.namespace == "bookcrossing"


def test_errors_name_the_key_and_the_value():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.dataset=netflix", "features.history_length=-3", "spark.bogus=1"])
    text = str(err.value)
    assert "data.dataset = 'netflix'" in text
    assert "features.history_length = -3" in text
    assert "spark.bogus" in text and "Extra inputs" in text


def test_extends_merges_and_detects_loops(tmp_path):
    (tmp_path / "base.yaml").write_text("lake:\n  root: /tmp/a\nfeatures:\n  history_length: 7\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nlake:\n  engine: delta-rs\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.lake.root == "/tmp/a" and cfg.lake.engine == "delta-rs" and cfg.features.history_length == 7
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")


def test_generic_dataset_requires_its_source():
    with pytest.raises(ConfigError, match=r"data\.generic is not set"):
        load_config(None, ["data.dataset=generic"])


def test_cli_takes_overrides_after_the_conf_option(capsys):
    from sparkrec.cli import main

    assert main(["show-config", "--conf", "conf/local.yaml", "train.epochs=3", "evaluation.ks=[1,2]"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "- 1\n  - 2" in out
