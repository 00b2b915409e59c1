"""`sparkrec serve`: the real HTTP server (uvicorn in a thread) on the sample lake, called with httpx.

One trained model, the batch `recommend` stage's table beside it: the server must give known
users the same lists and the same explanations as the batch stage, text-only users the same
list as `recommend-text`, answer every bad request with a clear 4xx, agree with itself between
the exact and the faiss index, pick up new events, and switch to a newly trained model without
a failed request.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import numpy as np
import pytest
from pyspark.sql import functions as F

K = 10
KIDS = "animated movie for kids, Pixar"


@pytest.fixture(scope="module")
def trained(spark, trained_sample):
    """The sample lake + item text + interest text + a small model (shared with test_recommend),
    and batch lists written afresh here, since test_recommend's partial refreshes change some."""
    from sparkrec.recommend import run_recommend

    cfg, lake, _ = trained_sample("kids", KIDS)
    cfg.serve.reload_seconds, cfg.serve.max_k = 1.0, 50
    run_recommend(cfg, spark, lake)
    return cfg, lake, lake.read("recommendations").toPandas()


@pytest.fixture(scope="module")
def server(spark, trained):
    from sparkrec.serve import build, start_in_thread

    cfg, lake, _ = trained
    app, poller = build(cfg, spark, lake, load_in_background=False)
    running = start_in_thread(app)
    client = httpx.Client(base_url=running.url, timeout=60)
    yield client, app, poller
    client.close()
    poller.stop()
    running.stop()


def _wait_until_served(client, run_id, what):
    """Polls /ready until the service answers from ``run_id`` (a hot reload), at most 120 s."""
    deadline = time.monotonic() + 120
    while client.get("/ready").json()["model_run_id"] != run_id:
        assert time.monotonic() < deadline, f"{what} was never loaded"
        time.sleep(0.2)


def _post(client, body, status=200):
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_health_ready_and_docs(server, trained):
    client, app, _ = server
    health = client.get("/health")
    assert health.json() == {"status": "ok"}
    assert len(health.headers["x-request-id"]) == 12 and float(health.headers["x-latency-ms"]) >= 0
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["index"] == "exact" and ready["text"] is True
    assert ready["users"] > 100 and ready["model_run_id"] == app.state.holder.current.run_id
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_known_users_get_the_batch_stages_lists_and_explanations(server, trained):
    client, _, _ = server
    _, _, batch = trained
    users = sorted(batch["user_id"].dropna().loc[batch["user_idx"].notna()].unique())[:8]
    for user in users:
        body = _post(client, {"user_id": user, "k": K})
        want = batch[batch["user_id"] == user].sort_values("rank")
        got = body["items"]
        assert body["basis"] == "history" and body["index"] == "exact"
        assert [i["item_id"] for i in got] == want["item_id"].tolist()
        assert np.allclose([i["score"] for i in got], want["score"], atol=1e-4)
        assert [i["explanation"] for i in got] == want["explanation"].tolist()
        assert all(i["explanation_source"] == "template" for i in got)
        assert [i["evidence"]["history_items"] for i in got] == [list(e["history_items"]) for e in want["evidence"]]


def test_a_filter_narrows_the_list(server, trained):
    client, _, _ = server
    _, lake, batch = trained
    user = sorted(batch["user_id"].dropna().loc[batch["user_idx"].notna()].unique())[0]
    genres = {r["item_id"]: list(r["genres"] or []) for r in lake.read("item_features").select("item_id", "genres")
              .collect()}
    body = _post(client, {"user_id": user, "k": 5, "filters": {"genres": ["Comedy"], "min_year": 1990}})
    assert len(body["items"]) == 5
    assert all("Comedy" in genres[i["item_id"]] for i in body["items"])
    first = _post(client, {"user_id": user, "k": 3})["items"][0]["item_id"]
    without = _post(client, {"user_id": user, "k": 3, "filters": {"exclude_item_ids": [first]}})
    assert first not in [i["item_id"] for i in without["items"]]


