"""The HTTP API: request and response models, endpoints, error mapping and request logs.

Endpoints are plain (sync) functions that FastAPI runs in its thread pool, where the work
inside (a text's encoding, the LLM, the similar-items search) releases the GIL in torch or
faiss, so requests overlap on the cores; a known user's or a session's list, a millisecond of
numpy, is answered on the event loop instead (see ``answer``). Every
error a client can cause is a 4xx with a one-line ``error`` message; anything else is logged
with its traceback and answered 500 with the request id, so a bug never leaks a stack trace.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import deque
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config, RecommendFilters
from ..logs import get_logger, log_fields
from . import baseline, scoring
from .baseline import BaselineState
from .explain import rewrite_top
from .reload import Snapshot, StateHolder
from .scoring import RequestError
from .state import ServingState

log = get_logger("serve.api")


class RecommendRequest(BaseModel):
    """Exactly one of ``user_id`` (a known user), ``text`` (interests of a new user) or
    ``recent_items`` (an anonymous session, oldest first)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, examples=["276725"])
    text: str | None = Field(None, examples=["I love hard science fiction with first contact"])
    recent_items: list[str] | None = Field(None, examples=[["0439136350", "0345339703"]])
    k: int = Field(20, description="list length, 1..serve.max_k")
    filters: RecommendFilters | None = Field(None, description="narrows recommend.filters for this request")


class Evidence(BaseModel):
    history_items: list[str]
    shared_attributes: list[str]
    popularity_note: str


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    title: str | None
    score: float
    explanation: str
    explanation_source: str = Field(description='"template": the evidence-only template; "llm": the local '
                                                'LLM\'s sentence, accepted by the verifier (explain.llm)')
    evidence: Evidence


class RecommendResponse(BaseModel):
    model: str = Field(description='"hybrid", or the baseline served (recommend.model, e.g. the champion)')
    model_run_id: str
    index: str
    basis: str
    items: list[RecommendedItem]


class SimilarItem(BaseModel):
    rank: int
    item_id: str
    title: str | None
    score: float
    shared_attributes: list[str]


class SimilarResponse(BaseModel):
    model_run_id: str
    item_id: str
    items: list[SimilarItem]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body: " + "; ".join(str(e.get("ctx", {}).get("error", e.get("msg")))
                                                        for e in errors)
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return 422, "; ".join(parts)


def _requester(body: RecommendRequest) -> str:
    """Who asked, as the LLM explanations' cache key: the user id, or a digest of the text or
    the session's items (the key also holds the evidence, so a changed history misses)."""
    if body.user_id is not None:
        return f"user:{body.user_id}"
    asked = body.text if body.text is not None else "\x1f".join(body.recent_items or [])
    kind = "text" if body.text is not None else "session"
    return f"{kind}:{hashlib.sha1(asked.encode()).hexdigest()}"


