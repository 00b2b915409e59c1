"""`serve.workers`: the service forked into several processes over one snapshot, over real HTTP.

Forked workers must answer exactly as the one-process service does, share the requests between
them, move to a new snapshot (a new generation of workers) without a failed request, replace a
worker that dies, and `sparkrec serve` itself must start them, answer and stop with no worker
left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pyspark.sql import functions as F

KIDS = "animated movie for kids, Pixar"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(spark, trained_sample):
    cfg, lake, _ = trained_sample("kids", KIDS)  # the lake and model test_serve uses
    cfg.serve.reload_seconds, cfg.serve.drain_seconds = 0.5, 5.0
    return cfg, lake


@pytest.fixture
def forked(spark, trained):
    from sparkrec.serve import build
    from sparkrec.serve.workers import ForkingHolder, start_workers

    cfg, lake = trained
    holder = ForkingHolder()
    app, poller = build(cfg, spark, lake, load_in_background=False, holder=holder)
    workers = start_workers(app, holder, 2, drain_seconds=cfg.serve.drain_seconds)
    try:
        yield app, workers
    finally:
        poller.stop()
        every = [*workers.pool.current.pids, *workers.pool.retiring] if workers.pool.current else []
        workers.stop()
        assert not [pid for pid in every if _alive(pid)], "workers left running after stop()"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a child of ours that has exited is reaped here: a
    zombie still answers ``kill(pid, 0)``)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    except ChildProcessError:  # not our child, or reaped already
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids_answering(url: str, tries: int = 60) -> set[int]:
    """Which processes answer /ready over fresh connections (the kernel spreads accepts)."""
    seen = set()
    for _ in range(tries):
        seen.add(httpx.get(f"{url}/ready", timeout=30).json()["pid"])
    return seen


def _known_users(lake, n: int) -> list[str]:
    return [r["user_id"] for r in lake.read("user_index").orderBy("user_idx").limit(n).collect()]


def test_workers_answer_as_one_process_does(forked, trained):
    from sparkrec.serve import start_in_thread

    app, workers = forked
    _, lake = trained
    assert _pids_answering(workers.url) == set(workers.pool.current.pids)
    assert os.getpid() not in workers.pool.current.pids
    in_thread = start_in_thread(app)  # the same app and snapshot, served by this process's threads
    try:
        bodies = [*({"user_id": u, "k": 10} for u in _known_users(lake, 5)), {"text": KIDS, "k": 10},
                  {"recent_items": ["1", "2", "3"], "k": 10}]
        with httpx.Client(base_url=workers.url, timeout=60) as forked_client, \
                httpx.Client(base_url=in_thread.url, timeout=60) as one:
            for body in bodies:
                got, want = forked_client.post("/recommend", json=body), one.post("/recommend", json=body)
                assert got.status_code == want.status_code == 200, (body, got.text)
                assert got.json() == want.json()
            assert forked_client.post("/recommend", json={"user_id": "nobody?", "k": 10}).status_code == 404
    finally:
        in_thread.stop()


def test_new_events_start_a_new_generation_without_a_failed_request(forked, trained):
    app, workers = forked
    _, lake = trained
    old = list(workers.pool.current.pids)
    version = httpx.get(f"{workers.url}/ready").json()["events_version"]
    users = _known_users(lake, 20)
    statuses: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:  # one keep-alive connection, as a client's pool would use it
        with httpx.Client(base_url=workers.url, timeout=60) as c:
            i = 0
            while not stop.is_set():
                try:
                    statuses.append(c.post("/recommend", json={"user_id": users[i % len(users)], "k": 5}).status_code)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                i += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        last = lake.read("events").orderBy(F.desc("seq")).limit(1)  # what the streaming job MERGEs
        lake.upsert("events", last.withColumn("seq", F.col("seq") + 1), ["user_idx", "item_idx", "seq"])
        deadline = time.monotonic() + 60
        while httpx.get(f"{workers.url}/ready").json()["events_version"] == version:
            assert time.monotonic() < deadline, "the new events were never served"
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    new = workers.pool.current.pids
    assert not set(new) & set(old)
    deadline = time.monotonic() + app.state.holder.pool.drain_seconds + 10
    while any(_alive(pid) for pid in old):  # drained: their connections closed, so they exit
        assert time.monotonic() < deadline, "the old generation never exited"
        time.sleep(0.1)
    assert _pids_answering(workers.url) == set(new)


def test_a_worker_that_dies_is_replaced(forked):
    _, workers = forked
    victim, other = workers.pool.current.pids
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in workers.pool.current.pids:
        assert time.monotonic() < deadline, "the killed worker was never replaced"
        time.sleep(0.1)
    assert other in workers.pool.current.pids
    assert _pids_answering(workers.url) == set(workers.pool.current.pids)


@pytest.mark.slow
def test_sparkrec_serve_with_workers_starts_answers_and_stops(trained, tmp_path):
    from sparkrec.serve.server import free_port

    cfg, lake = trained
    conf = tmp_path / "serve.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    port = free_port()
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen([sys.executable, "-m", "sparkrec", "serve", "--conf", str(conf), "serve.workers=2",
                             f"serve.port={port}", "serve.reload_seconds=0"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "sparkrec serve never became ready"
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        user = _known_users(lake, 1)[0]
        r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=60)
        assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text
        pids = _pids_answering(url)
        assert len(pids) == 2 and proc.pid not in pids
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert not [pid for pid in pids if _alive(pid)], "workers outlived sparkrec serve"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

