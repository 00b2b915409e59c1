"""Starting the service: Spark once for loading, uvicorn for requests, the poller beside them.

Spark is used to build snapshots (the batch stage's loading code) and never by a request. The
command line loads the first snapshot before the port opens (a missing or foreign model fails
fast, exit code 2); embedded, ``build`` can load it in the poller's thread instead, while
uvicorn already answers ``/health`` (200) and ``/ready`` (503 until loaded).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pyspark.sql import SparkSession

from ..config import Config
from ..lake import Lake
from ..logs import get_logger, log_fields
from .api import create_app
from .reload import Poller, StateHolder
from .workers import ForkingHolder, start_workers

log = get_logger("serve")


def text_encoder(cfg: Config, spark: SparkSession | None) -> Any | None:
    """The embed stage's encoder, warmed up; None when it cannot load here (text requests answer 409)."""
    from ..text import make_encoder

    try:
        encoder = make_encoder(cfg.embed, spark)
        encoder.encode(["warm up"])
        return encoder
    except Exception as exc:
        log_fields(log, "no text encoder: text requests will be refused", error=" ".join(str(exc).split())[:300])
        return None


def limit_threads(n: int) -> None:
    """``serve.threads`` threads per numeric call (BLAS, torch, faiss's OpenMP).

    Why: the server already runs requests in parallel threads; a BLAS or OpenMP pool per call on
    top of that oversubscribes the cores, and their spinning workers then slow every request
    (measured: one text encoding took 0.75 s instead of tens of ms on a busy 2-core machine).
    """
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # not a dependency: then OPENBLAS_NUM_THREADS / OMP_NUM_THREADS decide
        log_fields(log, "threadpoolctl not installed: set OPENBLAS_NUM_THREADS to limit BLAS threads")
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def build(cfg: Config, spark: SparkSession, lake: Lake, load_in_background: bool = True,
          encoder: Any | None = None, holder: StateHolder | None = None) -> tuple[FastAPI, Poller]:
    """The app and its started poller (``load_in_background=False``: the first snapshot is loaded
    before this returns)."""
    limit_threads(cfg.serve.threads)
    holder = holder if holder is not None else StateHolder()
    poller = Poller(cfg, spark, lake, holder)
    if not load_in_background:
        poller.load_first()
    poller.start(load_in_background)
    app = create_app(cfg, holder, encoder if encoder is not None else text_encoder(cfg, spark))
    return app, poller


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """A uvicorn server in a thread of this process (tests, benchmarks)."""

    server: Any
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Running:
    """Runs ``app`` under uvicorn in a daemon thread; returns once it accepts connections."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    thread = threading.Thread(target=server.run, name="sparkrec-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    return Running(server, thread, f"http://{host}:{port}")


def run_server(cfg: Config, spark: SparkSession, lake: Lake) -> dict[str, Any]:
    """``sparkrec serve``: blocks until the server is stopped (Ctrl-C / SIGTERM)."""
    import uvicorn

    sc = cfg.serve
    holder = ForkingHolder() if sc.workers > 1 else StateHolder()
    # a missing model fails before the port opens (and workers are forked with the snapshot loaded)
    app, poller = build(cfg, spark, lake, load_in_background=False, holder=holder)
    log_fields(log, "serving", url=f"http://{sc.host}:{sc.port}", docs=f"http://{sc.host}:{sc.port}/docs",
               index=sc.index, model=cfg.recommend.model_run_id or cfg.recommend.model,
               reload_seconds=sc.reload_seconds, workers=sc.workers)
    workers = None
    try:
        if isinstance(holder, ForkingHolder):
            workers = start_workers(app, holder, sc.workers, sc.host, sc.port, sc.drain_seconds)
            wait_for_stop_signal()
        else:
            uvicorn.run(app, host=sc.host, port=sc.port, log_level="warning", access_log=False)
    finally:
        poller.stop()  # first: a reload after the workers' stop would fork workers nobody stops
        if workers is not None:
            workers.stop()
    return {"model_run_id": holder.current.run_id if holder.current else None, "reloads": holder.reloads}


def wait_for_stop_signal() -> None:
    """Blocks until SIGTERM or SIGINT (the workers, in the same process group on a terminal,
    drain on their own signal)."""
    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
