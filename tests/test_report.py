"""The HTML evaluation report: self-contained, one figure per expected chart, and really laid out by a browser.

The browser test renders the file in headless Chromium because a report that is valid HTML can still show
nothing (an SVG that collapses to zero size, a script error); only a layout engine can tell.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from sparkrec.evaluation.report import (
    CHART_IDS,
    expected_chart_ids,
    render_report,
    write_report,
)

CHROMIUM = Path(os.environ.get("SPARKREC_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1"}

MODELS = ["hybrid", "most_popular", "als", "itemknn"]
SLICES = {  # slice -> users evaluated
    "all": 610, "warm": 540, "cold_items": 212, "cold_users": 70,
    "activity:1-5": 38, "activity:6-20": 151, "activity:21-100": 290, "activity:101+": 131,
}
KS = [5, 10, 20]
AT_K = ["precision", "recall", "ndcg", "map", "hitrate", "coverage", "novelty", "popularity_bias", "ild"]
NO_K = ["mrr", "rmse", "mae"]
TRAIN_SECONDS = {"hybrid": 412.7, "most_popular": 0.9, "als": 38.2, "itemknn": math.nan}
# SVG namespace URIs are identifiers, never fetched
NAMESPACE_URIS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _metric_value(rng: np.random.Generator, model: str, slice_name: str, metric: str, k: int | None) -> float:
    skill = {"hybrid": 1.0, "als": 0.8, "itemknn": 0.7, "most_popular": 0.45}[model]
    shift = {"cold_items": 0.3, "cold_users": 0.5, "activity:1-5": 0.6}.get(slice_name, 1.0)
    noise = rng.uniform(0.9, 1.1)
    if k is None:
        if metric == "mrr":
            return 0.25 * skill * shift * noise
        return {"rmse": 0.86, "mae": 0.67}[metric] / skill * noise
    base = {
        "precision": 0.12 * (10 / k) ** 0.4, "recall": 0.08 * (k / 5) ** 0.7, "ndcg": 0.10 * (k / 5) ** 0.3,
        "map": 0.05 * (k / 5) ** 0.2, "hitrate": min(0.95, 0.35 * (k / 5) ** 0.5),
    }
    if metric in base:
        return base[metric] * skill * shift * noise
    if metric == "coverage":
        return (0.02 if model == "most_popular" else 0.3 * skill) * (k / 20) ** 0.5 * noise
    if metric == "novelty":
        return (6.0 if model == "most_popular" else 9.0 + skill) * noise
    if metric == "popularity_bias":
        return (0.9 if model == "most_popular" else 0.6 - 0.3 * skill) * noise
    return 0.4 + 0.3 * skill * noise  # ild


def build_metrics(models: list[str] = MODELS) -> pd.DataFrame:
    """What the evaluate job produces, including the gaps it really has."""
    rng = np.random.default_rng(7)
    rows = []
    for model in models:
        for slice_name, n_users in SLICES.items():
            for metric in AT_K + NO_K:
                for k in KS if metric in AT_K else [None]:
                    value = _metric_value(rng, model, slice_name, metric, k)
                    # item-item neighbours cannot score items nobody interacted with in training
                    if model == "itemknn" and slice_name == "cold_items":
                        value = math.nan
                    # popularity predicts no ratings
                    if model == "most_popular" and metric in ("rmse", "mae"):
                        value = math.nan
                    # a model whose whole MAP column failed: it must simply have no line
                    if model == "als" and metric == "map":
                        value = math.nan
                    rows.append({"model": model, "slice": slice_name, "metric": metric,
                                 "k": math.nan if k is None else k, "value": value,
                                 "n_users": n_users, "train_seconds": TRAIN_SECONDS.get(model, 1.0)})
    return pd.DataFrame(rows)


def build_curves() -> pd.DataFrame:
    rows = []
    for epoch in range(1, 6):
        rows.append({"model": "hybrid", "epoch": epoch, "metric": "val_recall_at_20", "value": 0.1 + 0.04 * epoch})
        rows.append({"model": "hybrid", "epoch": epoch, "metric": "train_loss", "value": 1.2 / epoch})
    rows[3]["value"] = math.nan  # a skipped validation pass
    return pd.DataFrame(rows)


META = {
    "dataset": "ml-latest-small",
    "split": "temporal_leave_last_20pct",
    "evaluation id": "eval-2024-05-01T12:00:00Z-<a&b>",  # must come out escaped
    "generated at": "2024-05-01 12:03:11 UTC",
    "items": 9742,
    "users": 610,
    "ks": [5, 10, 20],
}
PROTOCOL = """Ranking protocol

