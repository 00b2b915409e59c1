"""A single-file HTML evaluation report with inline SVG charts.

The report is meant to be archived next to the evaluation tables and opened years later, offline, from
an artifact store or an e-mail attachment, so it must not reference anything outside itself: no CDN
scripts, stylesheets, fonts or images. Charts are drawn by matplotlib as SVG with text kept as text
(readable and searchable without font files) and inlined into the page; a Content-Security-Policy meta
tag makes the browser refuse any external fetch that slips in later.

Inputs follow the evaluate job's long format (one row per model, slice, metric and K), which keeps this
module independent of which models, slices or cut-offs a particular run produced.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TITLE = "sparkrec evaluation report"

ALL_SLICE = "all"

# Metrics plotted against K, in display order.
AT_K_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hitrate")

# Column order of the tables; metrics not listed here follow alphabetically.
METRIC_ORDER: tuple[str, ...] = (
    "precision", "recall", "ndcg", "map", "hitrate", "mrr",
    "coverage", "novelty", "popularity_bias", "ild", "rmse", "mae",
)

# Metrics where a smaller value is the better one (bolded as the column minimum).
LOWER_IS_BETTER: frozenset[str] = frozenset({"popularity_bias", "rmse", "mae"})

# Every chart id the report can contain, in page order; ``expected_chart_ids`` says which of them a
# given input actually produces.
CHART_IDS: tuple[str, ...] = (
    *(f"metric-at-k-{m}" for m in AT_K_METRICS),
    "coverage-vs-popularity",
    "slices",
    "slices-recall",
    "training-curves",
)

# Target cut-offs of the two slice charts: the K closest to these is used.
SLICE_CHARTS: dict[str, tuple[str, int]] = {"slices": ("ndcg", 10), "slices-recall": ("recall", 20)}

METRIC_LABELS: dict[str, str] = {
    "precision": "Precision", "recall": "Recall", "ndcg": "NDCG", "map": "MAP", "hitrate": "HitRate",
    "mrr": "MRR", "coverage": "Coverage", "novelty": "Novelty", "popularity_bias": "Popularity bias",
    "ild": "ILD", "rmse": "RMSE", "mae": "MAE",
}

# tab10 without its grey, then tab20's darker extra hues: distinguishable and colour-blind tolerable
# for the handful of models a run compares.
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)

REQUIRED_METRIC_COLUMNS: tuple[str, ...] = ("model", "slice", "metric", "k", "value")
REQUIRED_CURVE_COLUMNS: tuple[str, ...] = ("model", "epoch", "metric", "value")

_RC = {
    "svg.fonttype": "none",  # text stays <text>: no glyph outlines or font files in the page
    "svg.hashsalt": "sparkrec-report",  # stable ids, so the same input renders the same bytes
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # bundled with matplotlib: text is measured with the font Chromium uses
    "text.parse_math": False,  # a "$" in a model or metric name is a character, not a formula
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
}

_SCRIPT = """\
window.addEventListener("load", function () {
  var rendered = 0;
  document.querySelectorAll("figure.chart").forEach(function (figure) {
    var svg = figure.querySelector("svg");
    var box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    figure.dataset.renderedWidth = String(Math.round(box.width * 10) / 10);
    figure.dataset.renderedHeight = String(Math.round(box.height * 10) / 10);
    if (box.width > 0 && box.height > 0) { rendered += 1; }
  });
  document.body.dataset.chartsRendered = String(rendered);
});
"""

_CSS = """\
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 0 auto; padding: 1rem 2rem;
       max-width: 1400px; color: #222; background: #fff; font-size: 14px; }
