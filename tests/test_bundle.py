"""databricks.yml + resources/: the Databricks asset bundle, checked statically.

The Databricks CLI (``databricks bundle validate``) and a workspace are not available here, so
this test does what can be done without them: loads the bundle and its includes, resolves every
``${var.*}`` (per target), every task's entry point and config file, the wheel artifact, and the
tasks' dependency order; and loads each task's config with its overrides through sparkrec's own
config loader, so a typo in a key fails here, not on a cluster.
"""

from __future__ import annotations

import itertools
import re
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VAR = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
PIPELINE = ["ingest", "features", "embed", "train", "recommend"]


@pytest.fixture(scope="module")
def bundle() -> dict:
    root = yaml.safe_load((REPO / "databricks.yml").read_text())
    resources: list[tuple[Path, dict]] = []
    for pattern in root.get("include", []):
        matches = sorted(REPO.glob(pattern))
        assert matches, f"include {pattern!r} matches no file"
        resources += [(p, yaml.safe_load(p.read_text())) for p in matches]
    jobs = {}
    for path, doc in resources:
        for key, job in doc["resources"]["jobs"].items():
            assert key not in jobs, f"job {key} defined twice"
            jobs[key] = (path, job)
    return {"root": root, "jobs": jobs, "files": [REPO / "databricks.yml", *[p for p, _ in resources]]}


def resolve(value: str, variables: dict[str, object], base: Path) -> str:
    """What the CLI would substitute: ${var.x}, ${workspace.file_path} (the synced bundle root,
    here the repository) and ${bundle.*}; {{job.run_id}} is a Databricks run-time value, kept."""
    value = VAR.sub(lambda m: str(variables[m.group(1)]), value)
    value = value.replace("${workspace.file_path}", str(REPO)).replace("${bundle.name}", "sparkrec")
    value = value.replace("${bundle.target}", "dev")
    assert not REF.search(value), f"unresolved reference in {value!r}"
    return value


def variables_for(root: dict, target: str) -> dict[str, object]:
    values = {name: spec.get("default") for name, spec in root["variables"].items()}
    values.update(root["targets"][target].get("variables", {}))
    return values


def test_every_variable_is_defined_with_a_value_in_every_target(bundle):
    root = bundle["root"]
    defined = set(root["variables"])
    used = set()
    for path in bundle["files"]:
        used |= set(VAR.findall(path.read_text()))
    assert used, "no ${var.*} used"
    assert used <= defined, f"undefined variables: {sorted(used - defined)}"
    assert defined <= used | {"timezone"}, f"defined but unused: {sorted(defined - used)}"
    for target in root["targets"]:
        assert set(root["targets"][target].get("variables", {})) <= defined
        values = variables_for(root, target)
        assert all(values[name] is not None for name in used), target


def test_targets_dev_and_prod(bundle):
    targets = bundle["root"]["targets"]
    assert set(targets) == {"dev", "prod"}
    assert targets["dev"]["mode"] == "development" and targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production"
    assert variables_for(bundle["root"], "prod")["schedule_pause_status"] == "UNPAUSED"


def test_the_wheel_is_the_artifact(bundle):
    artifacts = bundle["root"]["artifacts"]
    (wheel,) = artifacts.values()
    assert wheel["type"] == "whl"
    assert (REPO / wheel["path"] / "pyproject.toml").is_file()
    assert "wheel" in wheel["build"] and "dist" in wheel["build"]
    for _, job in bundle["jobs"].values():
        for task in job["tasks"]:
            assert {"whl": "../dist/*.whl"} in task["libraries"], task["task_key"]


def test_the_daily_job_runs_the_stages_in_dependency_order(bundle):
    _, job = bundle["jobs"]["sparkrec_pipeline"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert set(tasks) == set(PIPELINE)
    graph = {k: {d["task_key"] for d in t.get("depends_on", [])} for k, t in tasks.items()}
    assert list(TopologicalSorter(graph).static_order()) == PIPELINE
    for before, stage in itertools.pairwise(PIPELINE):
        assert graph[stage] == {before}
    assert graph["ingest"] == set()
    assert job["schedule"]["quartz_cron_expression"] == "${var.pipeline_cron}"
    assert variables_for(bundle["root"], "prod")["pipeline_cron"] == "0 0 3 * * ?"  # daily, 03:00
    assert job["max_concurrent_runs"] == 1


def test_clusters_are_variables_and_train_runs_on_gpu_nodes(bundle):
    for key, (_, job) in bundle["jobs"].items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for cluster in clusters.values():
            for field in ("spark_version", "node_type_id", "num_workers"):
                assert VAR.fullmatch(str(cluster[field])), f"{key}: {field} is not a variable"
        for task in job["tasks"]:
            assert task["job_cluster_key"] in clusters, task["task_key"]
            if task["task_key"].startswith("train"):
                gpu = clusters[task["job_cluster_key"]]
                assert gpu["node_type_id"] == "${var.gpu_node_type}"
                assert "gpu" in variables_for(bundle["root"], "prod")["gpu_spark_version"]
                assert "train.use_gpu=true" in task["spark_python_task"]["parameters"]
            else:
                assert clusters[task["job_cluster_key"]]["node_type_id"] == "${var.cpu_node_type}"


def test_weekly_evaluation_trains_on_its_split_first(bundle):
    _, job = bundle["jobs"]["sparkrec_evaluate"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert set(tasks) == {"train_on_split", "evaluate"}
    assert tasks["evaluate"]["depends_on"] == [{"task_key": "train_on_split"}]
    assert "train.split=${var.evaluation_split}" in tasks["train_on_split"]["spark_python_task"]["parameters"]
    assert "evaluation.split=${var.evaluation_split}" in tasks["evaluate"]["spark_python_task"]["parameters"]
    cron = variables_for(bundle["root"], "prod")["evaluate_cron"]
    assert cron.split()[-1] in {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}  # once a week


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_task_entry_point_and_config_resolve(bundle, target):
    from sparkrec.cli import STAGES, _parser
    from sparkrec.config import load_config

    values = variables_for(bundle["root"], target)
    seen = 0
    for path, job in bundle["jobs"].values():
        for task in job["tasks"]:
            spt = task["spark_python_task"]
            entry = (path.parent / spt["python_file"]).resolve()
            assert entry.is_file(), f"{task['task_key']}: {entry} missing"
            assert entry.parent == REPO / "jobs"
            stage = entry.stem
            assert stage in STAGES
            assert f'main(["{stage}", *sys.argv[1:]])' in entry.read_text()  # the thin job runs that stage
            params = [resolve(str(p), values, path.parent) for p in spt["parameters"]]
            args = _parser().parse_intermixed_args([stage, *params])  # what jobs/<stage>.py parses
            assert Path(args.conf).is_file(), args.conf
            assert args.run_id == "{{job.run_id}}"
            cfg = load_config(args.conf, args.overrides)  # every override is a real key with a valid value
            assert cfg.lake.engine == "spark-delta" and cfg.lake.catalog == values["catalog"]
            if stage == "train":
                assert cfg.train.use_gpu and not cfg.train.local_mode
                assert cfg.train.num_workers == int(values["gpu_workers"])
            seen += 1
    assert seen == 7


def test_bundle_files_are_synced(bundle):
    include = bundle["root"]["sync"]["include"]
    assert "conf/*.yaml" in include and "jobs/*.py" in include
    assert (REPO / bundle["root"]["variables"]["conf_file"]["default"]).is_file()
