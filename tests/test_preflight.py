"""Pre-flight checks (issue 15, finding 5): bad inputs and lake roots are refused before Spark
starts, in one line naming the file and the column, instead of half-way through ingest."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkrec.config import load_config
from sparkrec.errors import PreflightError, UserError
from sparkrec.preflight import check_inputs, expand_braces


def generic(tmp_path: Path, events: str, items: str | None = None, *extra: str):
    overrides = ["data.dataset=generic", f"lake.root={tmp_path / 'lake'}",
                 "data.generic={interactions: {path: '" + events + "', "
                 "columns: {user: user, item: item, rating: stars}}}"]
    if items is not None:
        overrides.append("data.generic.items={path: '" + items + "', columns: {id: sku, title: name}}")
    return load_config(None, [*overrides, *extra])


def refused(cfg, stages=("ingest",)) -> str:
    with pytest.raises(PreflightError) as err:
        check_inputs(cfg, list(stages))
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, UserError)
    return message


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "items.csv").write_text("sku,name\nI1,One\nI2,Two\n")
    (tmp_path / "events.csv").write_text("user,item,stars\nU1,I1,5\n")
    return tmp_path


def test_a_sound_source_passes(files):
    check_inputs(generic(files, str(files / "events.csv"), str(files / "items.csv")), ["ingest"])


def test_missing_file_and_glob_matching_nothing(files):
    assert "data.generic.interactions.path" in refused(generic(files, str(files / "nope.csv")))
    assert "no such file" in refused(generic(files, str(files / "nope.csv")))
    assert "matches no file" in refused(generic(files, str(files / "2024-*.csv")))


def test_empty_file_and_header_only(files):
    (files / "empty.csv").write_text("")
    assert refused(generic(files, str(files / "empty.csv"))).startswith(f"{files / 'empty.csv'}: empty file")
    (files / "header.csv").write_text("user,item,stars\n\n")
    assert "no data rows" in refused(generic(files, str(files / "header.csv")))


def test_missing_column_names_the_file_the_column_and_its_role(files):
    (files / "bad.csv").write_text("user,item,rating\nU1,I1,5\n")
    message = refused(generic(files, str(files / "bad.csv"), str(files / "items.csv")))
    assert str(files / "bad.csv") in message and "'stars' (interactions.columns.rating)" in message
    assert "['user', 'item', 'rating']" in message


def test_items_columns_are_checked_before_interactions_are_read(files):
    (files / "items2.csv").write_text("sku,title\nI1,One\n")
    message = refused(generic(files, str(files / "events.csv"), str(files / "items2.csv")))
    assert "'name' (items.columns.title)" in message


def test_header_not_in_the_declared_encoding(files):
    (files / "latin.csv").write_bytes("user,item,stars,caf\xe9\nU1,I1,5,x\n".encode("latin-1"))
    message = refused(generic(files, str(files / "latin.csv")))
    assert "cannot read the header as UTF-8" in message
    cfg = generic(files, str(files / "latin.csv"), None, "data.generic.interactions.csv.encoding=ISO-8859-1")
    check_inputs(cfg, ["ingest"])


def test_files_of_one_glob_must_share_a_header_and_braces_expand(files):
    (files / "a.csv").write_text("user,item,stars\nU1,I1,5\n")
    (files / "b.csv").write_text("item,user,stars\nI1,U2,4\n")
    assert "differs from a.csv's" in refused(generic(files, str(files / "[ab].csv")))
    with gzip.open(files / "c.csv.gz", "wt") as out:
        out.write("user,item,stars\nU3,I2,1\n")
    check_inputs(generic(files, str(files / "{a.csv,c.csv.gz}")), ["ingest"])
    assert expand_braces("x/{a,b{1,2}}.csv") == ["x/a.csv", "x/b1.csv", "x/b2.csv"]


def test_parquet_schema_is_read_from_the_footer(files):
    pq.write_table(pa.table({"user": ["U1"], "item": ["I1"]}), files / "events.parquet")
    cfg = generic(files, str(files / "events.parquet"), None, "data.generic.interactions.format=parquet")
    assert "'stars' (interactions.columns.rating)" in refused(cfg)
    (files / "junk.parquet").write_text("not parquet")
    cfg = generic(files, str(files / "junk.parquet"), None, "data.generic.interactions.format=parquet")
    assert "not a readable Parquet file" in refused(cfg)


def test_lake_root_that_is_a_file(files):
    (files / "root").write_text("a file")
    cfg = generic(files, str(files / "events.csv"), None, f"lake.root={files / 'root'}")
    assert refused(cfg, ["features"]) == f"lake.root = '{files / 'root'}': is a file, not a directory"
    cfg = generic(files, str(files / "events.csv"), None, f"lake.root={files / 'root' / 'below'}")
    assert "is a file, not a directory" in refused(cfg, ["features"])


def test_the_users_file_of_a_partial_refresh(files):
    cfg = generic(files, str(files / "events.csv"))
    with pytest.raises(PreflightError, match="--users"):
        check_inputs(cfg, ["recommend"], str(files / "users.txt"))
