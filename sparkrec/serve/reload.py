"""Hot reload: a background poller swaps in a new snapshot when the served model or the events change.

Why a reference swap: a request reads ``holder.current`` once and works on that snapshot to the
end, so nothing in flight is dropped or sees half of two models; the old snapshot is freed when
its last request finishes. The poller asks the same question the batch stage asks
(``resolve_run``: the latest hybrid, the champion alias, a name or a run id) and compares the
events table's Delta version, which is how the streaming job's MERGEs become visible. A failed
reload is logged and the current snapshot keeps serving. The alias may move between the hybrid
and a baseline: :func:`load_served` builds whichever kind of snapshot the run holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from ..config import Config
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..model.store import resolve_run
from . import baseline
from .baseline import BaselineState, load_baseline_state
from .state import ServingState, load_state, with_new_users

Snapshot = ServingState | BaselineState


def load_served(cfg: Config, spark: SparkSession, lake: Lake) -> Snapshot:
    """A snapshot of the model ``recommend.model`` names: the hybrid's, or a baseline's."""
    served = resolve_run(cfg, lake)
    if served.model == "hybrid":
        return load_state(cfg, spark, lake)
    return load_baseline_state(cfg, spark, lake, served)


def refresh_users(state: Snapshot, cfg: Config, spark: SparkSession, lake: Lake) -> Snapshot:
    """The same model over the histories the events table holds now."""
    if isinstance(state, BaselineState):
        return baseline.with_new_users(state, cfg, spark, lake)
    return with_new_users(state, spark, lake)

log = get_logger("serve.reload")


class StateHolder:
    """The snapshot requests use; ``None`` until the first load finishes (``/ready`` says 503)."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        self.error: str | None = None  # why the first load failed, for /ready
        self.reloads = 0
        self._lock = threading.Lock()  # one writer at a time; readers never take it

    def swap(self, state: Snapshot) -> None:
        with self._lock:
            self.current = state
            self.reloads += 1


class Poller:
    """Loads the first snapshot, then checks every ``serve.reload_seconds`` for a newer one."""

    def __init__(self, cfg: Config, spark: SparkSession, lake: Lake, holder: StateHolder,
                 loader: Callable[[Config, SparkSession, Lake], Snapshot] = load_served) -> None:
        self.cfg, self.spark, self.lake, self.holder, self.loader = cfg, spark, lake, holder, loader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_first(self) -> None:
        try:
            self.holder.swap(self.loader(self.cfg, self.spark, self.lake))
        except Exception as exc:
            self.holder.error = " ".join(str(exc).split()) or type(exc).__name__
            log_fields(log, "first load failed", error=self.holder.error)
            raise

    def check_once(self) -> str:
        """One poll: 'model' (new model loaded), 'events' (histories reloaded) or 'none'."""
        state = self.holder.current
        if state is None:
            self.load_first()
            return "model"
        served = resolve_run(self.cfg, self.lake)
        if served.run_id != state.run_id:
            started = time.perf_counter()
            self.holder.swap(self.loader(self.cfg, self.spark, self.lake))
            log_fields(log, "model swapped", old_run_id=state.run_id, new_run_id=served.run_id,
                       seconds=round(time.perf_counter() - started, 2))
            return "model"
        if self.lake.version("events") != state.users.events_version:
            self.holder.swap(refresh_users(state, self.cfg, self.spark, self.lake))
            return "events"
        return "none"

    def _loop(self, first: bool) -> None:
        if first:
            with contextlib.suppress(Exception):  # logged in load_first; /ready reports it
                self.load_first()
        interval = self.cfg.serve.reload_seconds
        while interval > 0 and not self._stop.wait(interval):
            try:
                self.check_once()
            except Exception as exc:  # keep serving the snapshot we have
                log_fields(log, "reload check failed; still serving the loaded model",
                           error=" ".join(str(exc).split())[:300],
                           run_id=self.holder.current.run_id if self.holder.current else None)

    def start(self, load_in_background: bool = True) -> None:
        """Starts polling; the first load runs in the poller's thread unless it was done already."""
        self._thread = threading.Thread(target=self._loop, args=(load_in_background,), name="sparkrec-serve-reload",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
