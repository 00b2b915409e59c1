"""Shared fixtures: one real local Spark session for the whole run, real Delta tables on disk."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SPARKREC_DATASETS", REPO.parent / "shared" / "datasets"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# CI runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`),
# scheduled by the groups below: a module's tests stay on one worker (its module fixtures are built
# once); the modules that share the sample's session fixtures (its lake, its embedded text, the
# models trained on it) form one group, so each of those is built once too; and the longest groups
# go out first, so neither worker is left with a long tail. Serial runs only see the order.
# (xdist's own `xdist_group` marks do not reach its scheduler under pytest 9.2: it renames
# `item._nodeid`, which pytest no longer reads; hence the scheduler hook.)
SAMPLE_MODULES = {"test_evaluate", "test_explain_llm", "test_features", "test_model", "test_recommend",
                  "test_serve", "test_serve_baseline", "test_serve_workers", "test_serving"}
LONGEST_FIRST = ["sample", "test_notebooks", "test_cluster", "test_object_storage", "test_stream",
                 "test_baselines", "test_kill_rerun", "test_bookcrossing_e2e", "test_report"]


def _group(nodeid: str) -> str:
    module = Path(nodeid.split("::", 1)[0]).stem
    return "sample" if module in SAMPLE_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # stable: module order kept within


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``: whole groups of ``_group`` to a worker, in collection order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def spark():
    from sparkrec.config import SparkConfig
    from sparkrec.logs import setup_logging
    from sparkrec.session import get_spark

    setup_logging("WARNING")
    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="6g"))
    yield session
    session.stop()


@pytest.fixture()
def lake(spark, tmp_path):
    from sparkrec.lake import DeltaRsLake, RunContext

    return DeltaRsLake(spark, str(tmp_path / "lake"), "test", context=RunContext(stage="test"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "ml-latest-small" / "ratings.csv").is_file():
        message = f"shared datasets not found at {DATASETS}"
        if os.environ.get("CI") == "true":  # CI has ../shared beside the clone: missing is a failure
            pytest.fail(message + " (CI=true: the real-data tests must run)")
        pytest.skip(message)
    return DATASETS


@pytest.fixture(scope="session")
def sample_lake(spark, tmp_path_factory):
    """The bundled sample, ingested and featurised once for every test module that needs it."""
    from sparkrec.config import load_config
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.lake import DeltaRsLake, RunContext

    root = tmp_path_factory.mktemp("sample-lake")
    cfg = load_config(None, [f"lake.root={root}", "features.history_length=20",
                             f"train.workdir={root / 'work'}", f"train.mlflow_uri={root / 'mlruns'}",
                             "train.progress=false", "train.blend_trials=4"])  # the search path, not its quality
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="fixture"))
    run_ingest(cfg, spark, lake)
    run_features(cfg, spark, lake)
    return cfg, lake


def _private_copy(spark, base_cfg, root: Path):
    """A copy of a sample lake under ``root`` with its own work dir and MLflow store."""
    import shutil

    from sparkrec.lake import DeltaRsLake, RunContext

    shutil.copytree(base_cfg.lake.root, root / "lake", ignore=shutil.ignore_patterns("work", "mlruns"))
    cfg = base_cfg.model_copy(deep=True)
    cfg.lake.root, cfg.train.workdir = str(root / "lake"), str(root / "work")
    cfg.train.mlflow_uri = str(root / "ml")
    return cfg, DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="test"))


@pytest.fixture(scope="session")
def embedded_sample(spark, sample_lake, tmp_path_factory):
    """The sample with its item text embedded (the all-data table and every split's), once per
    run: the modules that need text start from a copy of it instead of encoding 6,003 items each."""
    from sparkrec.text import run_embed

    cfg, lake = _private_copy(spark, sample_lake[0], tmp_path_factory.mktemp("sample-embedded"))
    run_embed(cfg, spark, lake)
    return cfg, lake


@pytest.fixture(scope="session")
def sample_copy(spark, sample_lake, tmp_path_factory):
    """A factory of private copies of the sample lake, each with its own work dir and MLflow
    store, for modules that write tables or models the others must not see."""

    def make(name: str):
        root = tmp_path_factory.mktemp(name)
        return (*_private_copy(spark, sample_lake[0], root), root)

    return make


@pytest.fixture(scope="session")
def embedded_copy(spark, embedded_sample, tmp_path_factory):
    """Like ``sample_copy``, from the sample whose item text is already embedded."""

    def make(name: str):
        root = tmp_path_factory.mktemp(name)
        return (*_private_copy(spark, embedded_sample[0], root), root)

    return make


def _small_hybrid(cfg) -> None:
    """The small hybrid the trained fixtures fit: local backend, 2 epochs, a 10-item history."""
    cfg.train.backend, cfg.train.epochs, cfg.model.history = "local", 2, 10


@pytest.fixture(scope="session")
def trained_sample(spark, embedded_copy):
    """A factory: a private sample copy with item text, one user known only by ``interest``
    (``kid_fan``), a small hybrid and its batch lists (k=10, scored in 128-user batches, so
    across several). Returns (a copy of its cfg, lake, recommend summary).

    Built once per ``name`` (a training and a recommend cost minutes): modules that ask for the
    same name share the lake and model, so each must leave them usable or rebuild what it reads."""
    built: dict[str, tuple] = {}

    def make(name: str, interest: str):
        from sparkrec.model.job import run_train
        from sparkrec.recommend import run_recommend
        from sparkrec.text import run_embed

        if name not in built:
            cfg, lake, root = embedded_copy(name)
            interests = root / "interests.csv"
            interests.write_text(f'user_id,text\nkid_fan,"{interest}"\n')
            cfg.embed.user_text_path = str(interests)
            _small_hybrid(cfg)
            cfg.recommend.k, cfg.recommend.item_block_rows, cfg.recommend.user_batch = 10, 2000, 128
            run_embed(cfg, spark, lake)
            run_train(cfg, spark, lake)
            summary = run_recommend(cfg, spark, lake)
            summary["events_version"] = lake.version("events")  # for modules that check the lake moved on
            built[name] = (cfg, lake, summary, interest)
        cfg, lake, summary, built_for = built[name]
        assert built_for == interest, f"trained_sample({name!r}) was built for another interest"
        return cfg.model_copy(deep=True), lake, summary

    return make


@pytest.fixture(scope="session")
def temporal_model(spark, embedded_copy):
    """A private sample copy with item text and one small hybrid fitted on temporal
    leave-last-one's train part: what test_evaluate judges and test_model's local-backend run.
    Returns (a copy of its cfg, lake, root, the training summary)."""
    from sparkrec.model.job import run_train

    cfg, lake, root = embedded_copy("temporal-model")
    _small_hybrid(cfg)
    cfg.train.split = "temporal_loo"  # an evaluated split: the default (none) trains on its test rows too
    run = run_train(cfg, spark, lake)
    return cfg.model_copy(deep=True), lake, root, run
