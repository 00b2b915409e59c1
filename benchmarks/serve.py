"""HTTP serving benchmark: req/s and latency of `sparkrec serve`, exact vs faiss, at catalogue scale.

A model is trained on the bundled sample (Spark, a temporary lake), loaded exactly as `sparkrec
serve` loads it, and its catalogue is then *synthesised* up to Book-Crossing's size (``--items``,
default 270,947: the items of the full Book-Crossing lake): each synthetic item is a trained
item's tower vector (and text vector) plus noise, renormalised, so the matrix has the trained
model's dimension and the geometry of real item vectors. The user tower, the linear head, the
users' histories and the explanations are the trained model's. Building a full Book-Crossing lake
and model here (ingest + features + embedding 270k books: ~30 min on 2 cores) would not change
what a request costs: one user-tower pass and one search over a 270k x d matrix.

The server (uvicorn, one process) runs in a thread of this process with Spark stopped; with
``--workers`` N > 1 the faiss phases are served again by N worker processes forked from it
(``serve.workers``, sharing the snapshot; their CPU is read from /proc and its split between them
printed, since a keep-alive connection stays with the worker that accepted it). A separate
load-generator process keeps ``--concurrency`` requests in flight for ``--seconds`` per phase and
measures latency client-side (HTTP included). Phases: known users and text-only users, each with
the exact and the faiss index. Text requests are measured without the encoder (the server is
given the encoded vectors of the benchmark's sentences); the encoder's own time per sentence is
measured apart and printed separately. faiss recall@20 against the exact lists is computed in
process over ``--recall-users`` users. With the faiss index, text-only users run again with the
PyTorch user tower and then with ONNX Runtime's once more (``serve.user_tower``: an A/B in one
server).

With ``--lake DIR`` (the ``--keep`` directory of benchmarks/pipeline.py) it serves that real lake
instead: Book-Crossing's own 271k books, their real text vectors and a model trained on every
event, no synthesis.

    python benchmarks/serve.py                       # ~5-10 min on 2 cores, most of it setup
    python benchmarks/serve.py --lake /tmp/bx-lake   # the real Book-Crossing catalogue
    python benchmarks/serve.py --faiss-kind hnsw --seconds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["I love hard science fiction with first contact", "cozy mysteries set in small English villages",
             "epic fantasy with dragons and political intrigue", "true crime and investigative journalism",
             "funny books for kids about animals", "historical novels about the second world war",
             "romance with a strong heroine", "self-help books about habits and productivity"]


def _load(url: str, bodies: list[dict[str, Any]], seconds: float, concurrency: int, client: str, out: Any) -> None:
    """The load generator (its own process): ``concurrency`` connections, each one request at a time.

    ``client="raw"`` (default): asyncio (uvloop) keep-alive connections writing pre-encoded
    requests and reading each response by its Content-Length, a few tens of microseconds of CPU
    a request, as a C load generator (wrk) would cost; on a 2-core machine the client shares the
    server's cores, so a heavy client takes its capacity away. ``client="httpx"``: threads with
    httpx clients (~1-2 ms of Python a request), kept for comparison with earlier results.
    The child's own CPU seconds are reported, so the client's share of the machine shows.
    """
    import resource

    run = _load_httpx if client == "httpx" else _load_raw
    lat, errors, took = run(url, bodies, seconds, concurrency)
    used = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"latencies": lat, "errors": errors, "seconds": took, "client_cpu_s": used.ru_utime + used.ru_stime})


def _load_raw(url: str, bodies: list[dict[str, Any]], seconds: float, concurrency: int
              ) -> tuple[list[float], int, float]:
    import asyncio
    import json
    from urllib.parse import urlsplit

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    where = urlsplit(url)
    requests = []
    for body in bodies:
        data = json.dumps(body).encode()
        requests.append(b"POST /recommend HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (where.netloc.encode(), len(data), data))
    lat: list[float] = []
    errors = [0]

    async def connection(seed: int, stop: float) -> None:
        rng = np.random.default_rng(seed)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            while time.monotonic() < stop:
                request = requests[int(rng.integers(len(requests)))]
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                lat.append((time.perf_counter() - t) * 1000)
                errors[0] += head[9:12] != b"200"
        finally:
            writer.close()

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(*[connection(i, started + seconds) for i in range(concurrency)])
        return time.monotonic() - started

    took = asyncio.run(main())
    return lat, errors[0], took


def _load_httpx(url: str, bodies: list[dict[str, Any]], seconds: float, concurrency: int
                ) -> tuple[list[float], int, float]:
    import threading

    import httpx

    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine, bad = [], 0
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < stop:
                body = bodies[int(rng.integers(len(bodies)))]
                t = time.perf_counter()
                r = c.post("/recommend", json=body)
                mine.append((time.perf_counter() - t) * 1000)
                bad += r.status_code != 200
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.monotonic() - started


def cpu_seconds(pids: list[int] | None) -> list[float]:
    """CPU seconds used so far by the server: this process (its threads serve) or, with forked
    workers, each worker's (``/proc/<pid>/stat``: utime + stime)."""
    if pids is None:
        t = os.times()
        return [t.user + t.system]
    out = []
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))  # fields 14, 15 of the line
    return out