def test_text_only_users_match_recommend_text(server, trained, spark):
    from sparkrec.recommend import recommend_for_text

    client, app, _ = server
    cfg, lake, batch = trained
    # the service runs the user tower under ONNX Runtime, recommend-text under PyTorch
    assert app.state.holder.current.tower_fn is not None
    assert app.state.holder.current.stats["user_tower"] == "onnx"
    body = _post(client, {"text": KIDS, "k": K})
    want = recommend_for_text(cfg, spark, lake, KIDS, K)
    assert body["basis"] == "interests"
    assert [i["item_id"] for i in body["items"]] == [r["item_id"] for r in want]
    assert [i["explanation"] for i in body["items"]] == [r["explanation"] for r in want]
    stored = _post(client, {"user_id": "kid_fan", "k": K})  # known only by interest text in the lake
    assert [i["item_id"] for i in stored["items"]] == batch.query("user_id == 'kid_fan'").sort_values("rank")[
        "item_id"].tolist()


def test_an_anonymous_session(server, trained):
    client, _, _ = server
    _, lake, _ = trained
    items = lake.read("item_features").orderBy("popularity_rank").limit(3).select("item_id").toPandas()["item_id"]
    body = _post(client, {"recent_items": items.tolist(), "k": K})
    got = [i["item_id"] for i in body["items"]]
    assert body["basis"] == "session" and len(got) == K and not set(got) & set(items)
    assert all(i["explanation"].startswith("Because you liked") for i in body["items"])