h1 { margin-bottom: .3rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; }
th { background: #f5f5f5; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
.table-scroll { overflow-x: auto; }
pre.protocol { background: #f8f8f8; border: 1px solid #e2e2e2; padding: .75rem; overflow-x: auto;
               white-space: pre-wrap; font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1.5rem; }
figure.chart { margin: 0; border: 1px solid #eee; padding: .5rem; min-width: 0; }
figure.chart[data-span="full"] { grid-column: 1 / -1; }
figure.chart svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 12px; color: #555; margin-top: .3rem; }
details summary { cursor: pointer; font-weight: bold; margin: .5rem 0; }
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


# --------------------------------------------------------------------------------------------------
# public API


def expected_chart_ids(metrics: pd.DataFrame, curves: pd.DataFrame | None = None) -> list[str]:
    """Chart ids ``render_report`` will emit, so callers and tests can check a report without parsing SVG."""
    frame = _normalise_metrics(metrics)
    return [chart_id for chart_id, _ in _chart_plan(frame, _normalise_curves(curves))]


def render_report(metrics: pd.DataFrame, curves: pd.DataFrame | None, meta: Mapping[str, Any], protocol: str) -> str:
    """Build the whole report as one string, so it can be written, attached or served as-is."""
    frame = _normalise_metrics(metrics)
    curve_frame = _normalise_curves(curves)
    colours = _model_colours(frame, curve_frame)

    figures = []
    for chart_id, spec in _chart_plan(frame, curve_frame):
        svg = _render_chart(chart_id, spec, frame, curve_frame, colours)
        figures.append(_figure_html(chart_id, svg, _caption(chart_id, spec)))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(TITLE)}</title>",
        f"<style>\n{_CSS}</style>",
        "</head>",
        "<body>",
        f"<header>\n<h1>{html.escape(TITLE)}</h1>",
        _meta_table(meta),
        "</header>",
        '<section id="protocol">\n<h2>Evaluation protocol</h2>',
        f'<pre class="protocol">{html.escape(protocol or "")}</pre>\n</section>',
        '<section id="summary">\n<h2>Summary (slice &quot;all&quot;)</h2>',
        '<p>Best value per column in bold: the maximum, or the minimum for '
        f'{", ".join(html.escape(METRIC_LABELS[m]) for m in sorted(LOWER_IS_BETTER))}.</p>',
        _summary_table(frame),
        "</section>",
        '<section id="charts">\n<h2>Charts</h2>\n<div class="charts">',
        *figures,
        "</div>\n</section>",
        '<section id="per-slice">\n<h2>All slices</h2>',
        "<details>\n<summary>Per-slice metrics (model × slice × metric@K)</summary>",
        _slice_table(frame),
        "</details>\n</section>",
        f"<script>\n{_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def write_report(path: str | Path, metrics: pd.DataFrame, curves: pd.DataFrame | None, meta: Mapping[str, Any],
                 protocol: str) -> Path:
    """Render and write the report; parent directories are created because run folders often are not yet."""
    target = Path(path)
    document = render_report(metrics, curves, meta, protocol)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document, encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------------
# input normalisation


