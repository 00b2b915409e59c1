"""The function every training worker runs, whichever backend launched it.

It must be importable by reference (TorchDistributor and Horovod pickle it by module path),
reads its inputs from files under the run's work directory (catalogue, validation set) or
from the Petastorm converter, and returns the best weights as safetensors bytes so the
driver can log them; every rank returns the same value, because TorchDistributor in local
mode keeps whichever rank's result file was written last.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .build import all_item_vectors, build_model
from .data import Catalog
from .distributed import Dist, make_dist
from .towers import ModelSpec, TwoTower
from .validation import EarlyStopping, ValSet, ranking_quality

if TYPE_CHECKING:
    from ..config import TrainConfig

BATCH_KEYS = ("user", "hist", "gaps", "target", "weight")


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def tower_scores(model: TwoTower, val: ValSet, start: int, stop: int, items: torch.Tensor) -> np.ndarray:
    """(users, n_items + 1) cosine scores of validation users ``start .. stop`` in model space."""
    device = items.device
    part = {k: torch.from_numpy(getattr(val, k)[start:stop]).to(device) for k in ("users", "hist", "gaps")}
    u = model.user_vectors(part["users"].long(), part["hist"].long(), part["gaps"].float())
    return (u @ items.T).float().cpu().numpy()


@torch.no_grad()
def ranking_at_k(model: TwoTower, val: ValSet, k: int, chunk: int = 256) -> dict[str, float]:
    """Mean Recall@k and NDCG@k of the towers on the validation set, all items ranked."""
    model.eval()
    items = all_item_vectors(model)
    recall, ndcg = [], []
    for start in range(0, len(val), chunk):
        stop = min(start + chunk, len(val))
        r, n = ranking_quality(tower_scores(model, val, start, stop, items), val, start, k)
        recall.append(r)
        ndcg.append(n)
    if not recall:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    return {f"recall@{k}": float(np.concatenate(recall).mean()), f"ndcg@{k}": float(np.concatenate(ndcg).mean())}


def id_tables(model: TwoTower) -> list[torch.nn.Embedding]:
    """The embedding tables that grow with the catalogue and the user base."""
    return [model.items.id_emb] + ([model.users.id_emb] if model.spec.user_id else [])


def optimizers(model: TwoTower, tc: TrainConfig, sparse_ids: bool) -> list[torch.optim.Optimizer]:
    """Fused AdamW for the dense weights (one kernel per step instead of a dozen passes over
    every parameter: the unfused update took 55% of a CPU step on Book-Crossing). With
    ``sparse_ids`` the ID tables switch to sparse row gradients and a lazy SparseAdam: a batch
    touches a few thousand of their 550k rows, and a dense gradient meant filling, zeroing and
    stepping all 35M weights every step (a third of a CPU step there)."""
    if not sparse_ids:
        return [torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)]
    tables = id_tables(model)
    for table in tables:
        table.sparse = True
    sparse = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse]
    return [torch.optim.AdamW(dense, lr=tc.lr, weight_decay=tc.weight_decay, fused=True),
            torch.optim.SparseAdam([t.weight for t in tables], lr=tc.lr)]


def _petastorm_batches(converter: Any, batch_size: int, dist: Dist, seed: int, batched: bool) -> Iterator[dict]:
    """Full batches from one Petastorm reader per pass over the examples, pass ``p`` seeded
    ``seed + p``, read by one reader thread.

    Both choices make a run repeatable: with two reader threads row groups arrive in whichever
    order they finish, and an endless reader (``num_epochs=None``) reshuffles its row groups
    each time its ventilator polls a full queue at a pass boundary, a timing-dependent number
    of times. Same data and seed now give the same weights (tests/test_model.py).

    ``batched`` (``train.batched_feed``): Petastorm's batched loader, which shuffles and slices
    whole column tensors (torch's generator, seeded by the worker); its default loader moves every
    row through Python one at a time (48k rows/s on Book-Crossing's examples against 230k+, in the
    training process's own time).
    """
    from petastorm.pytorch import BatchedDataLoader

    for n_pass in itertools.count():
        with converter.make_torch_dataloader(batch_size=batch_size, num_epochs=1, cur_shard=dist.rank,
                                             shard_count=dist.world, shuffling_queue_capacity=batch_size * 8,
                                             seed=seed + n_pass, workers_count=1,
                                             data_loader_fn=BatchedDataLoader if batched else None) as loader:
            full = 0
            for batch in loader:  # a pass's short last batch is dropped, unless it is the whole pass
                if len(batch["target"]) == batch_size or not full:
                    full += len(batch["target"]) == batch_size
                    yield batch


def _memory_batches(path: str, batch_size: int, dist: Dist, seed: int) -> Iterator[dict]:
    from safetensors.numpy import load_file

    data = {k: torch.from_numpy(v) for k, v in load_file(path).items()}
    n = len(data["target"])
    rng = torch.Generator().manual_seed(seed + dist.rank)
    while True:
        order = torch.randperm(n, generator=rng)[dist.rank::dist.world]
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s:s + batch_size]
            yield {k: v[idx] for k, v in data.items()}


def _to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for key in BATCH_KEYS:
        value = torch.as_tensor(batch[key])
        out[key] = value.to(device, non_blocking=True).long() if key in ("user", "hist", "target") \
            else value.to(device, non_blocking=True).float()
    return out


def worker_main(params: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save, save_file
    from tqdm import tqdm

    from ..config import TrainConfig

    tc = TrainConfig.model_validate(params["train"])
    spec = ModelSpec.from_dict(params["spec"])
    if tc.deterministic:  # cuBLAS reads this when CUDA starts; repeatable GEMMs need it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(tc.deterministic, warn_only=True)
    device = pick_device(tc.use_gpu)
    dist = make_dist(params["backend"], device)
    if device.type == "cpu":  # share the machine's cores between local workers, never oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(dist.world, 1)))
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    np.random.seed(tc.seed + dist.rank)
    catalog = Catalog.load(params["catalog_path"])
    model = build_model(spec, catalog, device)
    fwd, opt = dist.wrap(model, optimizers(model, tc, tc.sparse_id_tables(device.type)))
    torch.manual_seed(tc.seed + 1000 * (dist.rank + 1))  # different dropout / negatives per rank
    refit = bool(params.get("refit"))  # a fixed number of epochs on every row: no validation, keep the last
    val = ValSet.load(params["val_path"]) if dist.is_main and not refit else None

    if params.get("converter") is not None:
        batches = _petastorm_batches(params["converter"], tc.batch_size, dist, tc.seed, tc.batched_feed)
    else:
        batches = _memory_batches(params["memory_path"], tc.batch_size, dist, tc.seed)
    steps = tc.steps_per_epoch or max(1, math.ceil(params["n_examples"] / (tc.batch_size * dist.world)))
    checkpoints = Path(params["workdir"]) / "checkpoints"
    if dist.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    history: list[dict[str, float]] = []
    stopping, best_state = EarlyStopping(tc.patience), None
    try:
        for epoch in range(1, tc.epochs + 1):
            fwd.train()
            started, total, seen = time.perf_counter(), 0.0, 0
            bar = tqdm(range(steps), desc=f"epoch {epoch}", disable=not (dist.is_main and tc.progress),
                       mininterval=2.0, leave=False)
            for _ in bar:
                batch = _to_device(next(batches), device)
                with autocast:
                    loss = fwd(batch, tc.logq_correction, tc.extra_negatives)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch["target"])
                seen += len(batch["target"])
                bar.set_postfix(loss=f"{total / seen:.4f}",
                                samples_s=f"{seen * dist.world / (time.perf_counter() - started):,.0f}")
            seconds = time.perf_counter() - started
            metrics = ranking_at_k(model, val, tc.recall_k) if val is not None else {}
            key = f"recall@{tc.recall_k}"
            recall = dist.broadcast(metrics.get(key, 0.0))
            ndcg = dist.broadcast(metrics.get(f"ndcg@{tc.recall_k}", 0.0))
            row = {"epoch": epoch, "loss": dist.mean(total / max(seen, 1)), key: recall,
                   f"ndcg@{tc.recall_k}": ndcg, "epoch_seconds": seconds,
                   "samples_per_s": dist.mean(seen / seconds) * dist.world}
            history.append(row)
            if dist.is_main:
                print(f"epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"),
                      flush=True)
            verdict = "better" if refit else stopping.update(recall)
            if verdict == "better":
                best_state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
                if dist.is_main:
                    save_file(best_state, str(checkpoints / "best.safetensors"))
            elif verdict == "stop":
                break
    finally:
        batches.close()  # a Petastorm reader's threads stop with its generator
        dist.close()
    assert best_state is not None
    return {"history": history, "best": stopping.best, "state": save(best_state), "world": dist.world}
