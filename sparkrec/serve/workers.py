"""Several server processes over one loaded snapshot (``serve.workers`` > 1).

Why: one process answers its requests in threads that share one GIL. On Book-Crossing a text-only
request spends about half of its ~3 ms in Python (routing, validation, the blend's glue, the
explanations), so one process stays near 1.5 of 2 cores however many requests wait. Processes
forked *after* the snapshot is loaded each have their own GIL and share the snapshot's item
vectors, text matrix and faiss indexes copy-on-write: one copy in memory, not one per worker.

The main process keeps Spark and the reload poller; a worker never touches Spark (the py4j
connection belongs to the main process). A swap (:class:`ForkingHolder`) forks a new generation
of workers holding the new snapshot, on the same listening socket, and only once all of them
accept does the old generation *drain*: it stops accepting, answers what it is asked on the
connections it has with ``Connection: close`` (the client reconnects, to the new generation),
and exits when its connections are gone or after ``serve.drain_seconds``. A request in flight
finishes on the snapshot it started with, as with one process's reference swap. A worker that
dies (an OOM kill, a crash) is replaced by the main process with the current snapshot.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..logs import get_logger, log_fields
from .reload import Snapshot, StateHolder

log = get_logger("serve.workers")

READY = b"r"


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket every generation of workers accepts on (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock  # forked workers inherit it as they are (inheritable only matters across exec)


class _CloseWhenDraining:
    """ASGI wrapper: while the worker drains, every response says ``Connection: close``, so a
    keep-alive client sends its next request on a new connection instead of one about to close."""

    def __init__(self, app: Any, draining: threading.Event) -> None:
        self.app, self.draining = app, draining

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start" and self.draining.is_set():
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def _worker_main(app: Any, sock: socket.socket, ready_fd: int, drain_seconds: float) -> None:
    """A worker's whole life: uvicorn on the shared socket until SIGTERM / SIGINT, then a drain."""
    import uvicorn

    draining = threading.Event()

    class DrainingServer(uvicorn.Server):
        drain_deadline = float("inf")

        def capture_signals(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()  # uvicorn's would stop at once: ours, set in startup, drain

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._drain)
            os.write(ready_fd, READY)
            os.close(ready_fd)

        def _drain(self, sig: int, frame: Any) -> None:
            if draining.is_set():  # a second signal: stop now
                self.should_exit = True
                return
            draining.set()
            self.drain_deadline = time.monotonic() + drain_seconds
            for server in self.servers:
                server.close()  # this process stops accepting; the socket stays open in the others

        async def on_tick(self, counter: int) -> bool:
            if draining.is_set() and (not self.server_state.connections or time.monotonic() > self.drain_deadline):
                self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(_CloseWhenDraining(app, draining), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=max(1, int(drain_seconds)))
    DrainingServer(config).run(sockets=[sock])


@dataclass
class Generation:
    """The workers forked with one snapshot."""

    number: int
    pids: list[int] = field(default_factory=list)


