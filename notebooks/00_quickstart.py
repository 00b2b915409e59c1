# Databricks notebook source
# MAGIC %md
# MAGIC # 00 · Quickstart: the whole pipeline, then a look at each table
# MAGIC
# MAGIC Runs `ingest -> features -> embed -> train -> recommend` on the bundled sample (150 MovieLens
# MAGIC users, 6,003 movies) with small settings, then shows what each stage wrote.
# MAGIC The later notebooks reuse this lake when they are given the same `work_dir`.
# MAGIC
# MAGIC Parameters (widgets on Databricks, `SPARKREC_NB_<NAME>` environment variables elsewhere):
# MAGIC `conf` (a YAML config; empty = the bundled sample), `work_dir` (lake, models and reports go under it),
# MAGIC `fast` (few epochs and trials), `overrides` (`key.sub=value ...`), `rebuild` (run every stage even if
# MAGIC the lake already has their tables).

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "rebuild": "false"}, globals().get("dbutils"))
cfg = notebook.notebook_config(params)
spark, lake = notebook.open_session(cfg)
print(f"lake: {lake.location('')} ({lake.engine}); MLflow: {cfg.train.mlflow_uri}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run the pipeline
# MAGIC Every stage is the same function `sparkrec pipeline` and the spark-submit jobs run.

# COMMAND ----------

from sparkrec.cli import PIPELINE, run_stages

if notebook.truthy(params["rebuild"]):
    summaries = run_stages(cfg, list(PIPELINE))
else:
    summaries = notebook.ensure_pipeline(cfg, lake)
print("stages run now:", list(summaries) or "none (the lake already had every table)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Every table, its size and Delta version

# COMMAND ----------

overview = notebook.table_overview(lake)
overview

# COMMAND ----------

import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 6))
shown = overview.sort_values("rows")
ax.barh(shown["table"], shown["rows"])
ax.set_xscale("log")
ax.set_xlabel("rows (log scale)")
ax.set_title("rows per table")
plt.tight_layout()
plt.show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## A look at each stage's main table

# COMMAND ----------

for table in ["interactions", "items", "events", "item_features", "user_histories", "item_embeddings",
              "item_vectors", "recommendations"]:
    print(f"--- {table}")
    print(notebook.preview(lake, table, 3).to_string(max_colwidth=60))

# COMMAND ----------

# MAGIC %md
# MAGIC ## One user's recommendations, explained

# COMMAND ----------

recs = notebook.recommendations_for(lake)
print("user", recs["user_id"].iloc[0])
recs[["rank", "item_id", "score", "explanation"]].head(10)
