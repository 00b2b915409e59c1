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


GENERIC = "data.generic={interactions: {path: x.csv, columns: {user: u, item: i}}}"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["lake.namespace=../../etc"], "lake.namespace = '../../etc': must match"),
    (["lake.catalog=main; DROP TABLE x"], "lake.catalog = 'main; DROP TABLE x': must match"),
    (["spark.driver_memory=lots"], "spark.driver_memory = 'lots': not a JVM memory size"),
    (["evaluation.ks=[0,-3]"], "evaluation.ks.0 = 0: Input should be greater than 0; evaluation.ks.1 = -3"),
    (["evaluation.ks=[]"], "evaluation.ks"),
    (["train.split=nope"], "train.split = 'nope': Input should be 'temporal_loo'"),
    (["evaluation.split=none"], "evaluation.split = 'none'"),
    (["embed.splits=[temporal_loo, nope]"], "embed.splits.1 = 'nope'"),
    (["evaluation.split=cold_users", "features.splits.cold_users_fraction=null"],
     "evaluation.split is 'cold_users' but features.splits.cold_users_fraction = None disables"),
    (["ingest.timestamp_min=2999-01-01"], "timestamp_min (2999-01-01T00:00:00) is in the future"),
    (["ingest.timestamp_max=1980-01-01"], "timestamp_max (1980-01-01 00:00:00) is not after timestamp_min"),
    (["data.dataset=generic", GENERIC, "data.generic.rating_min=5", "data.generic.rating_max=1"],
     "data.generic: rating_min (5.0) is above rating_max (1.0)"),
    (["data.dataset=generic", GENERIC, "data.generic.item_id_pattern=[a-"],
     "data.generic.item_id_pattern = '[a-': not a valid regular expression"),
    (["data.dataset=generic", GENERIC, "data.generic.interactions.timestamp_format=YYYY-ww"],
     "data.generic.interactions.timestamp_format = 'YYYY-ww': not a valid datetime pattern: letter 'Y'"),
    (["data.dataset=generic", GENERIC, "data.generic.interactions.csv.encoding=klingon"],
     "data.generic.interactions.csv.encoding = 'klingon': unknown encoding"),
    (["train.sparse_ids=true", "train.weight_decay=0.01"],
     "train: sparse_ids: true steps the ID tables with SparseAdam, which has no weight decay"),
])
def test_bad_values_and_cross_field_rules_fail_at_load_in_one_line(overrides, expected):
    """Each was accepted before (issue 15, finding 5) and failed late or never."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_patterns_and_sizes_still_load():
    cfg = load_config(None, ["data.dataset=generic", GENERIC, "spark.driver_memory=512m", "lake.namespace=shop_2",
                             "data.generic.interactions.timestamp_format=yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX",
                             "data.generic.item_id_pattern=[A-Z0-9]{10}", "train.split=none"])
    assert cfg.namespace == "shop_2" and cfg.spark.driver_memory == "512m"


def test_split_names_are_the_features_stage_splits():
    from sparkrec.config import SPLIT_NAMES, SplitConfig
    from sparkrec.features.splits import enabled_splits

    assert set(enabled_splits(SplitConfig(), has_timestamps=True)) == set(SPLIT_NAMES)


def test_sparse_id_tables_are_chosen_by_device_and_decay():
    """Off by default; auto: sparse on CPU (gloo and Horovod all-reduce sparse rows), dense on a
    GPU (NCCL cannot) and wherever weight decay is set (SparseAdam has none)."""
    assert not load_config(None, []).train.sparse_id_tables("cpu")
    auto = load_config(None, ["train.sparse_ids=auto"]).train
    assert auto.sparse_id_tables("cpu") and not auto.sparse_id_tables("cuda")
    assert not load_config(None, ["train.sparse_ids=auto", "train.weight_decay=0.01"]).train.sparse_id_tables("cpu")
    assert load_config(None, ["train.sparse_ids=true"]).train.sparse_id_tables("cuda")
    assert not load_config(None, ["train.sparse_ids=false"]).train.sparse_id_tables("cpu")