def test_similar_items(server, trained):
    client, _, _ = server
    _, lake, _ = trained
    item = lake.read("item_features").orderBy("popularity_rank").limit(1).collect()[0]["item_id"]
    r = client.get(f"/items/{item}/similar", params={"k": 5})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert len(got) == 5 and item not in [i["item_id"] for i in got]
    assert [i["score"] for i in got] == sorted([i["score"] for i in got], reverse=True)


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"user_id": "no-such-user"}, 404, "unknown user_id"),
    ({"recent_items": ["no-such-item"]}, 404, "unknown item_id"),
    ({"user_id": "1", "k": 0}, 422, "k = 0"),
    ({"user_id": "1", "k": 51}, 422, "serve.max_k = 50"),
    ({"user_id": "1", "k": "many"}, 422, "k:"),
    ({"text": "x" * 2001}, 422, "max_text_chars"),
    ({"text": "   "}, 422, "text is empty"),
    ({}, 422, "exactly one of user_id, text, recent_items"),
    ({"user_id": "1", "text": "space"}, 422, "got user_id, text"),
    ({"recent_items": []}, 422, "recent_items is empty"),
    ({"user_id": "1", "filters": {"colour": "red"}}, 422, "filters.colour"),
    ({"user_id": "1", "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_get_a_clear_4xx(server, body, status, says):
    client, _, _ = server
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["error"], r.json()


def test_malformed_json_unknown_item_and_bad_k_on_similar(server):
    client, _, _ = server
    r = client.post("/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = client.get("/items/no-such-item/similar")
    assert r.status_code == 404 and "unknown item_id" in r.json()["error"]
    r = client.get("/items/1/similar", params={"k": 1000})
    assert r.status_code == 422 and "max_k" in r.json()["error"]


def test_faiss_agrees_with_exact_for_known_and_text_only_users(trained, spark, server):
    from sparkrec.serve.index import BlendIndex, FaissIndex
    from sparkrec.serve.scoring import known_user, recommend, text_query

    cfg, _, _ = trained
    _, app, _ = server
    state = app.state.holder.current
    faiss_state = dataclasses.replace(state, index=FaissIndex(state.payload.items, cfg.serve.faiss))
    overlaps = []
    for user in list(state.users.rows)[:100]:
        q = known_user(state, user)
        exact = [r["item_id"] for r in recommend(state, q, 20, None, 3)]
        approx = [r["item_id"] for r in recommend(faiss_state, q, 20, None, 3)]
        overlaps.append(len(set(exact) & set(approx)) / len(exact))
    assert np.mean(overlaps) >= 0.95, np.mean(overlaps)
    # text-only users through the text indexes (HNSW by default): queries near catalogue texts
    tp = state.text_payload
    text_index = FaissIndex(tp.text, cfg.serve.faiss.for_text())
    text_state = dataclasses.replace(state, blend_index=BlendIndex(faiss_state.index, text_index,
                                                                   cfg.serve.faiss.blend_candidates),
                                     text_index=text_index)
    rng = np.random.default_rng(5)
    rows = rng.choice(np.flatnonzero(state.has_text), size=30, replace=False)
    queries = tp.text[rows] + rng.normal(scale=0.5 * float(tp.text[rows].std()), size=tp.text[rows].shape)
    overlaps = []
    for qv in queries.astype(np.float32):
        exact = {r["item_id"] for r in recommend(state, text_query(state, qv[None, :]), 20, None, 3)}
        approx = {r["item_id"] for r in recommend(text_state, text_query(text_state, qv[None, :]), 20, None, 3)}
        overlaps.append(len(exact & approx) / len(exact))
    assert np.mean(overlaps) >= 0.95, np.mean(overlaps)


def test_new_events_reach_the_served_lists(server, trained, spark):
    client, _, _ = server
    _, lake, batch = trained
    user = sorted(batch["user_id"].dropna().loc[batch["user_idx"].notna()].unique())[1]
    top = _post(client, {"user_id": user, "k": 3})["items"][0]["item_id"]
    version = client.get("/ready").json()["events_version"]
    idx = lake.read("item_index").filter(F.col("item_id") == top).collect()[0]["item_idx"]
    uidx = lake.read("user_index").filter(F.col("user_id") == user).collect()[0]["user_idx"]
    events = lake.read("events").filter(F.col("user_idx") == uidx)
    last = events.orderBy(F.desc("seq")).limit(1)
    new = last.withColumn("item_idx", F.lit(idx).cast("int")).withColumn("seq", F.col("seq") + 1)
    lake.upsert("events", new, ["user_idx", "item_idx", "seq"])  # what the streaming job MERGEs
    deadline = time.monotonic() + 60
    while client.get("/ready").json()["events_version"] == version:
        assert time.monotonic() < deadline, "events were never reloaded"
        time.sleep(0.2)
    assert top not in [i["item_id"] for i in _post(client, {"user_id": user, "k": 3})["items"]]  # seen now


def test_hot_reload_to_a_new_model_drops_no_request(server, trained, spark):
    from sparkrec.model.job import run_train

    client, _, _ = server
    cfg, lake, batch = trained
    old = client.get("/ready").json()["model_run_id"]
    users = sorted(batch["user_id"].dropna().loc[batch["user_idx"].notna()].unique())[:20]
    statuses: list[int] = []
    seen_models: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/recommend", json={"user_id": users[i % len(users)], "k": 5})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    seen_models.add(r.json()["model_run_id"])
                i += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        retrain = cfg.model_copy(deep=True)
        retrain.train.epochs, retrain.train.steps_per_epoch, retrain.train.blend_trials = 1, 20, 1  # quick
        new = run_train(retrain, spark, lake)["run_id"]
        _wait_until_served(client, new, "the new model")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert new != old and {old, new} <= seen_models
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_one_users_head_scores_equal_the_batch_heads():
    from sparkrec.model.blend import head_scores
    from sparkrec.model.head import LinearHead
    from sparkrec.serve.scoring import head_extra

    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(np.arange(1, 3000), 400, replace=False))
    weights = rng.normal(size=(400, 400)).astype(np.float32)
    factors = rng.normal(size=(400, 8)).astype(np.float32)
    for binary, with_factors in ((0.0, False), (1.0, False), (0.0, True)):
        params = {"binary": binary, "factor_weight": 0.5, "factor_reg": 0.1, "factor_alpha": 2.0}
        head = LinearHead(rows, weights, params, factors if with_factors else None)
        items = np.concatenate([rng.choice(rows, 30), rng.integers(1, 3000, 10)])  # repeats and non-head items
        w = rng.random(len(items)).astype(np.float32)
        want = head_scores(head, np.array([0, len(items)]), items, w)
        got = head_extra(head, items, w)
        assert (got[0] == want[0]).all() and np.allclose(got[1], want[1], atol=1e-5)


def test_factors_folded_in_once_per_snapshot_give_the_batch_heads_scores(monkeypatch):
    """A known user's factors come from the snapshot (folded in for every user at load, a few
    thousand users per solve); the head extra built on them equals the batch head's scores."""
    from sparkrec.model import factors as fold
    from sparkrec.model.blend import head_scores
    from sparkrec.model.head import LinearHead
    from sparkrec.ragged import csr
    from sparkrec.serve.scoring import head_extra
    from sparkrec.serve.state import user_factors

    monkeypatch.setattr(fold, "FOLD_IN_USERS", 5)  # several solves of users
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(np.arange(1, 3000), 300, replace=False))
    cold = np.setdiff1d(rng.choice(np.arange(1, 3000), 40, replace=False), rows)
    params = {"binary": 0.0, "factor_weight": 0.7, "factor_reg": 0.1, "factor_alpha": 2.0}
    factors, cold_factors = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(len(cold), 8))
    head = LinearHead(rows, rng.normal(size=(300, 300)).astype(np.float32), params, factors, cold,
                      cold_factors.astype(np.float32))
    histories = [np.concatenate([rng.choice(rows, n), rng.integers(1, 3000, 3)]) for n in rng.integers(0, 60, 23)]
    items = csr(histories, np.int64)
    weights = rng.random(len(items[1])).astype(np.float32)
    snapshot = user_factors(head, items, weights)
    assert snapshot.shape == (23, 8)
    for u, h in enumerate(histories):
        w = weights[items[0][u]:items[0][u + 1]]
        want = head_scores(head, np.array([0, len(h)]), h, w)
        got = head_extra(head, h, w, snapshot[u:u + 1])
        assert (got[0] == want[0]).all() and np.allclose(got[1], want[1], atol=1e-4)
    assert user_factors(LinearHead(rows, head.weights, params), items, weights) is None  # no factor term


