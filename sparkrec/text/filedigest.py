"""Content digests of model files, cached so that hashing ~100 MB of weights is paid once.

The model fingerprint must change when a weight file's bytes change, even at the same name
and size (a fine-tune written over the original, a corrupted copy). Hashing the bytes takes
about a second per 100 MB on these machines, on every driver start and every Spark worker;
so each digest is stored in a JSON sidecar keyed by (resolved path, size, mtime_ns) and only
recomputed when one of those changes. A tool that rewrites a file and then restores its
mtime and size would defeat the cache: that is the accepted trade-off of any such cache
(``make``, ``rsync`` rely on the same key).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

_SIDECAR = "file-digests.json"
_CHUNK = 1 << 20


def cache_root(configured: str | None = None) -> Path:
    """Where sparkrec caches derived files: ``configured``, else ``$SPARKREC_CACHE``, else
    ``~/.cache/sparkrec``; resolved on the machine that uses it (driver or worker)."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("SPARKREC_CACHE", Path.home() / ".cache" / "sparkrec"))


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file's bytes (constant memory, whatever the file's size)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sidecar(sidecar: Path) -> dict[str, dict[str, int | str]]:
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}  # missing, or torn by a crash: recomputing is always correct
    return data if isinstance(data, dict) else {}


def _write_sidecar(sidecar: Path, data: dict[str, dict[str, int | str]]) -> None:
    """Atomic replace, so a concurrent reader never sees half a file; a concurrent writer may
    drop another's new entry, which only costs that digest being recomputed once more."""
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=sidecar.parent, prefix=".digests-", suffix=".json")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, sort_keys=True)
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only cache still gives correct digests, just uncached


def file_digests(paths: list[Path], cache_dir: Path) -> dict[Path, str]:
    """sha256 of each file, from the sidecar where (path, size, mtime_ns) still match."""
    sidecar = cache_dir / _SIDECAR
    known = _read_sidecar(sidecar)
    out: dict[Path, str] = {}
    changed = False
    for path in paths:
        key = str(path.resolve())
        stat = path.stat()
        entry = known.get(key)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            out[path] = str(entry["sha256"])
            continue
        out[path] = sha256_file(path)
        known[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": out[path]}
        changed = True
    if changed:
        _write_sidecar(sidecar, known)
    return out