def run_phase(url: str, bodies: list[dict[str, Any]], seconds: float, concurrency: int,
              client: str = "raw", server_pids: list[int] | None = None) -> dict[str, Any]:
    """One phase; ``server_cpu_ms``: the server's CPU per request (this process's, where the
    server runs in its threads; ``server_pids``' where it runs in forked workers)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load, args=(url, bodies, seconds, concurrency, client, q))
    before = cpu_seconds(server_pids)
    p.start()
    res = q.get()
    after = cpu_seconds(server_pids)
    p.join()
    lat = np.array(res["latencies"])
    per_process = [a - b for a, b in zip(after, before, strict=True)]
    server_cpu = sum(per_process)
    return {"requests": len(lat), "errors": res["errors"], "req_s": len(lat) / res["seconds"],
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "server_cpu_ms": server_cpu * 1000 / max(len(lat), 1),
            "client_cpu_ms": res["client_cpu_s"] * 1000 / max(len(lat), 1),
            # how the work spread over forked workers (connections stay with the worker that accepted them)
            "cpu_shares": [round(c / max(server_cpu, 1e-9), 2) for c in per_process]}


def synthesise(state: Any, n_items: int, seed: int = 0) -> Any:
    """The state with its catalogue grown to ``n_items``: trained vectors + noise, renormalised."""
    from sparkrec.serve.explain import ItemFacts
    from sparkrec.serve.state import Catalogue

    rng = np.random.default_rng(seed)
    p, cat = state.payload, state.catalogue
    n0 = p.items.shape[0] - 1
    src = np.concatenate([np.arange(1, n0 + 1), rng.integers(1, n0 + 1, size=max(0, n_items - n0))])
    rows = np.concatenate([[0], src])

    def grow(m: np.ndarray) -> np.ndarray:
        x = m[rows].astype(np.float32)
        noise = rng.normal(scale=0.25 * float(x[1:].std()), size=x[n0 + 1:].shape).astype(np.float32)
        x[n0 + 1:] += noise
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0).astype(np.float32)

    items = grow(p.items)
    eligible = np.concatenate([p.eligible, np.ones(len(rows) - len(p.eligible), bool)])
    payload = dataclasses.replace(p, items=items, eligible=eligible)
    text_payload = has_text = None
    if state.text_payload is not None:
        text = grow(state.text_payload.text)
        has_text = np.abs(text).sum(axis=1) > 0
        has_text[0] = False
        text_payload = dataclasses.replace(payload, text=text)
    ids = [*cat.ids, *[f"syn{r}" for r in range(n0 + 1, len(rows))]]
    facts = ItemFacts([cat.facts.titles[r] for r in rows], [cat.facts.attrs[r] for r in rows],
                      [cat.facts.notes[r] for r in rows])
    catalogue = Catalogue(rows={i: r for r, i in enumerate(ids) if i is not None}, ids=ids, facts=facts, genres={},
                          year=cat.year[rows], has_id=cat.has_id[rows])
    return dataclasses.replace(state, payload=payload, text_payload=text_payload, has_text=has_text,
                               catalogue=catalogue)


def with_index(state: Any, kind: str, cfg: Any) -> tuple[Any, float]:
    """The state with ``kind`` indexes, built as `sparkrec serve` builds them; and the build's seconds."""
    from sparkrec.serve.index import make_indexes

    t = time.perf_counter()
    text = None if state.text_payload is None else state.text_payload.text
    index, text_index, blend = make_indexes(state.payload.items, text, kind, cfg.serve.faiss, cfg.serve.threads,
                                            cfg.recommend.item_block_rows)
    return dataclasses.replace(state, index=index, blend_index=blend, text_index=text_index), \
        time.perf_counter() - t


