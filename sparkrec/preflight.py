"""Checks that run before any stage writes: a run either starts with everything it needs or
stops at once with one line naming the file, column or table that is wrong.

Without them, a missing column or an empty file was found by Spark half-way through ingest,
after ``items`` had been committed, and a bad ``lake.root`` surfaced as a Java traceback.
Inputs are checked cheaply on the driver: the first lines of each CSV file, the footer of
each Parquet file; nothing is parsed in Spark. Paths on object storage (``s3://``, ``abfss://``
...) are not listed here: Spark reports those when it reads them.

:func:`check_inputs` needs no Spark session and runs first; :func:`check_tables` asks the
opened lake whether the tables a stage reads exist, unless an earlier stage of the same run
writes them.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob
import gzip
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .config import Config, CsvOptions, GenericInput, GenericSource
from .errors import PreflightError

if TYPE_CHECKING:
    from .lake import Lake

# Hadoop's input listing skips these; so do we.
_HIDDEN = ("_", ".")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}
_UNREADABLE_HERE = (".deflate", ".lz4", ".snappy", ".zst")  # Hadoop codecs without a stdlib reader
_GLOB = re.compile(r"[*?\[{]")
_HEAD_BYTES = 1 << 20  # a header longer than this is not a header

# Tables a stage reads, and the stage that writes them.
NEEDS: dict[str, dict[str, str]] = {
    "features": {"interactions": "ingest"},
    "embed": {"item_features": "features"},
    "train": {"events": "features", "item_features": "features", "user_index": "features"},
    "recommend": {"events": "features", "item_features": "features", "user_index": "features"},
    "evaluate": {"item_index": "features", "item_features": "features"},
    "stream": {"interactions": "ingest", "events": "features", "user_index": "features", "item_index": "features",
               "item_features": "features"},
}


def local_path(uri: str) -> Path | None:
    """The local path of ``uri``, or None for object storage and DBFS (not checked here)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):])
    if "://" in uri or uri.startswith("dbfs:"):
        return None
    return Path(uri)