* Truth: test rows with is_positive = true
* Precision@K = hits@K / K  (K < 100 & <b>)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("report") / "nested" / "dir" / "report.html"
    written = write_report(path, build_metrics(), build_curves(), META, PROTOCOL)
    assert written == path
    return path, path.read_text(encoding="utf-8")


class _Collector(HTMLParser):
    """Just enough of the DOM for the assertions: element attributes by tag, and the summary's row models."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.summary_models: list[str] = []
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "table":
            self._in_summary = attributes.get("id") == "summary-table"
        if self._in_summary and tag == "tr" and attributes.get("data-model"):
            self.summary_models.append(attributes["data-model"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_summary = False

    def first(self, tag: str) -> dict[str, str | None]:
        return next(attrs for t, attrs in self.elements if t == tag)

    def figures(self) -> dict[str, dict[str, str | None]]:
        return {attrs["data-chart"] or "": attrs for tag, attrs in self.elements
                if tag == "figure" and "chart" in (attrs.get("class") or "").split()}


def _parse(document: str) -> _Collector:
    collector = _Collector()
    collector.feed(document)
    collector.close()
    return collector


def _chart_svg(document: str, chart_id: str) -> str:
    match = re.search(rf'<figure[^>]*id="chart-{re.escape(chart_id)}"[^>]*>(.*?)</figure>', document, re.DOTALL)
    assert match, chart_id
    return match.group(1)


# --------------------------------------------------------------------------------------------------
# static checks


def test_expected_chart_ids_for_full_input():
    ids = expected_chart_ids(build_metrics(), build_curves())
    assert ids == [
        "metric-at-k-precision", "metric-at-k-recall", "metric-at-k-ndcg", "metric-at-k-map",
        "metric-at-k-hitrate", "coverage-vs-popularity", "slices", "slices-recall", "training-curves",
    ]
    assert set(ids) <= set(CHART_IDS)


def test_report_is_self_contained(report):
    _, document = report
    # nothing the browser would fetch: no src/href/url()/@import pointing off the page
    assert not re.search(r"""\b(?:src|href|xlink:href|action|poster|srcset)\s*=\s*["']?\s*(?:[a-z]+:)?//""",
                         document, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?\s*(?:[a-z]+:)?//", document, re.IGNORECASE)
    assert "@import" not in document
    assert not re.search(r"<(?:link|img|iframe|object|embed)\b", document, re.IGNORECASE)
    assert not re.search(r"<script[^>]*\bsrc\s*=", document, re.IGNORECASE)
    # the only absolute URLs left are namespace identifiers
    urls = set(re.findall(r"""https?://[^\s"'<>)]+""", document))
    assert urls <= NAMESPACE_URIS, urls - NAMESPACE_URIS
    # inlined SVG, not standalone documents
    assert "<?xml" not in document
    assert "<!DOCTYPE svg" not in document
    assert document.startswith("<!DOCTYPE html>")


def test_every_expected_chart_appears_exactly_once(report):
    _, document = report
    ids = expected_chart_ids(build_metrics(), build_curves())
    for chart_id in ids:
        assert document.count(f'id="chart-{chart_id}"') == 1, chart_id
        assert document.count(f'data-chart="{chart_id}"') == 1, chart_id
    figures = _parse(document).figures()
    assert list(figures) == ids
    for chart_id in ids:
        svg = _chart_svg(document, chart_id)
        assert svg.count("<svg") == 1 and "<figcaption>" in svg
    # matplotlib names elements alike in every figure; inlined, they must still be unique in the page
    all_ids = re.findall(r'\bid="([^"]+)"', document)
    duplicates = {i for i in all_ids if all_ids.count(i) > 1}
    assert not duplicates, sorted(duplicates)[:10]


def test_header_summary_and_slice_tables(report):
    _, document = report
    parsed = _parse(document)
    assert "<h1>sparkrec evaluation report</h1>" in document
    assert sorted(parsed.summary_models) == sorted(MODELS)
    for key in META:
        assert f"<th>{key}</th>" in document
    assert "eval-2024-05-01T12:00:00Z-&lt;a&amp;b&gt;" in document
    assert "<td>5, 10, 20</td>" in document
    assert '<pre class="protocol">Ranking protocol' in document
    assert "(K &lt; 100 &amp; &lt;b&gt;)" in document
    summary = re.search(r'<table class="summary".*?</table>', document, re.DOTALL).group(0)
    for column in ("precision@5", "ndcg@10", "recall@20", "mrr", "rmse", "mae", "popularity_bias@20",
                   "train_seconds"):
        assert f"<th>{column}</th>" in summary
    hybrid = re.search(r'<tr data-model="hybrid">.*?</tr>', summary).group(0)
    most_popular = re.search(r'<tr data-model="most_popular">.*?</tr>', summary).group(0)
    # hybrid is the strongest model on accuracy, most_popular has the most popularity bias
    assert hybrid.count('class="num best"') >= 5
    assert 'class="num">412.7</td>' in hybrid
    header = re.findall(r"<th>([^<]+)</th>", summary.split("</thead>")[0])[1:]
    cells = re.findall(r'<td class="([^"]+)">([^<]*)</td>', most_popular)
    by_column = dict(zip(header, cells, strict=True))
    assert by_column["popularity_bias@20"][0] == "num"  # the max of a lower-is-better column is not bold
    assert by_column["rmse"] == ("num", "–")  # NaN shown as a dash
    assert by_column["train_seconds"] == ("num", "0.9000")
    details = re.search(r"<details>.*?</details>", document, re.DOTALL).group(0)
    for slice_name in SLICES:
        assert f"<th>{slice_name}</th>" in details
    assert details.split("<tbody>")[1].count("<tr>") == len(SLICES) * len(MODELS)


def test_nan_only_model_has_no_line_and_colours_are_stable(report):
    _, document = report
    map_chart = _chart_svg(document, "metric-at-k-map")
    ndcg_chart = _chart_svg(document, "metric-at-k-ndcg")
    assert ">als<" not in map_chart  # every MAP value of als is NaN
    assert ">als<" in ndcg_chart
    # colours keyed by sorted model name: als, hybrid, itemknn, most_popular
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for chart_id in ("metric-at-k-ndcg", "slices", "coverage-vs-popularity"):
        svg = _chart_svg(document, chart_id)
        for colour in palette:
            assert colour in svg, (chart_id, colour)
    assert "#1f77b4" not in map_chart  # als's colour, absent with its line
    curves_chart = _chart_svg(document, "training-curves")
    assert "#ff7f0e" in curves_chart and ">train_loss<" in curves_chart and ">val_recall_at_20<" in curves_chart


def test_slice_chart_annotates_users(report):
    _, document = report
    svg = _chart_svg(document, "slices")
    assert "NDCG@10" in svg
    assert "n=610" in svg and "n=38" in svg
    assert "Recall@20" in _chart_svg(document, "slices-recall")


@pytest.mark.parametrize("curves", [None, pd.DataFrame(), pd.DataFrame(columns=["model", "epoch", "metric", "value"])])
def test_empty_curves_omit_training_chart(curves):
    metrics = build_metrics(["hybrid", "als"])
    ids = expected_chart_ids(metrics, curves)
    assert "training-curves" not in ids
    document = render_report(metrics, curves, {"dataset": "x"}, "p")
    assert 'data-chart="training-curves"' not in document
    assert _parse(document).figures().keys() == set(ids)


def test_charts_without_data_are_omitted():
    metrics = build_metrics(["hybrid", "als"])
    metrics = metrics[~metrics["metric"].isin(["coverage", "hitrate"])]
    metrics.loc[metrics["metric"] == "map", "value"] = math.nan
    ids = expected_chart_ids(metrics, None)
    assert ids == ["metric-at-k-precision", "metric-at-k-recall", "metric-at-k-ndcg", "slices", "slices-recall"]
    document = render_report(metrics, None, {}, "")
    assert list(_parse(document).figures()) == ids


def test_missing_all_slice_raises():
    metrics = build_metrics(["hybrid"])
    metrics = metrics[metrics["slice"] != "all"]
    with pytest.raises(ValueError, match=r'no rows for slice "all"'):
        render_report(metrics, None, {}, "")
    with pytest.raises(ValueError, match=r'no rows for slice "all"'):
        expected_chart_ids(metrics, None)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="missing required column"):
        render_report(build_metrics(["hybrid"]).drop(columns=["k"]), None, {}, "")
    duplicated = build_metrics(["hybrid"])
    with pytest.raises(ValueError, match="more than one row"):
        render_report(pd.concat([duplicated, duplicated.head(1)]), None, {}, "")
    with pytest.raises(ValueError, match="missing required column"):
        render_report(build_metrics(["hybrid"]), pd.DataFrame({"model": ["hybrid"], "value": [1.0]}), {}, "")


