# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Text embeddings: nearest neighbours by text, and a map of the catalogue
# MAGIC
# MAGIC The embed stage encodes each item's text (title, genres, tags, ...) with all-MiniLM-L6-v2 inside Spark
# MAGIC (`item_embeddings`). Here the same encoder turns a free-text query into a vector, the nearest items by
# MAGIC cosine are listed, and the whole catalogue is drawn in two dimensions (principal components).

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "query": "a funny animated movie for children about toys",
                           "item_id": "1"}, globals().get("dbutils"))
cfg = notebook.notebook_config(params)
spark, lake = notebook.open_session(cfg)
ran = notebook.ensure_pipeline(cfg, lake, ["ingest", "features", "embed"])  # none after 00_quickstart
print("stages run now:", list(ran) or "none (the lake 00_quickstart built)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Nearest items to a free-text query

# COMMAND ----------

by_text = notebook.nearest_by_text(cfg, spark, lake, params["query"], k=10)
print("query:", params["query"])
by_text[["cosine", "item_id", "title", "genres"]]

# COMMAND ----------

# MAGIC %md
# MAGIC ## Nearest items to one catalogue item

# COMMAND ----------

by_item = notebook.nearest_to_item(lake, params["item_id"], k=10)
by_item[["cosine", "item_id", "title", "genres"]]

# COMMAND ----------

# MAGIC %md
# MAGIC ## The catalogue in two dimensions
# MAGIC Each point is an item, placed by the first two principal components of its text vector and coloured by
# MAGIC its first genre; the query's neighbours are circled.

# COMMAND ----------

import matplotlib.pyplot as plt

cmap = notebook.catalogue_map(lake)
top_genres = cmap["genre"].value_counts().index[:8]
fig, ax = plt.subplots(figsize=(10, 8))
for genre in top_genres:
    part = cmap[cmap["genre"] == genre]
    ax.scatter(part["x"], part["y"], s=6, alpha=0.6, label=genre)
rest = cmap[~cmap["genre"].isin(top_genres)]
ax.scatter(rest["x"], rest["y"], s=4, alpha=0.3, color="lightgrey", label="other")
hits = cmap[cmap["item_id"].isin(by_text["item_id"])]
ax.scatter(hits["x"], hits["y"], s=80, facecolors="none", edgecolors="black", label="query's neighbours")
for _, row in hits.head(5).iterrows():
    ax.annotate(str(row["title"])[:30], (row["x"], row["y"]), fontsize=8)
ax.legend(markerscale=3, fontsize=8)
ax.set_title("catalogue map (PCA of item text embeddings)")
plt.tight_layout()
plt.show()
