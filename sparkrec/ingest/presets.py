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
        return movielens(SAMPLE_DIR)
    if data.dataset == "movielens":
        return movielens(data.paths.movielens)
    if data.dataset == "bookcrossing":
        return bookcrossing(data.paths.bookcrossing)
    assert data.generic is not None  # guaranteed by DataConfig's validator
    return data.generic
