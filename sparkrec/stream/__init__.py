"""Structured Streaming: new interaction events folded into the lake and the served lists,
exactly once (``sparkrec stream``), and a replay of held-out events for demos (``sparkrec replay``)."""

from __future__ import annotations

from .job import run_stream
from .replay import run_replay

__all__ = ["run_replay", "run_stream"]
