"""``sparkrec serve``: the HTTP recommendation service (FastAPI + uvicorn).

Modules: :mod:`.state` (one immutable in-memory snapshot, built with the batch stage's loading
code), :mod:`.index` (exact or faiss top-K), :mod:`.scoring` (one request -> one explained list),
:mod:`.explain` (the template, in Python), :mod:`.reload` (hot reload by reference swap),
:mod:`.api` (endpoints and errors), :mod:`.server` (uvicorn, threads), :mod:`.workers` (forked
server processes over one snapshot).
"""

from __future__ import annotations

from .api import create_app
from .reload import Poller, StateHolder
from .server import build, run_server, start_in_thread
from .state import ServingState, load_state

__all__ = ["Poller", "ServingState", "StateHolder", "build", "create_app", "load_state", "run_server",
           "start_in_thread"]
