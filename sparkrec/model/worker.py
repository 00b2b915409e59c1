"""The function every training worker runs, whichever backend launched it.

It must be importable by reference (TorchDistributor and Horovod pickle it by module path),
reads its inputs from files under the run's work directory (catalogue, validation set) or
from the Petastorm converter, and returns the best weights as safetensors bytes so the
driver can log them; every rank returns the same value, because TorchDistributor in local
mode keeps whichever rank's result file was written last.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Catalog
from .distributed import Dist, make_dist
from .towers import ModelSpec, TwoTower

BATCH_KEYS = ("user", "hist", "gaps", "target", "weight")


@dataclass
class ValSet:
    """Validation users: model inputs, the held-out target, and items to exclude (CSR)."""

    users: np.ndarray
    hist: np.ndarray
    gaps: np.ndarray
    target: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.__dict__.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> ValSet:
        from safetensors.numpy import load_file

        return cls(**load_file(str(path)))


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def build_model(spec: ModelSpec, catalog: Catalog, device: torch.device) -> TwoTower:
    model = TwoTower(spec)
    model.items.set_catalog(
        torch.from_numpy(catalog.has_id),
        None if catalog.text is None else torch.from_numpy(catalog.text),
        None if catalog.cats is None else torch.from_numpy(catalog.cats),
        None if catalog.genres is None else torch.from_numpy(catalog.genres))
    model.log_q.copy_(torch.from_numpy(catalog.log_q))
    return model.to(device)


@torch.no_grad()
def all_item_vectors(model: TwoTower, chunk: int = 16384) -> torch.Tensor:
    """(n_items + 1, d); row 0 (padding) is zero."""
    model.eval()
    n = model.spec.n_items + 1
    device = model.log_q.device
    out = torch.cat([model.item_vectors(torch.arange(s, min(s + chunk, n), device=device))
                     for s in range(0, n, chunk)])
    out[0] = 0
    return out


ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def ranking_metrics(score: ScoreFn, val: ValSet, ks: Sequence[int], device: torch.device,
                    chunk: int = 256) -> dict[str, float]:
    """Recall@K and NDCG@K of each user's held-out item among all items, seen items excluded.

    ``score(users, hist, gaps)`` returns (B, n_items + 1) scores; column 0 is padding."""
    kmax = max(ks)
    hits = dict.fromkeys(ks, 0.0)
    gains = dict.fromkeys(ks, 0.0)
    n = len(val.users)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        part = {k: torch.from_numpy(getattr(val, k)[s:e]).to(device) for k in ("users", "hist", "gaps", "target")}
        scores = score(part["users"].long(), part["hist"].long(), part["gaps"].float()).clone()
        scores[:, 0] = -torch.inf
        lo, hi = val.seen_indptr[s], val.seen_indptr[e]
        rows = torch.from_numpy(np.repeat(np.arange(e - s), np.diff(val.seen_indptr[s:e + 1]))).to(device)
        scores[rows, torch.from_numpy(val.seen_items[lo:hi]).long().to(device)] = -torch.inf
        match = scores.topk(kmax, dim=1).indices == part["target"].long().unsqueeze(1)
        rank = match.float().argmax(dim=1)
        found = match.any(dim=1)
        for k in ks:
            within = found & (rank < k)
            hits[k] += float(within.sum())
            gains[k] += float((within.float() / torch.log2(rank.float() + 2)).sum())
    out = {}
    for k in ks:
        out[f"recall@{k}"] = hits[k] / max(n, 1)
        out[f"ndcg@{k}"] = gains[k] / max(n, 1)
    return out


def model_scores(model: TwoTower) -> ScoreFn:
    items = all_item_vectors(model)

    def score(users: torch.Tensor, hist: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        return model.user_vectors(users, hist, gaps) @ items.T

    return score


@torch.no_grad()
def ranking_at_k(model: TwoTower, val: ValSet, k: int) -> dict[str, float]:
    model.eval()
    return ranking_metrics(model_scores(model), val, [k], model.log_q.device)


def _petastorm_batches(converter: Any, batch_size: int, dist: Dist, seed: int) -> tuple[Any, Iterator[dict]]:
    ctx = converter.make_torch_dataloader(batch_size=batch_size, num_epochs=None, cur_shard=dist.rank,
                                          shard_count=dist.world, shuffling_queue_capacity=batch_size * 8,
                                          seed=seed, workers_count=2)
    loader = ctx.__enter__()
    return ctx, iter(loader)


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
    spec = ModelSpec(**params["spec"])
    device = pick_device(tc.use_gpu)
    dist = make_dist(params["backend"], device)
    if device.type == "cpu":  # share the machine's cores between local workers, never oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(dist.world, 1)))
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    np.random.seed(tc.seed + dist.rank)
    catalog = Catalog.load(params["catalog_path"])
    model = build_model(spec, catalog, device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    fwd, opt = dist.wrap(model, opt)
    torch.manual_seed(tc.seed + 1000 * (dist.rank + 1))  # different dropout / negatives per rank
    val = ValSet.load(params["val_path"]) if dist.is_main else None

    ctx = None
    if params.get("converter") is not None:
        ctx, batches = _petastorm_batches(params["converter"], tc.batch_size, dist, tc.seed)
    else:
        batches = _memory_batches(params["memory_path"], tc.batch_size, dist, tc.seed)
    steps = tc.steps_per_epoch or max(1, math.ceil(params["n_examples"] / (tc.batch_size * dist.world)))
    checkpoints = Path(params["workdir"]) / "checkpoints"
    if dist.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    history: list[dict[str, float]] = []
    best, best_state, stale = -1.0, None, 0
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
                opt.zero_grad()  # Horovod's optimizer takes no set_to_none
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
            if recall > best:
                best, stale = recall, 0
                best_state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
                if dist.is_main:
                    save_file(best_state, str(checkpoints / "best.safetensors"))
            else:
                stale += 1
                if stale > tc.patience:
                    break
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
        dist.close()
    assert best_state is not None
    return {"history": history, "best": best, "state": save(best_state), "world": dist.world}