def _normalise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Coerce the evaluate job's table once, so every later step can trust dtypes and keys."""
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError(f"metrics must be a pandas DataFrame, got {type(metrics).__name__}")
    missing = [c for c in REQUIRED_METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics is missing required column(s) {missing}; got {list(metrics.columns)}")
    frame = metrics.copy()
    for column in ("model", "slice", "metric"):
        frame[column] = frame[column].astype(str)
    frame["k"] = pd.to_numeric(frame["k"], errors="coerce")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    for column in ("n_users", "train_seconds"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        else:
            frame[column] = np.nan
    # inf would win every "best" comparison and break axis limits; treat it as a missing value
    frame.loc[~np.isfinite(frame["value"]), "value"] = np.nan

    if not (frame["slice"] == ALL_SLICE).any():
        present = sorted(frame["slice"].unique())
        raise ValueError(f'metrics has no rows for slice "{ALL_SLICE}" (slices present: {present}); '
                         "the summary table and the @K charts are defined on it")
    bad_k = frame["k"].notna() & ((frame["k"] <= 0) | (frame["k"] % 1 != 0))
    if bad_k.any():
        raise ValueError(f"metrics has non-positive or fractional k values: {sorted(frame.loc[bad_k, 'k'].unique())}")
    frame["label"] = [_metric_label(m, k) for m, k in zip(frame["metric"], frame["k"], strict=True)]
    duplicated = frame.duplicated(["model", "slice", "metric", "label"], keep=False)
    if duplicated.any():
        keys = frame.loc[duplicated, ["model", "slice", "label"]].drop_duplicates().head(5).values.tolist()
        raise ValueError(f"metrics has more than one row per (model, slice, metric, k), e.g. {keys}")
    return frame


def _normalise_curves(curves: pd.DataFrame | None) -> pd.DataFrame:
    """Reduce 'no curves' (None, empty, all NaN) to an empty frame so callers need a single check."""
    if curves is None:
        return pd.DataFrame(columns=list(REQUIRED_CURVE_COLUMNS))
    if not isinstance(curves, pd.DataFrame):
        raise TypeError(f"curves must be a pandas DataFrame or None, got {type(curves).__name__}")
    if curves.empty:
        return pd.DataFrame(columns=list(REQUIRED_CURVE_COLUMNS))
    missing = [c for c in REQUIRED_CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ValueError(f"curves is missing required column(s) {missing}; got {list(curves.columns)}")
    frame = curves[list(REQUIRED_CURVE_COLUMNS)].copy()
    frame["model"] = frame["model"].astype(str)
    frame["metric"] = frame["metric"].astype(str)
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    keep = frame["epoch"].notna() & np.isfinite(frame["value"])
    return frame[keep].sort_values(["metric", "model", "epoch"]).reset_index(drop=True)


def _metric_label(metric: str, k: float) -> str:
    return metric if pd.isna(k) else f"{metric}@{int(k)}"


def _metric_sort_key(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric), "") if metric in METRIC_ORDER else (len(METRIC_ORDER), metric)


def _ordered_labels(frame: pd.DataFrame) -> list[str]:
    """metric@K columns grouped by metric in METRIC_ORDER, ascending K within a metric."""
    pairs = frame[["metric", "k", "label"]].drop_duplicates("label")
    pairs = sorted(pairs.itertuples(index=False),
                   key=lambda r: (_metric_sort_key(r.metric), -1.0 if pd.isna(r.k) else float(r.k)))
    return [r.label for r in pairs]


def _ordered_slices(frame: pd.DataFrame) -> list[str]:
    """"all" first, then slices in the order the job produced them (activity buckets are not sortable by name)."""
    seen = list(dict.fromkeys(frame["slice"]))
    return [ALL_SLICE, *(s for s in seen if s != ALL_SLICE)]


def _model_colours(frame: pd.DataFrame, curves: pd.DataFrame) -> dict[str, str]:
    """Colour by position in the sorted model list, so a model reads the same in every chart of the page."""
    models = sorted(set(frame["model"]) | set(curves["model"]))
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}


# --------------------------------------------------------------------------------------------------
# chart planning: decide which charts exist (and with which K) once, for both the ids and the render


def _finite(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["value"].notna()]


def _chart_plan(frame: pd.DataFrame, curves: pd.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """Chart ids with what each needs to draw; a chart with no finite data point is left out entirely."""
    plan: list[tuple[str, dict[str, Any]]] = []
    overall = _finite(frame[(frame["slice"] == ALL_SLICE) & frame["k"].notna()])

    for metric in AT_K_METRICS:
        if (overall["metric"] == metric).any():
            plan.append((f"metric-at-k-{metric}", {"metric": metric}))

    scatter_k = _scatter_k(overall)
    if scatter_k is not None:
        plan.append(("coverage-vs-popularity", {"k": scatter_k}))

    with_k = _finite(frame[frame["k"].notna()])
    for chart_id, (metric, target) in SLICE_CHARTS.items():
        ks = with_k.loc[with_k["metric"] == metric, "k"].unique()
        if len(ks):
            k = min(ks, key=lambda v: (abs(v - target), v))
            plan.append((chart_id, {"metric": metric, "k": int(k)}))

    if not curves.empty:
        plan.append(("training-curves", {}))
    return plan


def _scatter_k(overall: pd.DataFrame) -> int | None:
    """Largest K at which at least one model has both coverage and popularity bias, or None."""
    cov = overall[overall["metric"] == "coverage"].set_index(["model", "k"])["value"]
    pop = overall[overall["metric"] == "popularity_bias"].set_index(["model", "k"])["value"]
    both = cov.index.intersection(pop.index)
    if both.empty:
        return None
    return int(max(k for _, k in both))


def _caption(chart_id: str, spec: Mapping[str, Any]) -> str:
    if chart_id.startswith("metric-at-k-"):
        label = METRIC_LABELS.get(spec["metric"], spec["metric"])
        return f'{label}@K on slice "{ALL_SLICE}", one line per model; models with no value are not drawn.'
    if chart_id == "coverage-vs-popularity":
        k = spec["k"]
        return (f'Catalogue coverage@{k} against popularity bias@{k} on slice "{ALL_SLICE}": '
                "up and to the left recommends more of the catalogue with less popularity bias.")
    if chart_id in SLICE_CHARTS:
        label = METRIC_LABELS.get(spec["metric"], spec["metric"])
        return f"{label}@{spec['k']} per user slice, one bar per model; n = users evaluated in the slice."
    if chart_id == "training-curves":
        return "Training curves per epoch, one panel per logged metric, one line per model."
    return chart_id


# --------------------------------------------------------------------------------------------------
# chart rendering


def _render_chart(
    chart_id: str,
    spec: Mapping[str, Any],
    frame: pd.DataFrame,
    curves: pd.DataFrame,
    colours: Mapping[str, str],
) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        if chart_id.startswith("metric-at-k-"):
            fig = _metric_at_k_figure(frame, spec["metric"], colours)
        elif chart_id == "coverage-vs-popularity":
            fig = _scatter_figure(frame, spec["k"], colours)
        elif chart_id in SLICE_CHARTS:
            fig = _slices_figure(frame, spec["metric"], spec["k"], colours)
        elif chart_id == "training-curves":
            fig = _curves_figure(curves, colours)
        else:  # pragma: no cover - _chart_plan only yields the ids above
            raise ValueError(f"unknown chart id {chart_id!r}")
        return _figure_to_svg(fig, chart_id)


def _new_figure(width: float, height: float):
    """A bare Figure, not pyplot: nothing is registered globally, so nothing outlives the render or
    switches the caller's backend (the evaluate job may run inside a notebook)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure_to_svg(fig, chart_id: str) -> str:
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg")
    finally:
        fig.clear()  # drop artists now instead of waiting for the garbage collector
    return _inline_svg(buffer.getvalue(), chart_id)


_ID_ATTR = re.compile(r'\bid="([^"]+)"')
_ID_REF = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def _inline_svg(svg: str, chart_id: str) -> str:
    """Make a standalone SVG document safe to paste into HTML.

    The XML prolog and DOCTYPE are invalid inside HTML; the RDF metadata carries URLs and a timestamp;
    and matplotlib names elements the same way in every figure (figure_1, axes_1, hashed clip paths), so
    ids are prefixed per chart - otherwise one chart's clip-path reference would resolve to another's.
    """
    start = svg.find("<svg")
    if start < 0:
        raise RuntimeError("matplotlib did not produce an <svg> element")
    svg = svg[start:]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.DOTALL)
    ids = set(_ID_ATTR.findall(svg))
    prefix = f"{chart_id}--"

    def rename(match: re.Match[str]) -> str:
        head, name = match.group(1), match.group(2)
        return head + (prefix + name if name in ids else name)

    svg = _ID_REF.sub(rename, svg)
    return svg.replace("<svg ", '<svg role="img" ', 1).strip()


def _legend_outside(fig, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """Legend beside the axes, so it never hides a line or a bar however many models there are."""
    if handles:
        fig.legend(handles, labels, loc="outside right upper", title="model")


def _metric_at_k_figure(frame: pd.DataFrame, metric: str, colours: Mapping[str, str]):
    data = _finite(frame[(frame["slice"] == ALL_SLICE) & (frame["metric"] == metric) & frame["k"].notna()])
    fig = _new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    handles, labels = [], []
    for model in sorted(data["model"].unique()):
        points = data[data["model"] == model].sort_values("k")
        (line,) = ax.plot(points["k"], points["value"], marker="o", color=colours[model], label=model)
        handles.append(line)
        labels.append(model)
    ks = sorted(int(k) for k in data["k"].unique())
    ax.set_xticks(ks)
    ax.set_xlabel("K")
    label = METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(f"{label}@K")
    ax.set_title(f'{label}@K (slice "{ALL_SLICE}")')
    ax.set_ylim(bottom=0)
    _legend_outside(fig, handles, labels)
    return fig


def _scatter_figure(frame: pd.DataFrame, k: int, colours: Mapping[str, str]):
    overall = _finite(frame[(frame["slice"] == ALL_SLICE) & (frame["k"] == k)])
    cov = overall[overall["metric"] == "coverage"].set_index("model")["value"]
    pop = overall[overall["metric"] == "popularity_bias"].set_index("model")["value"]
    models = sorted(set(cov.index) & set(pop.index))
    fig = _new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    for model in models:
        ax.scatter([pop[model]], [cov[model]], s=48, color=colours[model], zorder=3)
    for model, (dx, dy) in _label_offsets([(pop[m], cov[m]) for m in models], models).items():
        # a label left of its point must end there rather than start there
        ax.annotate(model, (pop[model], cov[model]), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                    va="center", ha="left" if dx > 0 else "right")
    ax.set_xlabel(f"popularity bias@{k} (lower = less popular-item bias)")
    ax.set_ylabel(f"catalogue coverage@{k}")
    ax.set_title(f'Coverage vs popularity bias @{k} (slice "{ALL_SLICE}")')
    ax.margins(x=0.15, y=0.15)
    return fig


def _label_offsets(points: Sequence[tuple[float, float]], labels: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Point-label offsets (in points) that keep labels of near-identical models from printing on each other.

    Models of one family often land almost on top of each other in this plot; a label is moved below its
    point, or to the left, when another label already sits close by (in axes-relative units).
    """
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    span_x = float(np.ptp(xs)) or 1.0
    span_y = float(np.ptp(ys)) or 1.0
    candidates = [(6, 6), (6, -7), (-6, 6), (-6, -7)]
    placed: list[tuple[float, float, tuple[int, int]]] = []
    offsets: dict[str, tuple[int, int]] = {}
    for label, x, y in zip(labels, xs / span_x, ys / span_y, strict=True):
        chosen = candidates[0]
        for candidate in candidates:
            clash = any(abs(x - px) < 0.15 and abs(y - py) < 0.08 and (candidate[1] > 0) == (offset[1] > 0)
                        and (candidate[0] > 0) == (offset[0] > 0) for px, py, offset in placed)
            if not clash:
                chosen = candidate
                break
        placed.append((x, y, chosen))
        offsets[label] = chosen
    return offsets


def _slices_figure(frame: pd.DataFrame, metric: str, k: int, colours: Mapping[str, str]):
    slices = _ordered_slices(frame)
    data = _finite(frame[(frame["metric"] == metric) & (frame["k"] == k)])
    models = sorted(data["model"].unique())
    values = data.set_index(["slice", "model"])["value"]
    users = frame[frame["metric"] == metric].groupby("slice")["n_users"]
    n_min, n_max = users.min(), users.max()

    fig = _new_figure(max(8.0, 1.15 * len(slices) + 2.5), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(slices))
    handles = []
    for i, model in enumerate(models):
        heights = [values.get((s, model), np.nan) for s in slices]
        offset = (i - (len(models) - 1) / 2) * width
        handles.append(ax.bar(x + offset, heights, width=width, color=colours[model], label=model))
    ticks = []
    for s in slices:
        lo, hi = n_min.get(s, np.nan), n_max.get(s, np.nan)
        if pd.isna(lo):
            ticks.append(s)
        elif lo == hi:
            ticks.append(f"{s}\nn={int(lo):,}")
        else:  # models evaluated on different user counts: show the range rather than hide it
            ticks.append(f"{s}\nn={int(lo):,}–{int(hi):,}")
    ax.set_xticks(x, ticks)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", visible=False)
    label = METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(f"{label}@{k}")
    ax.set_title(f"{label}@{k} by user slice")
    _legend_outside(fig, handles, models)
    return fig


def _curves_figure(curves: pd.DataFrame, colours: Mapping[str, str]):
    """One panel per logged metric: losses and validation scores live on unrelated scales."""
    metrics = sorted(curves["metric"].unique())
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = _new_figure(max(6.4, 4.2 * ncols + 1.5), 3.0 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics, strict=False):
        data = curves[curves["metric"] == metric]
        for model in sorted(data["model"].unique()):
            points = data[data["model"] == model]
            (line,) = ax.plot(points["epoch"], points["value"], marker=".", color=colours[model], label=model)
            handles.setdefault(model, line)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    models = sorted(handles)
    _legend_outside(fig, [handles[m] for m in models], models)
    return fig


# Charts with one group per slice or one panel per curve metric: wider than a grid cell.
_FULL_WIDTH_CHARTS = frozenset({*SLICE_CHARTS, "training-curves"})


def _figure_html(chart_id: str, svg: str, caption: str) -> str:
    cid = html.escape(chart_id)
    span = ' data-span="full"' if chart_id in _FULL_WIDTH_CHARTS else ""
    return (f'<figure class="chart" id="chart-{cid}" data-chart="{cid}"{span}>\n{svg}\n'
            f"<figcaption>{html.escape(caption)}</figcaption>\n</figure>")


# --------------------------------------------------------------------------------------------------
# tables


def _format_value(value: Any) -> str:
    """Four significant digits without scientific notation for ordinary magnitudes; '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "–"
    number = float(value)
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 1e4:
        return f"{number:,.0f}"
    if magnitude < 1e-4:
        return f"{number:.3e}"
    return f"{number:#.4g}".rstrip(".")


def _meta_table(meta: Mapping[str, Any]) -> str:
    rows = [f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_format_meta(value))}</td></tr>"
            for key, value in (meta or {}).items()]
    return '<table class="meta" id="meta-table">\n' + "\n".join(rows) + "\n</table>"


def _format_meta(value: Any) -> str:
    if isinstance(value, float):
        return _format_value(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return ", ".join(str(v) for v in value)
    return str(value)


def _best_mask(column: pd.Series, metric: str) -> pd.Series:
    finite = column.dropna()
    if finite.empty:
        return pd.Series(False, index=column.index)
    best = finite.min() if metric in LOWER_IS_BETTER else finite.max()
    return column.eq(best)


def _summary_table(frame: pd.DataFrame) -> str:
    overall = frame[frame["slice"] == ALL_SLICE]
    labels = _ordered_labels(overall)
    models = sorted(frame["model"].unique())  # a model evaluated only on sub-slices still gets a row
    wide = overall.pivot(index="model", columns="label", values="value").reindex(index=models, columns=labels)
    metric_of = dict(zip(overall["label"], overall["metric"], strict=False))
    train = frame.groupby("model")["train_seconds"].max().reindex(models)
    bold = {label: _best_mask(wide[label], metric_of[label]) for label in labels}

    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    lines = ['<div class="table-scroll">\n<table class="summary" id="summary-table">',
             f"<thead><tr><th>model</th>{head}<th>train_seconds</th></tr></thead>", "<tbody>"]
    for model in models:
        cells = []
        for label in labels:
            css = "num best" if bold[label][model] else "num"
            cells.append(f'<td class="{css}">{_format_value(wide.at[model, label])}</td>')
        cells.append(f'<td class="num">{_format_value(train[model])}</td>')
        name = html.escape(model)
        lines.append(f'<tr data-model="{name}"><th scope="row">{name}</th>{"".join(cells)}</tr>')
    lines.append("</tbody>\n</table>\n</div>")
    return "\n".join(lines)


def _slice_table(frame: pd.DataFrame) -> str:
    labels = _ordered_labels(frame)
    slices = _ordered_slices(frame)
    models = sorted(frame["model"].unique())
    wide = frame.pivot(index=["slice", "model"], columns="label", values="value")
    users = frame.groupby(["slice", "model"])["n_users"].max()
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    lines = ['<div class="table-scroll">\n<table class="slices" id="slice-table">',
             f"<thead><tr><th>slice</th><th>model</th><th>n_users</th>{head}</tr></thead>", "<tbody>"]
    for slice_name in slices:
        for model in models:
            if (slice_name, model) not in wide.index:
                continue
            row = wide.loc[(slice_name, model)]
            cells = "".join(f'<td class="num">{_format_value(row.get(label, np.nan))}</td>' for label in labels)
            n = users.get((slice_name, model), np.nan)
            n_text = "–" if pd.isna(n) else f"{int(n):,}"
            lines.append(f"<tr><th>{html.escape(slice_name)}</th><th>{html.escape(model)}</th>"
                         f'<td class="num">{n_text}</td>{cells}</tr>')
    lines.append("</tbody>\n</table>\n</div>")
    return "\n".join(lines)
