# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Evaluation: every model, every metric, by slice, and the HTML report
# MAGIC
# MAGIC `sparkrec evaluate` fits and tunes each baseline on the split's train part, takes the hybrid trained on
# MAGIC the same split (by `03_training`; trained here if missing), ranks all items for every test user and
# MAGIC computes the metrics in Spark. Rows go to `evaluation_metrics`; the report is a self-contained HTML page.

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "split": "temporal_loo",
                           "models": "hybrid,most_popular,als,itemknn,ease,content_only"},
                          globals().get("dbutils"))
cfg = notebook.notebook_config(params, f"evaluation.split={params['split']}",
                               f"evaluation.models=[{params['models']}]")
spark, lake = notebook.open_session(cfg)
ran = notebook.ensure_pipeline(cfg, lake, ["ingest", "features", "embed"])  # none after 00_quickstart
print("stages run now:", list(ran) or "none (the lake 00_quickstart built)")
if "hybrid" in cfg.evaluation.models:
    print("hybrid judged:", notebook.ensure_split_model(cfg, lake, params["split"]))

# COMMAND ----------

from sparkrec.evaluation.job import run_evaluate, summary_table

summary = run_evaluate(cfg, spark, lake)
metrics = notebook.evaluation_metrics(lake, summary["eval_id"])
print(f"evaluation {summary['eval_id']}: {summary['users']} test users, champion: {summary['champion']}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Model x metric (slice `all`)

# COMMAND ----------

ks = sorted(cfg.evaluation.ks)
wanted = [f"{m}@{k}" for m in ("ndcg", "recall", "precision", "map", "hitrate") for k in ks] + ["mrr"]
wanted += [f"coverage@{k}" for k in ks]
summary_table(metrics, wanted).round(4)

# COMMAND ----------

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, metric in zip(axes, ["ndcg", "recall"], strict=True):
    notebook.metric_curves(metrics, metric).plot(ax=ax, marker="o")
    ax.set_title(f"{metric}@K, all users")
    ax.set_xlabel("K")
plt.tight_layout()
plt.show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## Slices: NDCG@10 by user activity and cold start (users per slice in brackets)

# COMMAND ----------

slices = notebook.slice_table(metrics, "ndcg", 10)
ax = slices.T.plot.bar(figsize=(12, 4), rot=30)
ax.set_ylabel("NDCG@10")
plt.tight_layout()
plt.show()
slices.round(4)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The HTML report, inline

# COMMAND ----------

print("report:", summary["report"])
notebook.show_html(notebook.html_of(summary["report"]), globals().get("displayHTML"))