class RequestLog:
    """Request id and latency headers and one log line per request, as a plain ASGI middleware.

    Why not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` behind it runs
    every request through an extra task and memory stream, a visible share of a request that
    costs a few milliseconds in all.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["id"] = request_id  # request.state.id, for the 500 handler
        status = [500]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", request_id)
                headers.append("x-latency-ms", f"{(time.perf_counter() - started) * 1000:.2f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            log_fields(log, "request", method=scope["method"], path=scope["path"], status=status[0],
                       ms=round((time.perf_counter() - started) * 1000, 2), request_id=request_id)


def create_app(cfg: Config, holder: StateHolder, encoder: Any | None = None) -> FastAPI:
    """The application over ``holder``'s snapshot; ``encoder``: the embed stage's text encoder
    (``None``: text requests answer 409)."""
    sc = cfg.serve
    app = FastAPI(title="sparkrec", version="0.1.0",
                  description="Recommendations from the served model (the hybrid or a baseline champion) over "
                              "the lake, explained from evidence.")
    app.state.holder, app.state.encoder = holder, encoder
    # The benchmark reads the encoder's and the LLM's shares of request time.
    app.state.timings = {"encode_ms": deque(maxlen=100_000), "explain_ms": deque(maxlen=100_000)}

    app.add_middleware(RequestLog)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "id", "?")
        log.error("request failed", exc_info=exc, extra={"fields": {"request_id": rid, "path": request.url.path}})
        return _error(500, f"internal error ({type(exc).__name__}); request id {rid}")

    def snapshot() -> Snapshot:
        state = holder.current
        if state is None:
            raise RequestError(503, "the model is still loading" if holder.error is None
                               else f"no model loaded: {holder.error}")
        return state

    def check_k(k: int) -> None:
        if not 1 <= k <= sc.max_k:
            raise RequestError(422, f"k = {k}: must be between 1 and serve.max_k = {sc.max_k}")

    def check_text(text: str) -> str:
        text = text.strip()
        if not text:
            raise RequestError(422, "text is empty")
        if len(text) > sc.max_text_chars:
            raise RequestError(422, f"text has {len(text)} characters: at most serve.max_text_chars = "
                                    f"{sc.max_text_chars}")
        return text

    def check_recent(items: list[str] | None) -> None:
        if items is None:
            return
        if not items:
            raise RequestError(422, "recent_items is empty")
        if len(items) > sc.max_recent_items:
            raise RequestError(422, f"recent_items has {len(items)} items: at most serve.max_recent_items = "
                                    f"{sc.max_recent_items}")

    def hybrid_list(state: ServingState, body: RecommendRequest, text: str | None) -> tuple[list[dict[str, Any]], str]:
        """The hybrid's list and its basis: a known user, a text (encoded here) or a session."""
        if body.user_id is not None:
            query = scoring.known_user(state, body.user_id)
        elif text is not None:
            if app.state.encoder is None or state.text_payload is None:
                raise RequestError(409, "text requests need a model trained with item text and the embed "
                                        "stage's encoder")
            started = time.perf_counter()
            vector = np.asarray(app.state.encoder.encode([text]), np.float32)
            app.state.timings["encode_ms"].append((time.perf_counter() - started) * 1000)
            query = scoring.text_query(state, vector)
        else:
            query = scoring.session_query(state, body.recent_items or [])
        return scoring.recommend(state, query, body.k, body.filters, cfg.recommend.explain_attributes,
                                 cfg.recommend.exclude_seen), query.basis

    def baseline_list(state: BaselineState, body: RecommendRequest) -> list[dict[str, Any]]:
        """A baseline's list: a known user or a session; text it cannot score (409)."""
        if body.text is not None:
            raise state.refuse("text requests need", "a text tower, and a baseline ranks from item history alone")
        rc = cfg.recommend
        who = (baseline.known_user(state, body.user_id) if body.user_id is not None
               else baseline.session(state, body.recent_items or [], cfg.model.history))
        return baseline.recommend(state, who, body.k, body.filters, rc.explain_attributes, rc.explain_items,
                                  rc.exclude_seen)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the process answers (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Readiness: 200 once a model is loaded, with what is served; 503 before."""
        state = holder.current
        if state is None:
            return _error(503, "loading" if holder.error is None else f"no model loaded: {holder.error}")
        return JSONResponse({"status": "ready", "model": state.model_name, "model_run_id": state.run_id,
                             "index": state.index_kind,
                             "items": state.stats.get("items"), "users": len(state.users.rows),
                             "events_version": state.users.events_version, "reloads": holder.reloads,
                             "text": state.text_payload is not None and app.state.encoder is not None,
                             "pid": os.getpid()})  # which process answered (serve.workers)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k for a known user, a text-only new user or an anonymous session, each explained."""
        pooled = body.text is not None or cfg.explain.llm.enabled or isinstance(holder.current, BaselineState)
        return await run_in_threadpool(answer, body) if pooled else answer(body)

    def answer(body: RecommendRequest) -> dict[str, Any]:
        """The hybrid's list for a known user or a session is a millisecond of numpy, run on the
        event loop: a sync endpoint would hop to the thread pool twice (the endpoint, then
        FastAPI's response validation), and with the GIL those hops and the threads' hand-overs
        cost more than the list (measured: 19% of the server's time, on Book-Crossing). Encoding
        a text and the LLM's rewrite take tens of milliseconds and release the GIL in torch, and
        a baseline's list was not measured: those run in the pool, so they never hold up the loop."""
        given = [name for name in ("user_id", "text", "recent_items") if getattr(body, name) is not None]
        if len(given) != 1:
            raise RequestError(422, "give exactly one of user_id, text, recent_items"
                               + (f" (got {', '.join(given)})" if given else ""))
        check_k(body.k)
        state = snapshot()
        text = check_text(body.text) if body.text is not None else None
        check_recent(body.recent_items)
        if isinstance(state, BaselineState):
            listed, basis = baseline_list(state, body), "history"
        else:
            listed, basis = hybrid_list(state, body, text)
        if cfg.explain.llm.enabled:
            started = time.perf_counter()
            listed = rewrite_top(listed, cfg.explain.llm, _requester(body), basis, state.vocabulary)
            app.state.timings["explain_ms"].append((time.perf_counter() - started) * 1000)
        return {"model": state.model_name, "model_run_id": state.run_id, "index": state.index_kind,
                "basis": "session" if body.recent_items is not None else basis, "items": listed}

    @app.get("/items/{item_id}/similar", response_model=SimilarResponse)
    def similar(item_id: str, k: int = Query(10, description="1..serve.max_k")) -> dict[str, Any]:
        """Items nearest to this one in the model's item space."""
        check_k(k)
        state = snapshot()
        if isinstance(state, BaselineState):
            raise state.refuse("similar items need", "an item space, and a baseline has none of its own")
        return {"model_run_id": state.run_id, "item_id": item_id,
                "items": scoring.similar_items(state, item_id, k)}

    return app