def test_rendering_is_deterministic():
    metrics, curves = build_metrics(["hybrid", "als"]), build_curves()
    assert render_report(metrics, curves, META, PROTOCOL) == render_report(metrics, curves, META, PROTOCOL)


# --------------------------------------------------------------------------------------------------
# headless Chromium


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set SPARKREC_CHROMIUM)"
        if IN_CI:
            pytest.fail(f"{message}; CI must install it so the report is checked in a real browser")
        pytest.skip(message)
    return CHROMIUM


def _run_chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args,
    ]
    # keep Chromium's caches and crash dumps out of $HOME
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile / "config"),
           "XDG_CACHE_HOME": str(profile / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def test_chromium_lays_out_every_chart(report, chromium, tmp_path):
    path, _ = report
    expected = expected_chart_ids(build_metrics(), build_curves())
    result = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", path.resolve().as_uri())
    dom = _parse(result.stdout)
    body = dom.first("body")
    assert body.get("data-charts-rendered") == str(len(expected)), (body, result.stderr[-2000:])
    figures = dom.figures()
    assert list(figures) == expected
    for chart_id, attrs in figures.items():
        width = float(attrs.get("data-rendered-width") or 0)
        height = float(attrs.get("data-rendered-height") or 0)
        assert width > 0 and height > 0, (chart_id, attrs)
        # a chart squashed into a sliver is as useless as a missing one
        assert width >= 300 and height >= 150, (chart_id, width, height)


def test_chromium_screenshot_is_not_blank(report, chromium, tmp_path):
    path, _ = report
    shot = tmp_path / "shot.png"
    _run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000",
                  path.resolve().as_uri())
    assert shot.is_file() and shot.stat().st_size > 0
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.ndim == 3 and pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000, pixels.shape
    assert float(np.std(pixels[..., :3])) > 0.01
    # coloured chart content, not just black text on white
    rgb = pixels[..., :3]
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3
    assert saturated.mean() > 0.001
