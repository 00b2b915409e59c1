"""``sparkrec <stage> --conf conf/local.yaml [key.sub=value ...]``.

The same entry point serves the console script, ``python -m sparkrec`` and the thin
``jobs/*.py`` files that ``spark-submit`` runs, so a stage behaves identically everywhere.

Exit codes: 0 done; 2 refused before any write, with one line on stderr naming the key, file,
table or model to fix (config, inputs, stages run out of order, a model from another lake);
1 failed while running (one line too; ``--debug`` prints the traceback of any failure).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .config import Config, load_config
from .errors import UserError
from .lake import Lake, LakeError, RunContext, open_lake
from .logs import get_logger, log_fields, setup_logging
from .preflight import check_inputs, check_tables
from .session import get_spark

log = get_logger("cli")

StageFn = Callable[[Config, Any, Lake, argparse.Namespace], dict[str, Any]]


def _ingest(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .ingest.job import run_ingest

    report = run_ingest(cfg, spark, lake)
    print(report.render())
    return {t.table: {"read": t.read, "accepted": t.accepted, "quarantined": t.quarantined}
            for t in report.tables}


def _features(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .features.job import run_features

    return run_features(cfg, spark, lake)


def _embed(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .text import run_embed

    return run_embed(cfg, spark, lake)


def _train(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .model.job import run_train

    return run_train(cfg, spark, lake)


def _recommend(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from .recommend import run_recommend

    users = None
    if getattr(args, "users", None):  # a refresh of only these users: one user_id per line
        users = spark.read.text(args.users).selectExpr("trim(value) as user_id").filter("user_id != ''")
    summary = run_recommend(cfg, spark, lake, users)
    first_user = lake.read("recommendations").agg({"user_id": "min"}).collect()[0][0]
    print(f"\nrecommendations for user {first_user} (of {summary.get('rows', 0):,} rows):")
    for row in (lake.read("recommendations").filter(F.col("user_id") == first_user).orderBy("rank").limit(5)
                .select("rank", "item_id", "score", "explanation").collect()):
        print(f"{row['rank']:>3}. item {row['item_id']}  ({row['score']:.3f})  {row['explanation']}")
    return summary


def _recommend_text(cfg: Config, text: str) -> None:
    from .recommend import recommend_for_text

    check_inputs(cfg, ["recommend"])
    spark = get_spark(cfg.spark)
    lake = open_lake(spark, cfg, RunContext(stage="recommend-text"))
    check_tables(cfg, lake, ["recommend"])
    for row in recommend_for_text(cfg, spark, lake, text):
        print(f"{row['rank']:>3}. {row['item_id']}  ({row['score']:.3f})  {row['explanation']}")


def _vacuum(cfg: Config) -> int:
    """Deletes, in every table of the namespace, the files no version younger than
    ``lake.vacuum_retention_hours`` references: old versions' files and crashed writes' orphans."""
    spark = get_spark(cfg.spark)
    lake = open_lake(spark, cfg, RunContext(stage="vacuum"))
    hours = cfg.lake.vacuum_retention_hours
    for table in lake.tables():
        deleted = lake.vacuum(table, hours)
        log_fields(log, "vacuumed", table=table, files_deleted=len(deleted), retention_hours=hours)
        print(f"{table:<30}{len(deleted):>8,} files deleted")
    return 0


def _evaluate(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from .evaluation.job import run_evaluate, summary_table

    if getattr(args, "prequential", False):
        return _evaluate_prequential(cfg, spark, lake, args)
    summary = run_evaluate(cfg, spark, lake, getattr(args, "report", None))
    metrics = lake.read("evaluation_metrics").filter(F.col("eval_id") == summary["eval_id"]).toPandas()
    k_mid = sorted(cfg.evaluation.ks)[len(cfg.evaluation.ks) // 2]
    wanted = [f"{m}@{k}" for k in sorted(cfg.evaluation.ks) for m in ("ndcg", "recall")] + [f"coverage@{k_mid}"]
    print(f"\nevaluation {summary['eval_id']} on split_{cfg.evaluation.split} ({summary['users']} test users):")
    print(summary_table(metrics, wanted).round(4).to_string())
    print(f"report: {summary['report']}")
    return summary


def _evaluate_prequential(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .evaluation.job import summary_table
    from .evaluation.prequential import run_prequential

    summary = run_prequential(cfg, spark, lake, getattr(args, "report", None))
    metrics = lake.read("evaluation_metrics").filter(f"eval_id = '{summary['eval_id']}'").toPandas()
    wanted = [f"{m}@{k}" for k in sorted(cfg.evaluation.ks) for m in ("hitrate", "ndcg")]
    print(f"\nprequential evaluation {summary['eval_id']} ({summary['events']} streamed events):")
    print(summary_table(metrics, wanted).drop(columns="train_seconds").round(4).to_string())
    print(f"report: {summary['report']}")
    return summary


def _stream(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .stream import run_stream

    return run_stream(cfg, spark, lake)


def _replay(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    from .stream import run_replay

    return run_replay(cfg, spark, getattr(args, "rate", None) or 0.0, getattr(args, "limit", None))


def _serve(cfg: Config, spark: Any, lake: Lake, args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP service (``sparkrec.serve``): runs until stopped (--host / --port: see ``_run``)."""
    from .serve import run_server

    return run_server(cfg, spark, lake)