def expand_braces(pattern: str) -> list[str]:
    """Hadoop glob alternatives: ``a.{csv,tsv}`` -> ``a.csv``, ``a.tsv`` (Python's glob lacks them)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        return [pattern]
    options, level, current = [], 0, ""
    for ch in pattern[start + 1:end]:
        if ch == "," and level == 0:
            options.append(current)
            current = ""
            continue
        level += {"{": 1, "}": -1}.get(ch, 0)
        current += ch
    options.append(current)
    tail = pattern[end + 1:]
    return [out for option in options for out in expand_braces(pattern[:start] + option + tail)]


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(_HIDDEN))
    return [path] if path.is_file() else []


def input_files(key: str, uri: str) -> list[Path] | None:
    """The files Spark would read for ``uri`` (a file, a directory or a glob); None when remote."""
    path = local_path(uri)
    if path is None:
        return None
    if not _GLOB.search(str(path)):
        if not path.exists():
            raise PreflightError(f"{key} = {uri!r}: no such file or directory")
        files = _files_under(path)
        if not files:
            raise PreflightError(f"{key} = {uri!r}: the directory holds no data files")
        return files
    matches = sorted({m for pattern in expand_braces(str(path)) for m in glob.glob(pattern)})
    files = [f for m in matches for f in _files_under(Path(m))]
    if not files:
        raise PreflightError(f"{key} = {uri!r}: the pattern matches no file")
    return files


def _open(path: Path) -> IO[bytes]:
    opener = _OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")  # type: ignore[operator, return-value]


def _first_lines(path: Path, encoding: str, n: int) -> Iterator[str]:
    """Up to ``n`` non-blank lines, each decoded on its own: the header, then whether any data
    follows. Only these lines are decoded, so a bad byte further on is left to ingest, which
    quarantines that row."""
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))  # newlines are not one byte
    with _open(path) as raw:
        lines = (io.TextIOWrapper(raw, encoding=encoding, newline="") if wide
                 else (b.decode(encoding) for b in iter(lambda: raw.readline(_HEAD_BYTES), b"")))
        found = 0
        for line in lines:
            if line.strip():
                yield line.rstrip("\r\n")
                found += 1
                if found == n:
                    return


def _split_header(line: str, opts: CsvOptions) -> list[str]:
    line = line.removeprefix("\ufeff")
    if len(opts.sep) == 1:
        escape = opts.escape if opts.escape and opts.escape != opts.quote else None
        row = next(csv.reader([line], delimiter=opts.sep, quotechar=opts.quote or None, escapechar=escape,
                              doublequote=opts.escape == opts.quote))
    else:  # Spark takes multi-character separators; the csv module does not
        row = [f.strip(opts.quote) if opts.quote else f for f in line.split(opts.sep)]
    return [c.strip() for c in row]


def csv_columns(key: str, files: list[Path], opts: CsvOptions) -> tuple[list[str], bool]:
    """The header every file shares, and whether any file has a data line after it."""
    if not opts.header:
        raise PreflightError(f"{key}.csv.header = false: CSV inputs need a header row naming their columns")
    header: list[str] | None = None
    has_rows = False
    for path in files:
        if path.name.lower().endswith(_UNREADABLE_HERE):
            return header or [], True  # Spark decompresses these; trust it
        if path.stat().st_size == 0:
            raise PreflightError(f"{path}: empty file ({key})")
        try:
            lines = list(_first_lines(path, opts.encoding, 2))
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise PreflightError(f"{path}: cannot read the header as {opts.encoding} ({key}): "
                                 f"{' '.join(str(exc).split())}") from None
        if not lines:
            raise PreflightError(f"{path}: no header line, only blank lines ({key})")
        columns = _split_header(lines[0], opts)
        if header is None:
            header = columns
        elif columns != header:
            raise PreflightError(f"{path}: its header {columns} differs from {files[0].name}'s {header} ({key}); "
                                 "Spark would parse it by the first file's header")
        has_rows = has_rows or len(lines) > 1
    return header or [], has_rows


def parquet_columns(key: str, files: list[Path]) -> tuple[list[str], bool]:
    """The columns of the Parquet files (their union) and whether any row exists, from footers."""
    import pyarrow.parquet as pq

    columns: list[str] = []
    rows = 0
    for path in files:
        if path.stat().st_size == 0:
            raise PreflightError(f"{path}: empty file ({key})")
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise PreflightError(f"{path}: not a readable Parquet file ({key}): "
                                 f"{' '.join(str(exc).split())}") from None
        columns += [n for n in meta.schema.to_arrow_schema().names if n not in columns]
        rows += meta.num_rows
    return columns, rows > 0


def required_columns(role: str, spec: GenericInput) -> dict[str, str]:
    """Configured column -> what it is used for, as the ingest validators read them."""
    cols = spec.columns.model_dump()  # type: ignore[attr-defined]
    if role == "items":
        names = {k: cols[k] for k in ("id", "title", "description", "year", "authors", "genres", "publisher")}
        names.update({f"attribute {n}": n for n in [*cols["text_fields"], *cols["categorical_fields"]]})
    else:
        names = dict(cols)
    return {column: f"{role}.columns.{field}" for field, column in names.items() if isinstance(column, str)}


def check_input(role: str, spec: GenericInput) -> None:
    """One source file set: it exists, is readable, has the configured columns and some rows."""
    key = f"data.generic.{role}"
    files = input_files(f"{key}.path", spec.path)
    if files is None:
        return
    if spec.format == "parquet":
        columns, has_rows = parquet_columns(key, files)
    else:
        codecs.lookup(spec.csv.encoding)  # validated at config load; kept explicit for presets
        columns, has_rows = csv_columns(key, files, spec.csv)
    if columns:
        missing = {c: use for c, use in required_columns(role, spec).items() if c not in columns}
        if missing:
            where = files[0] if len(files) == 1 else spec.path
            wanted = ", ".join(f"{c!r} ({use})" for c, use in missing.items())
            raise PreflightError(f"{where}: no column {wanted}; its columns are {columns}")
    if not has_rows and role == "interactions":
        raise PreflightError(f"{spec.path}: no data rows, only a header ({key})")


def check_source(src: GenericSource) -> None:
    for role in ("items", "users", "interactions", "tags"):
        spec = getattr(src, role)
        if spec is not None:
            check_input(role, spec)


def check_lake_root(root: str, namespace: str) -> None:
    """``lake.root`` must be (or be creatable as) a directory, and so must its namespace."""
    path = local_path(root)
    if path is None:
        return
    for candidate, what in ((path, "lake.root"), (path / namespace, "lake.root/<namespace>")):
        if candidate.exists() and not candidate.is_dir():
            raise PreflightError(f"{what} = {str(candidate)!r}: is a file, not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"lake.root = {root!r}: {str(existing)!r} is a file, not a directory")
    if not path.exists() and not os.access(existing, os.W_OK):
        raise PreflightError(f"lake.root = {root!r}: cannot create it, {str(existing)!r} is not writable")


def check_inputs(cfg: Config, stages: Sequence[str], users_file: str | None = None) -> None:
    """Everything about files and config that can be checked before Spark starts."""
    from .ingest.presets import resolve_source

    if not cfg.lake.catalog:
        check_lake_root(cfg.lake.root, cfg.namespace)
    if "ingest" in stages:
        check_source(resolve_source(cfg.data))
    if "embed" in stages and cfg.embed.user_text_path:
        input_files("embed.user_text_path", cfg.embed.user_text_path)
    if users_file and "recommend" in stages:
        files = input_files("--users", users_file)
        if files is not None and all(f.stat().st_size == 0 for f in files):
            raise PreflightError(f"--users {users_file}: empty file (one user_id per line)")


def stage_needs(cfg: Config, stage: str) -> dict[str, str]:
    """Table -> the stage that writes it, for the tables ``stage`` reads."""
    needs = dict(NEEDS.get(stage, {}))
    split = {"evaluate": cfg.evaluation.split, "train": cfg.train.split}.get(stage, "none")
    if split != "none":
        needs[f"split_{split}"] = "features"
    return needs


def check_tables(cfg: Config, lake: Lake, stages: Sequence[str]) -> None:
    """Each stage's input tables exist, or an earlier stage of this run writes them."""
    for i, stage in enumerate(stages):
        earlier = set(stages[:i])
        for table, writer in stage_needs(cfg, stage).items():
            if writer not in earlier and not lake.exists(table):
                raise PreflightError(f"{stage} reads table {table!r}, which does not exist at "
                                     f"{lake.location(table)}: run `sparkrec {writer}` first")
