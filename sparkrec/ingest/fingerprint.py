"""Recognising an unchanged input without reading it.

A re-run over the same files used to read, validate and MERGE every row only to insert
nothing. Each table's ingest commit now records a fingerprint of what produced it: the input
files' paths, sizes and modification times (listed, never read), the source's column mapping
and rules, the ingest settings, and for tables validated against the items (interactions,
tags) the items' own fingerprint. When a table's newest ingest commit carries the same
fingerprint, ingest skips the table: the table already holds exactly what a re-run would
give it.

Sizes and times stand in for content, as ``make`` and ``rsync`` use them: hashing a large
input would cost a read of every byte, most of what the skip saves. A file rewritten with the
same size within the file system's time resolution would be missed; ``ingest.skip_unchanged:
false`` forces a full run.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
from typing import Any

import pyarrow.fs as pafs

from ..lake import Lake
from ..lake.storage import delta_uri, is_remote, storage_options, table_filesystem

INPUT_KEY = "sparkrec.ingest.input"
_GLOB_CHARS = "*?[{"


def _visible(path: str) -> bool:
    """Spark skips files whose name starts with ``_`` or ``.`` (``_SUCCESS``, ``.crc``)."""
    return not os.path.basename(path).startswith(("_", "."))


def _local_files(path: str) -> list[tuple[str, int, int]]:
    paths = sorted(glob.glob(path)) if any(c in path for c in _GLOB_CHARS) else [path]
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, names in os.walk(p):
                out += [os.path.join(root, n) for n in names if _visible(n)]
        elif os.path.exists(p):
            out.append(p)
    return [(p, (st := os.stat(p)).st_size, st.st_mtime_ns) for p in sorted(out)]


def _remote_files(path: str) -> list[tuple[str, int, int]]:
    """Object storage through the lake's own file system (same credentials, same endpoint)."""
    uri = delta_uri(path)
    glob_at = min((uri.find(c) for c in _GLOB_CHARS if c in uri), default=-1)
    static = uri if glob_at < 0 else uri[:glob_at]
    parent = static.rstrip("/").rsplit("/", 1)[0]
    filesystem = table_filesystem(parent, storage_options(uri))
    infos = filesystem.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))

    def wanted(full: str) -> bool:
        if glob_at >= 0:
            return fnmatch.fnmatch(full, uri)
        return full == uri or full.startswith(uri.rstrip("/") + "/")

    found = ((f"{parent}/{i.path.lstrip('/')}", i) for i in infos if i.type == pafs.FileType.File)
    return sorted((full, int(i.size or 0), int(i.mtime_ns or 0)) for full, i in found
                  if _visible(full) and wanted(full))


def list_input(path: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file Spark would read for ``path`` (a file, a folder
    or a glob; local or object storage), sorted. Listing only: no file is opened."""
    return _remote_files(path) if is_remote(path) else _local_files(path)


def input_fingerprint(path: str, settings: dict[str, Any], depends_on: str | None = None) -> str:
    """Digest of the files' listing, the settings that shape validation, and a fingerprint
    this table's validation depends on (the items', for interactions and tags)."""
    payload = {"files": list_input(path), "settings": settings, "depends_on": depends_on}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def completed_runs(lake: Lake) -> set[str]:
    """Ingest runs that got as far as their quarantine commit, the last write of a run: a run
    killed before it left some rejected rows unwritten, so its tables must not be skipped."""
    if not lake.exists("quarantine"):
        return set()
    return {str(h["sparkrec.run_id"]) for h in lake.history("quarantine") if h.get("sparkrec.run_id")}


def unchanged_since_last_ingest(lake: Lake, table: str, fingerprint: str, completed: set[str]) -> bool:
    """Whether the table's newest ingest commit recorded ``fingerprint`` and its run completed."""
    if not lake.exists(table):
        return False
    for entry in sorted(lake.history(table), key=lambda h: int(h["version"]), reverse=True):
        if entry.get("sparkrec.ingest.read") is not None:  # an ingest commit: the newest decides
            return entry.get(INPUT_KEY) == fingerprint and str(entry.get("sparkrec.run_id")) in completed
    return False