def test_text_indexes_have_their_own_kind_and_search_width():
    import faiss
    from pydantic import ValidationError

    from sparkrec.config import FaissIndexConfig
    from sparkrec.serve.index import FaissIndex

    x = np.random.default_rng(3).normal(size=(4000, 8)).astype(np.float32)
    default = FaissIndexConfig(nprobe=4)  # items through IVF, text through HNSW at efSearch 256
    assert isinstance(FaissIndex(x, default).index, faiss.IndexIVFFlat)
    text = FaissIndex(x, default.for_text()).index
    assert isinstance(text, faiss.IndexHNSWFlat) and text.hnsw.efSearch == 256
    cfg = FaissIndexConfig(nprobe=4, text_kind="ivf", text_nprobe=12)
    assert FaissIndex(x, cfg).index.nprobe == 4 and FaissIndex(x, cfg.for_text()).index.nprobe == 12
    assert FaissIndexConfig(nprobe=4, text_kind=None).for_text().kind == "ivf"
    assert FaissIndexConfig(kind="hnsw", ef_search=64, text_ef_search=None).for_text().ef_search == 64
    with pytest.raises(ValidationError, match="text_nprobe = 12 exceeds ivf_lists = 8"):
        FaissIndexConfig(ivf_lists=8, nprobe=4, text_nprobe=12)


