"""The bundled sample when sparkrec is imported from a zip: ``spark-submit --py-files
sparkrec-*.whl`` puts the wheel itself on the driver's path, and Spark cannot read CSVs inside
an archive, so ``sample_dir()`` extracts them (found by tests/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sample_dir_extracts_from_a_zip_import(tmp_path):
    archive = tmp_path / "sparkrec-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (REPO / "sparkrec").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(REPO).as_posix())
    env = {**os.environ, "PYTHONPATH": str(archive), "SPARKREC_CACHE": str(tmp_path / "cache")}
    probe = ("import sparkrec.ingest.presets as p; assert '.whl' in p.__file__, p.__file__; "
             "d = p.sample_dir(); print(d); print(len((d / 'ratings.csv').read_bytes().splitlines()))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    where, lines = done.stdout.split()
    assert Path(where).parent == tmp_path / "cache" and Path(where, "movies.csv").is_file()
    original = (REPO / "sparkrec/data/sample/ml-latest-small/ratings.csv").read_bytes()
    assert int(lines) == len(original.splitlines())


def test_sample_dir_is_the_package_dir_when_installed():
    from sparkrec.ingest.presets import SAMPLE_DIR, sample_dir

    assert sample_dir() == SAMPLE_DIR and (SAMPLE_DIR / "ratings.csv").is_file()
