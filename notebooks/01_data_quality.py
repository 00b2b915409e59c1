# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Data quality: the ingest report, the quarantine, and what the data looks like
# MAGIC
# MAGIC Every input row is either accepted or quarantined with exactly one reason, so
# MAGIC `read = accepted + quarantined` for every table. The bundled sample is clean, so to show the
# MAGIC quarantine at work this notebook can also ingest a small file with typical faults
# MAGIC (`demo_faults=true`, into a separate namespace `<dataset>_faults` so the main lake is untouched).

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "demo_faults": "true"}, globals().get("dbutils"))
cfg = notebook.notebook_config(params)
spark, lake = notebook.open_session(cfg)
ran = notebook.ensure_pipeline(cfg, lake, ["ingest", "features"])  # none after 00_quickstart
print("stages run now:", list(ran) or "none (the lake 00_quickstart built)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The ingest report (`ingest_runs`): one row per run and table

# COMMAND ----------

runs = notebook.ingest_runs(lake)
runs

# COMMAND ----------

# MAGIC %md
# MAGIC ## Quarantine by reason
# MAGIC The sample is clean; with `demo_faults=true` a copy of its ratings with a few broken rows is
# MAGIC ingested into its own namespace (`sparkrec.notebook.ingest_with_faults`), and its quarantine is shown.

# COMMAND ----------

q_lake = lake
if notebook.truthy(params["demo_faults"]):
    q_lake, faults = notebook.ingest_with_faults(cfg, spark, params)
    print(faults.render())
by_reason = notebook.quarantine_by_reason(q_lake)
by_reason

# COMMAND ----------

import matplotlib.pyplot as plt

if len(by_reason):
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.4 * len(by_reason)))
    labels = by_reason["target_table"] + ": " + by_reason["reason"]
    ax.barh(labels[::-1], by_reason["rows"][::-1], color="tab:red")
    ax.set_xlabel("quarantined rows")
    ax.set_title("quarantine by reason")
    plt.tight_layout()
    plt.show()
else:
    print("nothing quarantined")

# COMMAND ----------

# MAGIC %md
# MAGIC Each quarantined row keeps its file, line, the field and value at fault, and the raw record:

# COMMAND ----------

notebook.quarantine_examples(q_lake, per_reason=1) if len(by_reason) else None

# COMMAND ----------

# MAGIC %md
# MAGIC ## Distributions of the accepted data

# COMMAND ----------

dist = notebook.distributions(lake)
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
axes[0, 0].bar(dist["rating"]["rating"].astype(str), dist["rating"]["count"])
axes[0, 0].set_title("ratings")
axes[0, 1].hist(dist["per_user"]["events"], bins=40, log=True)
axes[0, 1].set_title("events per user (log count)")
axes[1, 0].hist(dist["per_item"]["events"], bins=40, log=True)
axes[1, 0].set_title("events per item (log count): the long tail")
axes[1, 1].plot(dist["per_year"]["year"], dist["per_year"]["count"], marker="o")
axes[1, 1].set_title("events per year")
plt.tight_layout()
plt.show()

# COMMAND ----------

fig, ax = plt.subplots(figsize=(8, 5))
genres = dist["genres"]
ax.barh(genres["genre"].fillna("(none)")[::-1], genres["count"][::-1])
ax.set_title("items per genre (top 20)")
plt.tight_layout()
plt.show()
