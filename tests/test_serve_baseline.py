"""`sparkrec serve` with a baseline champion: the real HTTP server (uvicorn in a thread) on a
private copy of the sample lake, EASE fitted on every event, saved to MLflow and registered as
the champion, called with httpx. Known users must get the batch recommend stage's lists and
explanations for the same model; sessions work; what a baseline cannot do answers a clear 409;
the alias moving to another model is picked up by the hot reload.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

K = 10


@pytest.fixture(scope="module")
def champion_lake(spark, sample_copy):
    """EASE (one lambda: quick) on all events as the champion, and the batch stage's lists."""
    from sparkrec.baselines import EASE
    from sparkrec.model.store import log_recommender, register_champion
    from sparkrec.recommend import run_recommend

    cfg, lake, _ = sample_copy("serve-baseline")
    cfg.recommend.model, cfg.recommend.k = "champion", K
    cfg.serve.reload_seconds, cfg.serve.max_k = 1.0, 50
    model = EASE([250.0]).fit(lake.read("events"))
    run_id = log_recommender(model, cfg, lake, "none")
    model.release()
    register_champion(cfg, lake, run_id, "ease", 0.0)
    summary = run_recommend(cfg, spark, lake)
    assert summary["model"] == "ease"
    return cfg, lake, run_id, lake.read("recommendations").toPandas()


@pytest.fixture(scope="module")
def server(spark, champion_lake):
    from sparkrec.serve import build, start_in_thread

    cfg, lake, _, _ = champion_lake
    # any encoder object: a baseline refuses text before encoding, so none is loaded
    app, poller = build(cfg, spark, lake, load_in_background=False, encoder=object())
    running = start_in_thread(app)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            yield client, poller
    finally:
        poller.stop()
        running.stop()


def _post(client, body):
    """The JSON of a request that must succeed."""
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_ready_names_the_baseline(server, champion_lake):
    client, _ = server
    _, _, run_id, _ = champion_lake
    ready = client.get("/ready").json()
    assert ready["model"] == "ease" and ready["model_run_id"] == run_id and ready["text"] is False


def test_known_users_get_the_batch_stages_lists_and_explanations(server, champion_lake):
    client, _ = server
    _, _, run_id, batch = champion_lake
    for user in sorted(batch["user_id"].unique())[:8]:
        body = _post(client, {"user_id": user, "k": K})
        want = batch[batch["user_id"] == user].sort_values("rank")
        got = body["items"]
        assert body["model"] == "ease" and body["model_run_id"] == run_id and body["basis"] == "history"
        assert [i["item_id"] for i in got] == want["item_id"].tolist()
        assert np.allclose([i["score"] for i in got], want["score"], rtol=1e-5, atol=1e-6)
        assert [i["explanation"] for i in got] == want["explanation"].tolist()
        assert [i["evidence"]["history_items"] for i in got] == [list(e["history_items"]) for e in want["evidence"]]


def test_a_filter_narrows_a_baselines_list(server, champion_lake):
    client, _ = server
    _, _, _, batch = champion_lake
    user = sorted(batch["user_id"].unique())[0]
    first = _post(client, {"user_id": user, "k": 3})["items"][0]["item_id"]
    without = _post(client, {"user_id": user, "k": 3, "filters": {"exclude_item_ids": [first]}})["items"]
    assert len(without) == 3 and first not in [i["item_id"] for i in without]


def test_an_anonymous_session(server, champion_lake):
    client, _ = server
    _, lake, _, _ = champion_lake
    items = lake.read("item_features").orderBy("popularity_rank").limit(3).select("item_id").toPandas()["item_id"]
    body = _post(client, {"recent_items": items.tolist(), "k": K})
    got = [i["item_id"] for i in body["items"]]
    assert body["basis"] == "session" and len(got) == K and not set(got) & set(items)
    assert [i["score"] for i in body["items"]] == sorted([i["score"] for i in body["items"]], reverse=True)
    assert all(i["explanation"].startswith(("Because you liked", "Recommended for you")) for i in body["items"])


def test_what_a_baseline_cannot_do_is_a_clear_409(server, champion_lake):
    client, _ = server
    _, _, run_id, batch = champion_lake
    r = client.post("/recommend", json={"text": "hard science fiction"})
    assert r.status_code == 409 and "ease" in r.json()["error"] and run_id in r.json()["error"], r.text
    item = batch["item_id"].iloc[0]
    r = client.get(f"/items/{item}/similar", params={"k": 5})
    assert r.status_code == 409 and "ease" in r.json()["error"] and "item space" in r.json()["error"], r.text


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"user_id": "no-such-user"}, 404, "unknown user_id"),
    ({"recent_items": ["no-such-item"]}, 404, "unknown item_id"),
    ({"user_id": "1", "k": 0}, 422, "k = 0"),
    ({"recent_items": []}, 422, "recent_items is empty"),
    ({"user_id": "1", "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_still_get_a_4xx(server, body, status, says):
    client, _ = server
    r = client.post("/recommend", json=body)
    assert r.status_code == status and says in r.json()["error"], r.text


def test_the_champion_moving_to_another_model_is_reloaded(server, champion_lake):
    from sparkrec.baselines import MostPopular
    from sparkrec.model.store import log_recommender, register_champion

    client, _ = server
    cfg, lake, _, batch = champion_lake
    model = MostPopular().fit(lake.read("events"))
    new = log_recommender(model, cfg, lake, "none")
    model.release()
    register_champion(cfg, lake, new, "most_popular", 0.0)
    deadline = time.monotonic() + 120
    while client.get("/ready").json()["model_run_id"] != new:
        assert time.monotonic() < deadline, "the new champion was never loaded"
        time.sleep(0.2)
    body = _post(client, {"user_id": sorted(batch["user_id"].unique())[0], "k": K})
    assert body["model"] == "most_popular" and len(body["items"]) == K

