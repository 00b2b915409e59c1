"""The built-in datasets, expressed as presets of the generic, config-driven source.

Keeping them as plain config (rather than bespoke parsers) means the generic path is the
one exercised by every test and benchmark.
"""

from __future__ import annotations

from pathlib import Path

from ..config import (
    CsvOptions,
    DataConfig,
    GenericInteractions,
    GenericItems,
    GenericSource,
    GenericTags,
    GenericUsers,
    InteractionColumns,
    ItemColumns,
    TagColumns,
    UserColumns,
)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample" / "ml-latest-small"


def sample_dir() -> Path:
    """The bundled sample as a real directory. Installed, it is ``SAMPLE_DIR``; imported from a
    zip (``spark-submit --py-files sparkrec-*.whl`` puts the wheel itself on the driver's path) the
    files are inside the archive, where Spark cannot read them, so they are extracted once to
    ``$SPARKREC_CACHE`` (default ``~/.cache/sparkrec``)/sample-<archive hash>/. On a multi-node
    cluster that cache must be on storage the executors see (a local cluster shares the disk)."""
    import hashlib
    import os
    import zipfile

    if SAMPLE_DIR.is_dir():
        return SAMPLE_DIR
    parts = SAMPLE_DIR.parts
    for i in range(len(parts), 0, -1):
        archive = Path(*parts[:i])
        if archive.is_file() and zipfile.is_zipfile(archive):
            inner = "/".join(parts[i:])
            break
    else:
        return SAMPLE_DIR  # neither a directory nor inside an archive: preflight names the missing file
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("SPARKREC_CACHE", Path.home() / ".cache" / "sparkrec"))
    target = cache / f"sample-{digest}"
    if not (target / ".complete").is_file():
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.startswith(inner + "/") and not name.endswith("/"):
                    out = target / name[len(inner) + 1:]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(name))
        (target / ".complete").touch()
    return target


def movielens(path: str | Path) -> GenericSource:
    root = str(path).rstrip("/")
    return GenericSource(
        interactions=GenericInteractions(
            path=f"{root}/ratings.csv",
            columns=InteractionColumns(user="userId", item="movieId", rating="rating", timestamp="timestamp"),
        ),
        items=GenericItems(
            path=f"{root}/movies.csv",
            columns=ItemColumns(id="movieId", title="title", genres="genres", year_from_title=True),
        ),
        tags=GenericTags(path=f"{root}/tags.csv",
                         columns=TagColumns(user="userId", item="movieId", tag="tag", timestamp="timestamp")),
        rating_min=0.5, rating_max=5.0,
        user_id_pattern=r"\d+", item_id_pattern=r"\d+",
    )


def bookcrossing(path: str | Path) -> GenericSource:
    root = str(path).rstrip("/")
    csv = CsvOptions(sep=";", quote='"', escape="\\", encoding="ISO-8859-1")
    return GenericSource(
        interactions=GenericInteractions(
            path=f"{root}/BX-Book-Ratings.csv", csv=csv,
            columns=InteractionColumns(user="User-ID", item="ISBN", rating="Book-Rating"),
        ),
        items=GenericItems(
            path=f"{root}/BX-Books.csv", csv=csv,
            columns=ItemColumns(id="ISBN", title="Book-Title", authors="Book-Author",
                                year="Year-Of-Publication", publisher="Publisher",
                                categorical_fields=["Image-URL-M"]),
        ),
        users=GenericUsers(path=f"{root}/BX-Users.csv", csv=csv,
                           columns=UserColumns(id="User-ID", location="Location", age="Age")),
        # Rating 0 is Book-Crossing's implicit interaction; 1-10 are explicit ratings.
        rating_min=0.0, rating_max=10.0, implicit_rating=0.0,
        user_id_pattern=r"\d+", item_id_pattern=r"\d{9}[\dX]|\d{13}", item_id_uppercase=True,
        unescape_html=True,
        file_order="arbitrary",  # the ratings file is sorted by user and ISBN: not time
    )


def resolve_source(data: DataConfig) -> GenericSource:
    if data.dataset == "sample":
        return movielens(sample_dir())
    if data.dataset == "movielens":
        return movielens(data.paths.movielens)
    if data.dataset == "bookcrossing":
        return bookcrossing(data.paths.bookcrossing)
    assert data.generic is not None  # guaranteed by DataConfig's validator
    return data.generic
