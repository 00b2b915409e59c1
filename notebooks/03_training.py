# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Training: the hybrid on an evaluation split, its curves from MLflow, and the backends
# MAGIC
# MAGIC Trains the hybrid (towers + linear head) on the train part of `split` (what `04_evaluation` judges),
# MAGIC then reads the per-epoch loss and validation Recall/NDCG back from MLflow. The production model
# MAGIC (trained on every event) came from `00_quickstart`.

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "split": "temporal_loo", "backend": "torchdistributor", "num_workers": "2",
                           "epochs": "2"}, globals().get("dbutils"))
cfg = notebook.notebook_config(params, f"train.split={params['split']}", f"train.backend={params['backend']}",
                               f"train.num_workers={params['num_workers']}", f"train.epochs={params['epochs']}")
spark, lake = notebook.open_session(cfg)
ran = notebook.ensure_pipeline(cfg, lake, ["ingest", "features", "embed"])  # none after 00_quickstart
print("stages run now:", list(ran) or "none (the lake 00_quickstart built)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Backends (`train.backend`)

# COMMAND ----------

notebook.backends()

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train

# COMMAND ----------

from sparkrec.cli import run_stages

summary = run_stages(cfg, ["train"])["train"]
run_id = summary["run_id"]
{k: v for k, v in summary.items() if not isinstance(v, dict | list)}

# COMMAND ----------

# MAGIC %md
# MAGIC ## Curves from MLflow

# COMMAND ----------

import matplotlib.pyplot as plt

curves = notebook.training_curves(cfg, run_id)
metrics = sorted(curves["metric"].unique())
fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
for ax, metric in zip(axes[0], metrics, strict=True):
    part = curves[curves["metric"] == metric]
    ax.plot(part["epoch"], part["value"], marker="o")
    ax.set_title(metric)
    ax.set_xlabel("epoch")
plt.tight_layout()
plt.show()
curves.pivot_table(index="epoch", columns="metric", values="value")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Every training run of this lake

# COMMAND ----------

notebook.training_runs(cfg, lake)