# Stage order is the pipeline's order; evaluate is run on its own (it fits every baseline),
# stream and replay run until stopped or done.
STAGES: dict[str, StageFn] = {"ingest": _ingest, "features": _features, "embed": _embed, "train": _train,
                             "recommend": _recommend, "evaluate": _evaluate, "stream": _stream,
                             "replay": _replay, "serve": _serve}
PIPELINE = ("ingest", "features", "embed", "train", "recommend")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkrec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=[*STAGES, "pipeline", "show-config", "recommend-text", "vacuum"])
    parser.add_argument("--conf", default=os.environ.get("SPARKREC_CONF"),
                        help="YAML config (default: $SPARKREC_CONF, else built-in defaults)")
    parser.add_argument("--users", help="recommend: refresh only the user_ids listed in this file (one a line)")
    parser.add_argument("--report", help="evaluate: where to write the HTML report (default: evaluation.report_dir)")
    parser.add_argument("--prequential", action="store_true",
                        help="evaluate: judge the lists the stream served as events arrived (stream_prequential)")
    parser.add_argument("--rate", type=float, help="replay: events per second (default: as fast as possible)")
    parser.add_argument("--limit", type=int, help="replay: at most this many events")
    parser.add_argument("--host", help="serve: the address to listen on (default: serve.host)")
    parser.add_argument("--port", type=int, help="serve: the port (default: serve.port)")
    parser.add_argument("--run-id", default=os.environ.get("SPARKREC_RUN_ID"),
                        help="the run id recorded in every Delta commit of this run (default: $SPARKREC_RUN_ID, "
                        "else a new one): a scheduler passes its own so the stages of one run share it")
    parser.add_argument("--debug", action="store_true", help="print the traceback of any failure")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides "
                        "(recommend-text: the interest text first, in quotes)")
    return parser


def run_stages(cfg: Config, names: Sequence[str], args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Runs the named stages in order on one Spark session; returns each stage's summary."""
    args = args or argparse.Namespace()
    run_id = _run_id(getattr(args, "run_id", None))  # a bad one is refused before Spark starts
    check_inputs(cfg, names, getattr(args, "users", None))  # before Spark starts: fails in a second
    spark = get_spark(cfg.spark)
    check_tables(cfg, open_lake(spark, cfg), names)
    results: dict[str, Any] = {}
    for name in names:
        lake = open_lake(spark, cfg, RunContext(stage=name, run_id=run_id))
        started = time.perf_counter()
        log_fields(log, f"stage {name} started", stage=name, run_id=run_id)
        results[name] = STAGES[name](cfg, spark, lake, args)
        log_fields(log, f"stage {name} done", stage=name, run_id=run_id,
                   seconds=round(time.perf_counter() - started, 3))
    lake = open_lake(spark, cfg)
    print(f"\ntables ({lake.engine}) under: {lake.location('')}")
    return results


def _run_id(given: str | None) -> str:
    """``given`` (a scheduler's run id, e.g. Airflow's ``scheduled__2026-12-02T03:00:00+00:00``)
    if it is one printable token of at most 250 characters; else a new random id."""
    if not given:
        return RunContext().run_id
    if len(given) > 250 or not given.isprintable() or any(c.isspace() for c in given):
        raise UserError(f"--run-id {given[:60]!r}: one printable token of at most 250 characters, no spaces")
    return given


def one_line(exc: BaseException) -> str:
    """The first non-blank line of the message (a Java error's is followed by its stack)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def exit_code(exc: Exception, debug: bool) -> int:
    """Prints ``exc`` as one line (and its traceback with --debug); 2 for what the user fixes."""
    from .ingest.reader import InputError

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, UserError | InputError):
        print(f"sparkrec: {one_line(exc)}", file=sys.stderr)
        return 2
    if isinstance(exc, LakeError | ValueError):
        print(f"sparkrec: {one_line(exc)}", file=sys.stderr)
    else:
        log.debug("unexpected failure", exc_info=exc)
        print(f"sparkrec: unexpected {type(exc).__name__}: {one_line(exc)}"
              + ("" if debug else " (run with --debug for the traceback)"), file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    # intermixed: overrides may follow --conf (`sparkrec train --conf c.yaml train.epochs=3`).
    args = _parser().parse_intermixed_args(argv)
    try:
        return _run(args)
    except Exception as exc:
        return exit_code(exc, args.debug)


def _run(args: argparse.Namespace) -> int:
    text = args.overrides.pop(0) if args.stage == "recommend-text" and args.overrides else None
    if args.stage == "recommend-text" and not text:
        print("sparkrec: recommend-text needs the interest text, e.g. sparkrec recommend-text \"space opera\"",
              file=sys.stderr)
        return 2
    if args.stage == "serve":  # --host / --port are serve.host / serve.port, validated with the rest
        args.overrides += [f"serve.{k}={v}" for k in ("host", "port") if (v := getattr(args, k, None)) is not None]
    cfg = load_config(args.conf, args.overrides)
    setup_logging(cfg.logging.level, cfg.logging.format)
    if args.stage == "show-config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    if text is not None:
        _recommend_text(cfg, text)
        return 0
    if args.stage == "vacuum":
        return _vacuum(cfg)
    names = list(PIPELINE) if args.stage == "pipeline" else [args.stage]
    run_stages(cfg, names, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