def test_text_neighbours_through_an_index_equal_pseudo_history():
    from sparkrec.recommend.score import neighbours_as_history, pseudo_history
    from sparkrec.serve.index import ExactIndex

    rng = np.random.default_rng(2)
    text = rng.normal(size=(300, 16)).astype(np.float32)
    text[[0, 5, 9]] = 0  # padding and items without text
    q = rng.normal(size=(3, 16)).astype(np.float32)
    has_text = np.abs(text).sum(axis=1) > 0
    near, _ = ExactIndex(text).search(q / np.linalg.norm(q, axis=1, keepdims=True), 4, has_text)
    assert (neighbours_as_history(near, 6) == pseudo_history(q, text, 4, 6)).all()


def test_blend_index_finds_the_exact_blend_from_two_searches():
    """Text-only users' ``u.v + w q.t`` from the item and text indexes' candidates equals the
    exact search over [items, text] when the candidates hold it, and falls back to it when a
    filter leaves too few of them; seen items stay out either way."""
    from sparkrec.config import FaissIndexConfig
    from sparkrec.serve.index import BlendIndex, ExactIndex, FaissIndex

    rng = np.random.default_rng(4)
    items, text = (rng.normal(size=(3000, d)).astype(np.float32) for d in (8, 12))
    cfg = FaissIndexConfig(kind="hnsw", text_kind="hnsw", ef_search=256)
    blend = BlendIndex(FaissIndex(items, cfg), FaissIndex(text, cfg.for_text()), 300)
    exact = ExactIndex(np.hstack([items, text]))
    users = rng.normal(size=(5, 20)).astype(np.float32)
    users[:, 8:] *= 0.5  # the text weight
    everything = np.ones(3000, bool)
    seen = (np.array([0, 2, 2, 2, 2, 2]), np.array([int(exact.search(users[:1], 1, everything)[0][0, 0]), 7]))
    got, want = blend.search(users, 10, everything, seen), exact.search(users, 10, everything, seen)
    assert (got[0] == want[0]).all() and np.allclose(got[1], want[1], atol=1e-4)
    assert seen[1][0] not in got[0][0]
    narrow = np.zeros(3000, bool)
    narrow[rng.choice(3000, 12, replace=False)] = True  # far fewer than the candidates hold
    got, want = blend.search(users, 10, narrow), exact.search(users, 10, narrow)
    assert (got[0] == want[0]).all() and narrow[got[0]].all()


