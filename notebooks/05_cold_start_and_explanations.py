# Databricks notebook source
# MAGIC %md
# MAGIC # 05 · Cold start and explanations
# MAGIC
# MAGIC * a **new user** known only by a sentence: the text's nearest items become a pseudo-history for the user
# MAGIC   tower (`sparkrec recommend-text`);
# MAGIC * a **new item** known only by its description: the item tower places it from its text and genres (as it
# MAGIC   places any item nobody has touched); its neighbours and the users it would suit are listed;
# MAGIC * an **explanation** and the evidence it was rendered from: every word of the sentence comes from the
# MAGIC   evidence struct.
# MAGIC
# MAGIC Uses the production model `00_quickstart` trained (the pipeline runs first if the lake has none).

# COMMAND ----------

from sparkrec import notebook

params = notebook.widgets({"conf": "", "work_dir": "notebook-work", "fast": "true", "overrides": "",
                           "user_text": "I love dark science fiction about artificial intelligence and space",
                           "item_description": "A heartwarming animated adventure about a lost robot who "
                                               "befriends a family of talking animals",
                           "item_genres": "Animation,Children,Adventure", "user_id": ""},
                          globals().get("dbutils"))
cfg = notebook.notebook_config(params)
spark, lake = notebook.open_session(cfg)
ran = notebook.ensure_pipeline(cfg, lake)  # none after 00_quickstart
print("stages run now:", list(ran) or "none (the lake 00_quickstart built)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## A new user, from free text

# COMMAND ----------

import pandas as pd

from sparkrec.recommend import recommend_for_text

rows = recommend_for_text(cfg, spark, lake, params["user_text"], k=10)
print("interests:", params["user_text"])
pd.DataFrame(rows)[["rank", "item_id", "score", "explanation"]]

# COMMAND ----------

# MAGIC %md
# MAGIC ## A new item, from its description

# COMMAND ----------

genres = [g.strip() for g in params["item_genres"].split(",") if g.strip()]
placed = notebook.new_item(cfg, spark, lake, params["item_description"], genres, k=10)
print("description:", params["item_description"], "| genres:", genres)
placed["similar"][["cosine", "item_id", "title", "genres"]]

# COMMAND ----------

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
sim = placed["similar"]
axes[0].barh(sim["title"].str.slice(0, 35)[::-1], sim["cosine"][::-1])
axes[0].set_title("nearest catalogue items (model space)")
aud = placed["audience"]
axes[1].barh(aud["user_id"].astype(str)[::-1], aud["cosine"][::-1], color="tab:green")
axes[1].set_title("users it suits best (user tower x new item)")
plt.tight_layout()
plt.show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## An explanation and its evidence

# COMMAND ----------

recs = notebook.recommendations_for(lake, params["user_id"] or None)
print("user", recs["user_id"].iloc[0])
evidence = notebook.evidence_table(recs)
evidence.head(5)

# COMMAND ----------

first = evidence.iloc[0]
print("explanation:", first["explanation"])
print("evidence:")
for column in evidence.columns[4:]:
    print(f"  {column}: {first[column]}")