class CachedEncoder:
    """Stands in for the encoder during the load: the sentences' vectors, computed beforehand."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def text_recall(exact_state: Any, state: Any, queries: np.ndarray, k: int) -> float:
    """Mean recall@k of ``state``'s text-only lists against ``exact_state``'s, one query per row."""
    from sparkrec.serve.scoring import recommend, text_query

    rec = []
    for qv in queries:
        want = {r["item_id"] for r in recommend(exact_state, text_query(exact_state, qv[None, :]), k, None, 3)}
        got = {r["item_id"] for r in recommend(state, text_query(state, qv[None, :]), k, None, 3)}
        rec.append(len(want & got) / max(len(want), 1))
    return float(np.mean(rec))


def phase_line(label: str, r: dict[str, Any], concurrency: int) -> str:
    shares = f" (workers' shares {' / '.join(f'{x:.2f}' for x in r['cpu_shares'])})" if len(r["cpu_shares"]) > 1 else ""
    return (f"{label} | {r['req_s']:7.1f} req/s | p50 {r['p50_ms']:6.1f} ms | p99 {r['p99_ms']:6.1f} ms | "
            f"cpu/request server {r['server_cpu_ms']:.2f} ms{shares}, client {r['client_cpu_ms']:.2f} ms | "
            f"{r['requests']} requests, {r['errors']} errors (concurrency {concurrency}, "
            f"load {os.getloadavg()[0]:.1f})")


def tower_ab(holder: Any, state: Any, url: str, bodies: list[dict[str, Any]], args: Any,
             first: dict[str, Any]) -> None:
    """Text-only users again with the PyTorch user tower, then with ONNX Runtime's once more
    (A B A in one server, so the machine's drift shows as the spread of the two A runs)."""
    runs = {"onnx": [first], "torch": []}
    for runtime, tower_fn in (("torch", None), ("onnx", state.tower_fn)):
        holder.swap(dataclasses.replace(state, tower_fn=tower_fn))
        r = run_phase(url, bodies, args.seconds, args.concurrency, args.client)
        runs[runtime].append(r)
        print(phase_line(f"faiss | text-only, {runtime} user tower", r, args.concurrency))
    onnx = [r["req_s"] for r in runs["onnx"]]
    print(f"user tower A/B, text-only req/s: onnx {onnx[0]:.1f} / {onnx[1]:.1f}, torch {runs['torch'][0]['req_s']:.1f}"
          f" -> onnx / torch {np.mean(onnx) / runs['torch'][0]['req_s']:.2f}x")


def serve_phases(cfg: Any, kstate: Any, kind: str, n: int, first: bool, bodies: dict[str, list[dict[str, Any]]],
                 vectors: dict[str, np.ndarray], args: Any) -> None:
    """Known and text-only users against one server: this process's threads (``n`` 1) or ``n``
    forked workers (``serve.workers``); the first server of a kind also gets the httpx client and
    the user tower A/B."""
    from sparkrec.serve import StateHolder, create_app, start_in_thread
    from sparkrec.serve.workers import start_workers

    holder = StateHolder()
    holder.swap(kstate)
    app = create_app(cfg, holder, CachedEncoder(vectors))
    running = start_in_thread(app) if n == 1 else start_workers(app, None, n)
    pids = None if n == 1 else running.pool.current.pids
    label = kind if n == 1 else f"{kind} x{n} workers"
    measured = {}
    try:
        run_phase(running.url, bodies["known users"], 3, args.concurrency, args.client, pids)  # warm-up
        for name, sent in bodies.items():
            measured[name] = run_phase(running.url, sent, args.seconds, args.concurrency, args.client, pids)
            print(phase_line(f"{label:>5} | {name:<16}", measured[name], args.concurrency))
        if first and n == 1 and kind == "faiss" and args.client != "httpx":  # the heavier client of earlier runs
            r = run_phase(running.url, bodies["known users"], args.seconds, args.concurrency, "httpx")
            print(phase_line(f"{kind:>5} | {'known users':<16} (httpx client)", r, args.concurrency))
        if first and n == 1 and kind == "faiss" and kstate.tower_fn is not None:
            tower_ab(holder, kstate, running.url, bodies["text-only users"], args, measured["text-only users"])
    finally:
        running.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=270_947, help="catalogue size to synthesise")
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="load generator: asyncio keep-alive sockets (light) or httpx threads (heavy)")
    ap.add_argument("--faiss-kind", choices=["hnsw", "ivf"], default="ivf")
    ap.add_argument("--text-kind", choices=["hnsw", "ivf"], default=None,
                    help="serve.faiss.text_kind (the text indexes'; default: the config's, hnsw)")
    ap.add_argument("--text-ef-search", type=int, default=None, help="serve.faiss.text_ef_search (hnsw)")
    ap.add_argument("--text-nprobe", type=int, default=None, help="serve.faiss.text_nprobe (ivf lists for text)")
    ap.add_argument("--recall-users", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="serve.workers of each faiss server in turn (1: threads of this process; repeats allowed)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--lake", default=None,
                    help="serve a real lake instead: the --keep directory of benchmarks/pipeline.py (no synthesis)")
    ap.add_argument("--dataset", default="bookcrossing", help="the namespace of --lake")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from sparkrec.config import load_config
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.lake import DeltaRsLake, RunContext
    from sparkrec.logs import setup_logging
    from sparkrec.model.job import run_train
    from sparkrec.serve.scoring import known_user, recommend
    from sparkrec.serve.server import limit_threads, text_encoder
    from sparkrec.serve.state import load_state
    from sparkrec.session import get_spark
    from sparkrec.text import run_embed

    setup_logging("WARNING")
    root = Path(args.lake or args.workdir or tempfile.mkdtemp(prefix="sparkrec-bench-serve-"))
    where = ([f"train.workdir={root / 'train'}", f"train.mlflow_uri={root / 'mlruns'}", f"data.dataset={args.dataset}"]
             if args.lake else [f"train.workdir={root / 'work'}", f"train.mlflow_uri={root / 'ml'}"])
    cfg = load_config(REPO / "conf" / "local.yaml", [
        f"lake.root={root / 'lake'}", *where,
        "train.backend=local", "train.epochs=1", "train.progress=false", "train.blend_trials=4", "model.history=20",
        "features.history_length=20", "serve.reload_seconds=0", f"serve.faiss.kind={args.faiss_kind}",
        *[f"serve.faiss.{key}={value}" for key, value in (("text_kind", args.text_kind),
          ("text_ef_search", args.text_ef_search), ("text_nprobe", args.text_nprobe)) if value is not None],
        "logging.level=WARNING"])
    t0 = time.perf_counter()
    spark = get_spark(cfg.spark)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench"))
    if not lake.exists("events"):
        run_ingest(cfg, spark, lake)
        run_features(cfg, spark, lake)
        run_embed(cfg, spark, lake)
        run_train(cfg, spark, lake)
    state = load_state(cfg, spark, lake)
    spark.stop()  # nothing below touches Spark: the JVM would only compete for the two cores
    limit_threads(cfg.serve.threads)  # as `sparkrec serve` does
    setup_s = time.perf_counter() - t0
    if not args.lake:
        state = synthesise(state, args.items)
    print(f"setup ({'lake ' + args.lake if args.lake else 'sample lake, 1-epoch model'}, load) {setup_s:.0f} s; "
          f"catalogue {'of' if args.lake else 'synthesised to'} "
          f"{state.payload.items.shape[0] - 1:,} items x {state.payload.items.shape[1]} dims "
          f"(text: {state.text_payload.text.shape[1] if state.text_payload else 0} dims); "
          f"{len(state.users.rows)} users; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    encoder = text_encoder(cfg, None)
    vectors, enc_ms = {}, []
    for _ in range(5):
        for s in SENTENCES:
            t = time.perf_counter()
            vectors[s] = np.asarray(encoder.encode([s]), np.float32)[0]
            enc_ms.append((time.perf_counter() - t) * 1000)
    print(f"text encoder alone (one sentence, in process): p50 {np.percentile(enc_ms, 50):.1f} ms, "
          f"p99 {np.percentile(enc_ms, 99):.1f} ms")

    users = list(state.users.rows)
    user_bodies = [{"user_id": u, "k": args.k} for u in users]
    text_bodies = [{"text": s, "k": args.k} for s in SENTENCES]
    exact_state = None
    for kind in ("exact", "faiss"):
        kstate, build = with_index(state, kind, cfg)
        if kind == "exact":
            exact_state = kstate
        else:
            text_cfg = cfg.serve.faiss.for_text()
            print(f"faiss build: items ({args.faiss_kind}) + text ({text_cfg.kind}, ef_search "
                  f"{text_cfg.ef_search}, nprobe {text_cfg.nprobe}; the blend searches both) {build:.1f} s")
        for i, n in enumerate(args.workers if kind == "faiss" else [1]):
            serve_phases(cfg, kstate, kind, n, first=i == 0, bodies={"known users": user_bodies,
                                                                      "text-only users": text_bodies},
                         vectors=vectors, args=args)
        if kind == "faiss":
            rec = []
            for u in users[: args.recall_users]:
                q = known_user(exact_state, u)
                want = {r["item_id"] for r in recommend(exact_state, q, args.k, None, 3)}
                got = {r["item_id"] for r in recommend(kstate, q, args.k, None, 3)}
                rec.append(len(want & got) / max(len(want), 1))
            print(f"faiss recall@{args.k} vs exact over {len(rec)} known users: {np.mean(rec):.4f}")
            print(f"faiss recall@{args.k} vs exact over {len(SENTENCES)} text-only users: "
                  f"{text_recall(exact_state, kstate, np.stack([vectors[s] for s in SENTENCES]), args.k):.4f}")
            # Eight sentences are a small sample: also users who describe a catalogue item (its text
            # vector plus noise), as many as --recall-users.
            rng, text = np.random.default_rng(1), kstate.text_payload.text
            rows = rng.choice(np.flatnonzero(kstate.has_text), size=args.recall_users, replace=False)
            queries = text[rows] + rng.normal(scale=0.5 * float(text[rows].std()), size=text[rows].shape)
            print(f"faiss recall@{args.k} vs exact over {len(rows)} item-description users: "
                  f"{text_recall(exact_state, kstate, queries.astype(np.float32), args.k):.4f}")


if __name__ == "__main__":
    main()