def test_the_blend_drops_only_tower_candidates_that_cannot_reach_the_top_k():
    """Text-only users' blend over the text pool and the tower candidates the bound keeps ranks
    exactly as over every tower candidate, whatever the weights, filters, seen items and k,
    when the two pools are the exact best rows by ``q.t`` and by ``u.v``; and the bound drops
    most of a wide tower pool."""
    from sparkrec.serve.index import ExactIndex, blend_candidates, dot, rescore

    rng = np.random.default_rng(6)
    dropped = []
    for _ in range(60):
        n, b, k = int(rng.integers(50, 3000)), int(rng.integers(1, 4)), int(rng.integers(1, 25))
        items, text = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 10)).astype(np.float32)
        u = rng.normal(size=(b, 6)).astype(np.float32)
        wq = (rng.uniform(0.1, 3.0) * rng.normal(size=(b, 10))).astype(np.float32)
        uv, qt = u @ items.T, wq @ text.T
        width_t, width_u = int(rng.integers(k, n // 2 + k)), int(rng.integers(k, n))
        text_pool = np.argsort(-qt, axis=1)[:, :width_t]
        tower_rows = np.argsort(-uv, axis=1)[:, :width_u]
        tower = (tower_rows, np.take_along_axis(uv, tower_rows, axis=1))
        eligible = rng.random(n) > 0.3
        best = np.argsort(-(uv + qt), axis=1)[:, :2 * k]  # some seen items the blend ranks high
        mine = [np.union1d(rng.choice(n, int(rng.integers(0, 30)), replace=False),
                           rng.choice(best[i], int(rng.integers(0, k + 1)), replace=False)) for i in range(b)]
        seen = (np.concatenate([[0], np.cumsum([len(m) for m in mine])]), np.concatenate(mine).astype(np.int64))
        users = np.hstack([u, wq])
        both = np.hstack([items, text])
        score, exact = dot(both, users), ExactIndex(both)
        cand = blend_candidates(items, u, (text_pool, np.take_along_axis(qt, text_pool, axis=1)), tower, k,
                                eligible, seen)
        every = np.hstack([tower_rows, text_pool])
        kept = rescore(users, cand, k, eligible, seen, None, score, exact)
        full = rescore(users, every, k, eligible, seen, None, score, exact)
        assert (kept[0] == full[0]).all() and np.allclose(kept[1], full[1], atol=1e-5)
        dropped.append(1 - (cand >= 0).sum() / (every >= 0).sum())
    assert np.mean(dropped) > 0.3


def test_the_head_rows_block_ranks_as_merging_them_into_the_candidates():
    """faiss's re-scoring with the head's rows as one block of vectors (FixedRows) gives the
    lists of merging those rows into each user's candidates, whatever the candidates, the
    eligible items, the seen items (repeats included) and the head's share of the catalogue."""
    from sparkrec.serve.index import ExactIndex, FixedRows, dot, rescore

    rng = np.random.default_rng(5)
    for _ in range(60):
        n, b, k = int(rng.integers(30, 2000)), int(rng.integers(1, 4)), int(rng.integers(1, 25))
        matrix, users = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(b, 8)).astype(np.float32)
        head = np.sort(rng.choice(n, int(rng.integers(1, n // 2 + 1)), replace=False))
        extra = (head, rng.normal(size=(b, len(head))).astype(np.float32))
        cand = rng.integers(-1, n, size=(b, int(rng.integers(1, 200))))
        eligible = rng.random(n) > 0.2
        mine = [np.sort(rng.choice(n, int(rng.integers(0, 40)))) for _ in range(b)]
        seen = (np.concatenate([[0], np.cumsum([len(m) for m in mine])]), np.concatenate(mine).astype(np.int64))
        args = (users, cand, k, eligible, seen, extra, dot(matrix, users), ExactIndex(matrix))
        merged, block = rescore(*args), rescore(*args, FixedRows(matrix, head))
        assert (merged[0] == block[0]).all() and np.allclose(merged[1], block[1], atol=1e-5)


def test_the_champion_moving_between_the_hybrid_and_a_baseline_is_reloaded(trained, spark):
    """``recommend.model=champion``: the alias moves hybrid -> baseline -> hybrid and the hot
    reload swaps the kind of snapshot each time, answering from the model the alias names."""
    from sparkrec.baselines import MostPopular
    from sparkrec.model.store import log_recommender, register_champion, resolve_run
    from sparkrec.serve import build, start_in_thread

    cfg, lake, batch = trained
    champion = cfg.model_copy(deep=True)
    champion.recommend.model = "champion"
    hybrid = resolve_run(cfg, lake).run_id  # the latest hybrid run of this lake
    register_champion(champion, lake, hybrid, "hybrid", 0.0)
    model = MostPopular().fit(lake.read("events"))
    popular = log_recommender(model, champion, lake, "none")
    model.release()
    user = sorted(batch["user_id"].dropna().loc[batch["user_idx"].notna()].unique())[0]
    app, poller = build(champion, spark, lake, load_in_background=False)
    running = start_in_thread(app)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            assert client.get("/ready").json()["model"] == "hybrid"
            for run_id, name in ((popular, "most_popular"), (hybrid, "hybrid")):
                register_champion(champion, lake, run_id, name, 0.0)
                _wait_until_served(client, run_id, f"the champion moving to {name}")
                body = _post(client, {"user_id": user, "k": K})
                assert body["model"] == name and body["model_run_id"] == run_id and len(body["items"]) == K
    finally:
        poller.stop()
        running.stop()
