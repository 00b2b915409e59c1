"""notebooks/: Databricks source files that open in Jupyter, and that run headless on the sample.

The fast tests check the format (cells, widgets, jupytext) and the helpers; the slow one executes
all six notebooks in order on one work dir with nbclient (fresh kernels, as CI does), fails on
any error cell, and checks each produced its key outputs (tables, plots, the inline report).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparkrec import notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
NAMES = ["00_quickstart", "01_data_quality", "02_text_embeddings", "03_training", "04_evaluation",
         "05_cold_start_and_explanations"]


def test_the_six_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_databricks_source_format(path):
    text = path.read_text()
    assert text.startswith("# Databricks notebook source\n")
    assert "# COMMAND ----------" in text
    cells = notebook.databricks_cells(text)
    assert cells[0][0] == "markdown" and cells[0][1].startswith("# ")  # a title first
    code = [c for kind, c in cells if kind == "code"]
    for c in code:
        ast.parse(c)  # every code cell is valid Python on its own
    # parameters come from widgets (dbutils on Databricks), and the library does the work
    assert "notebook.widgets(" in code[0] and 'globals().get("dbutils")' in code[0]
    assert "work_dir" in code[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_opens_through_jupytext(path):
    jupytext = pytest.importorskip("jupytext", reason="the notebooks extra is not installed")
    nb = jupytext.read(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for kind, text in notebook.databricks_cells(path.read_text()):
        if kind == "code":
            assert text.splitlines()[0] in code
    converted = notebook.to_notebook(path)
    assert [c.cell_type for c in converted.cells].count("markdown") >= 2
    assert not any("MAGIC" in c.source or "COMMAND" in c.source for c in converted.cells)


def test_widgets_on_databricks_and_locally(monkeypatch):
    class Widgets:
        def __init__(self):
            self.values = {"work_dir": "/Volumes/main/tmp/nb"}  # typed in (or a job parameter)

        def text(self, name, default):
            self.values.setdefault(name, default)

        def get(self, name):
            return self.values[name]

    class DbUtils:
        widgets = Widgets()

    defaults = {"work_dir": "notebook-work", "fast": "true"}
    assert notebook.widgets(defaults, DbUtils()) == {"work_dir": "/Volumes/main/tmp/nb", "fast": "true"}
    monkeypatch.delenv("SPARKREC_NB_WORK_DIR", raising=False)
    assert notebook.widgets(defaults) == defaults
    monkeypatch.setenv("SPARKREC_NB_WORK_DIR", "/tmp/x")
    assert notebook.widgets(defaults)["work_dir"] == "/tmp/x"


def test_notebook_config_puts_everything_under_the_work_dir(tmp_path):
    cfg = notebook.notebook_config({"conf": "", "work_dir": str(tmp_path), "fast": "true",
                                    "overrides": "train.epochs=4"}, "evaluation.split=stratified")
    assert cfg.lake.root == str(tmp_path / "lake") and cfg.train.mlflow_uri == str(tmp_path / "mlruns")
    assert cfg.train.workdir == str(tmp_path / "train")
    assert cfg.evaluation.report_dir == str(tmp_path / "reports")
    assert cfg.train.epochs == 4  # overrides after the fast settings
    assert cfg.train.blend_trials == 3 and cfg.evaluation.split == "stratified"
    # fast: only the splits this run uses are written (each costs a features pass)
    assert cfg.features.splits.stratified_ratio is not None and cfg.features.splits.random_ratio is None
    assert cfg.features.splits.temporal_leave_last_n == 1  # embed.splits=[temporal_loo] in the fast settings
    assert notebook.notebook_config({"fast": "false"}).train.epochs == 10


def test_databricks_cells_rejects_other_magics():
    with pytest.raises(ValueError, match="only %md"):
        notebook.databricks_cells("# Databricks notebook source\n# MAGIC %sh\n# MAGIC ls\n")
    with pytest.raises(ValueError, match="not a Databricks"):
        notebook.databricks_cells("print(1)\n")


def test_project_2d_and_nearest():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 8)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    xy = notebook.project_2d(m)
    assert xy.shape == (50, 2) and np.allclose(xy, notebook.project_2d(m.copy()))
    assert xy[:, 0].var() >= xy[:, 1].var()  # the first axis explains the most
    items = pd.DataFrame({"item_idx": np.arange(50), "title": [f"t{i}" for i in range(50)]})
    near = notebook.nearest(items, m, m[7], k=3)
    assert near["item_idx"].iloc[0] == 7 and near["cosine"].iloc[0] == pytest.approx(1.0)
    assert 7 not in notebook.nearest(items, m, m[7], k=3, exclude=[7])["item_idx"].tolist()


# ------------------------------------------------------------------------------- headless run
def _outputs(nb) -> tuple[str, int, bool]:
    """(all text and HTML of the outputs, number of PNG images, an error output exists)."""
    texts, images, error = [], 0, False
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                error = True
            if "text" in out:
                texts.append(out["text"])
            data = out.get("data", {})
            images += "image/png" in data
            texts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(texts), images, error


KEY_OUTPUTS = {  # what each notebook must have shown: (strings in its outputs, at least this many plots)
    "00_quickstart": (["recommendations", "item_embeddings", "Because you liked"], 1),
    "01_data_quality": (["unknown_item", "rating_out_of_range", "duplicate_row", "quarantine"], 3),
    "02_text_embeddings": (["cosine", "Toy Story"], 1),
    "03_training": (["torchdistributor", "loss", "recall_at_20", "FINISHED"], 1),
    "04_evaluation": (["ndcg@10", "most_popular", "content_only", "<iframe srcdoc="], 2),
    "05_cold_start_and_explanations": (["interests", "explanation:", "evidence:", "cosine"], 1),
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    pytest.importorskip("nbclient", reason="the notebooks extra is not installed (pip install -e .[notebooks])")
    import nbformat

    work = tmp_path_factory.mktemp("nb-work")
    out = work / "executed"
    env = {"SPARKREC_NB_WORK_DIR": str(work), "PYSPARK_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           # the widgets a user would turn down for a quicker look: 64-token texts, one epoch in 03,
           # four of the six models in 04 (test_evaluate judges all six)
           "SPARKREC_NB_OVERRIDES": "embed.max_length=64", "SPARKREC_NB_EPOCHS": "1",
           "SPARKREC_NB_MODELS": "hybrid,most_popular,ease,content_only"}
    results = {}
    for path in NOTEBOOKS:
        started = time.perf_counter()
        error = None
        try:
            notebook.execute(path, out, env, timeout=900)
        except Exception as exc:  # the partial notebook, with the failing cell, was written
            error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        seconds = time.perf_counter() - started
        nb = nbformat.read(out / f"{path.stem}.ipynb", as_version=4)
        results[path.stem] = {"nb": nb, "error": error, "seconds": seconds}
        print(f"{path.stem}: {seconds:.1f} s" + (f" FAILED {error[:300]}" if error else ""), flush=True)
    (work / "durations.json").write_text(json.dumps({k: round(v["seconds"], 1) for k, v in results.items()}))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless_and_shows_its_key_outputs(executed, name):
    run = executed[name]
    assert run["error"] is None, run["error"]
    text, images, error = _outputs(run["nb"])
    assert not error
    strings, min_images = KEY_OUTPUTS[name]
    for s in strings:
        assert s in text, f"{name}: {s!r} not in its outputs"
    assert images >= min_images, f"{name}: {images} plots, expected >= {min_images}"


@pytest.mark.slow
def test_later_notebooks_reused_the_lake_of_the_first(executed):
    """Run in sequence on one work dir, only 00 built the pipeline: the others found its tables."""
    text, _, _ = _outputs(executed["00_quickstart"]["nb"])
    assert "stages run now: ['ingest', 'features', 'embed', 'train', 'recommend']" in text
    assert os.environ.get("SPARKREC_NB_WORK_DIR") is None  # the kernels got it, this process kept its own
