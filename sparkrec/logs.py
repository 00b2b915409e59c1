"""One logging setup for every job: readable text by default, JSON lines for log shippers.

Stage timings and row counts are logged as structured fields (``extra={"fields": {...}}``)
so a scheduler's log search can aggregate them without parsing prose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

_ROOT = "sparkrec"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%H:%M:%S")
        base = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    root = logging.getLogger(_ROOT)
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def log_fields(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})


@contextlib.contextmanager
def timed_stage(logger: logging.Logger, stage: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log start and end of a stage with its wall time; the body adds counts to the yielded dict."""
    info: dict[str, Any] = dict(fields)
    log_fields(logger, f"{stage} started", stage=stage, **fields)
    start = time.perf_counter()
    try:
        yield info
    except Exception:
        log_fields(logger, f"{stage} failed", logging.ERROR, stage=stage,
                   seconds=round(time.perf_counter() - start, 3))
        raise
    info["seconds"] = round(time.perf_counter() - start, 3)
    log_fields(logger, f"{stage} done", stage=stage, **info)
