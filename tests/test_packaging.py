"""The wheel's metadata keeps to what a cluster's runtime tolerates (pyproject.toml + constraints.txt)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_runtime_requirements_are_ranges_and_leave_pyspark_to_the_cluster():
    core = PROJECT["dependencies"]
    assert [r for r in core if "==" in r] == []
    assert "pyspark" not in {_name(r) for r in core}
    assert [_name(r) for r in PROJECT["optional-dependencies"]["spark"]] == ["pyspark"]
    assert "tqdm" not in {_name(r) for r in core}  # only training shows progress bars


def test_cluster_engines_are_extras():
    extras = PROJECT["optional-dependencies"]
    assert [_name(r) for r in extras["delta"]] == ["delta-spark"]
    assert [_name(r) for r in extras["sparknlp"]] == ["spark-nlp"]


def test_every_verified_pin_constrains_a_declared_requirement():
    """A pin names a declared requirement, or says which declared one it comes with
    (``# via onnxscript``): a transitive pin whose parent is gone is stale."""
    declared = {_name(r) for r in PROJECT["dependencies"]}
    declared |= {_name(r) for reqs in PROJECT["optional-dependencies"].values() for r in reqs}
    lines = [line.partition("#") for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = [(pin.strip(), note) for pin, _, note in lines if pin.strip()]
    assert pins and all("==" in pin for pin, _ in pins)
    for pin, note in pins:
        via = set(re.findall(r"[a-z0-9_.-]+", note.split(":")[0].removeprefix(" via ").lower())) \
            if note.strip().startswith("via ") else set()
        assert _name(pin) in declared or via & declared, pin
    assert "constraints.txt" in (ROOT / "scripts" / "setup_env.sh").read_text()


def test_license_is_an_spdx_expression():
    assert PROJECT["license"] == "Apache-2.0"