class WorkerPool:
    """Forks generations of ``n`` workers serving ``app`` on ``sock``; retires the previous one
    once a new one accepts; replaces a worker of the current generation that dies."""

    def __init__(self, app: Any, sock: socket.socket, n: int, drain_seconds: float = 30.0,
                 start_timeout: float = 60.0) -> None:
        self.app, self.sock, self.n = app, sock, n
        self.drain_seconds, self.start_timeout = drain_seconds, start_timeout
        self.current: Generation | None = None
        self.retiring: list[int] = []
        self._lock = threading.RLock()
        self._generations = 0
        self._stopped = False

    def _fork(self) -> tuple[int, int]:
        """(pid, read end of its ready pipe)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code (nor its atexit hooks, nor Spark's)
            code = 0
            try:
                os.close(r)
                _worker_main(self.app, self.sock, w, self.drain_seconds)
            except BaseException as exc:  # whatever it was, this process ends here
                code = 1
                log_fields(log, "worker failed", pid=os.getpid(), error=repr(exc)[:300])
            finally:
                os._exit(code)
        os.close(w)
        return pid, r

    def _await_ready(self, started: list[tuple[int, int]]) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = dict(started)
        try:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"workers {sorted(waiting)} did not start within {self.start_timeout:.0f} s")
                readable, _, _ = select.select(list(waiting.values()), [], [], left)
                for fd in readable:
                    pid = next(p for p, f in waiting.items() if f == fd)
                    if os.read(fd, 1) != READY:
                        raise RuntimeError(f"worker {pid} exited before accepting requests")
                    del waiting[pid]
                    os.close(fd)
        except BaseException:
            for pid, fd in waiting.items():
                os.close(fd)
                _signal(pid, signal.SIGKILL)
            raise

    def start_generation(self) -> Generation:
        """Forks a generation with what ``app`` serves now, waits until every worker accepts,
        then drains the previous generation."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the worker pool is stopped: no new generation")
            self._generations += 1
            started = [self._fork() for _ in range(self.n)]
            gen = Generation(self._generations, [pid for pid, _ in started])
            try:
                self._await_ready(started)
            except BaseException:  # none of this generation serves: the previous one goes on
                self.retire(gen.pids)
                raise
            old, self.current = self.current, gen
            if old is not None:
                self.retire(old.pids)
            log_fields(log, "worker generation serving", generation=gen.number, pids=gen.pids,
                       retired=old.pids if old else [])
            return gen

    def retire(self, pids: list[int]) -> None:
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        self.retiring.extend(pids)

    def reap(self) -> None:
        """Collects exited workers (only ours: ``waitpid(-1)`` would also reap the caller's other
        children, the JVM or a test's subprocess); one of the current generation is replaced."""
        with self._lock:
            for pid in list(self.retiring):
                if _exited(pid) is not None:
                    self.retiring.remove(pid)
            current = self.current.pids if self.current is not None else []
            for i, pid in enumerate(current):
                status = _exited(pid)
                if status is None:
                    continue
                assert self.current is not None
                log_fields(log, "worker died: replaced", pid=pid, status=status, generation=self.current.number)
                new_pid, fd = self._fork()
                current[i] = new_pid
                self._await_ready([(new_pid, fd)])

    def stop(self) -> None:
        """Drains every worker and waits for them (SIGKILL after ``drain_seconds`` more)."""
        with self._lock:
            self._stopped = True
            if self.current is not None:
                self.retire(self.current.pids)
                self.current = None
            deadline = time.monotonic() + self.drain_seconds + 5
            while self.retiring and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            for pid in self.retiring:
                _signal(pid, signal.SIGKILL)
            while self.retiring:
                pid = self.retiring.pop()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _exited(pid: int) -> int | None:
    """The exit status of worker ``pid`` if it has ended (and is now reaped), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped already
        return 0
    return status if done else None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class ForkingHolder(StateHolder):
    """A :class:`StateHolder` whose every swap starts a new generation of workers holding the
    new snapshot (the workers' copies of this object are what their requests read)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: WorkerPool | None = None

    def swap(self, state: Snapshot) -> None:
        with self._lock:
            before, self.current = self.current, state  # what the new generation's workers copy
            if self.pool is not None:
                try:
                    self.pool.start_generation()
                except BaseException:  # the workers still serve ``before``: so must this, so the poller retries
                    self.current = before
                    raise
            self.reloads += 1


@dataclass
class Workers:
    """Forked workers serving on ``url`` (tests, benchmarks, ``sparkrec serve``)."""

    pool: WorkerPool
    url: str
    sock: socket.socket
    _reaper: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        self.pool.stop()
        self.sock.close()


def start_workers(app: Any, holder: ForkingHolder | None, n: int, host: str = "127.0.0.1", port: int = 0,
                  drain_seconds: float = 30.0) -> Workers:
    """Forks ``n`` workers serving ``app`` (whose snapshot must be loaded: they copy it) and a
    thread in this process that replaces any that die; ``holder``'s later swaps fork new
    generations."""
    sock = listening_socket(host, port)
    pool = WorkerPool(app, sock, n, drain_seconds)
    pool.start_generation()
    if holder is not None:
        holder.pool = pool
    bound_host, bound_port = sock.getsockname()[:2]
    workers = Workers(pool, f"http://{bound_host}:{bound_port}", sock)

    def reap_forever() -> None:
        while not workers._stop.wait(0.2):
            try:
                pool.reap()
            except Exception as exc:  # keep reaping: a failed replacement is retried next time
                log_fields(log, "worker replacement failed", error=repr(exc)[:300])

    workers._reaper = threading.Thread(target=reap_forever, name="sparkrec-serve-reaper", daemon=True)
    workers._reaper.start()
    return workers
