"""One training function, three ways to run it: TorchDistributor, Horovod, or in-process.

The worker function only sees a :class:`Dist`: rank, world size, how to wrap the model and
optimizer, and two collectives. Everything backend-specific lives here.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class Optimizers:
    """Several optimizers stepped as one: the dense weights' fused AdamW and the ID tables'
    SparseAdam (see ``train.sparse_ids``) each own a disjoint share of the parameters."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad()  # Horovod's optimizer takes no set_to_none

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


class Dist(abc.ABC):
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abc.abstractmethod
    def wrap(self, model: nn.Module, opts: Sequence[torch.optim.Optimizer]) -> tuple[nn.Module, Optimizers]:
        """Returns the module to call forward on and the optimizers to step. An ID table that
        takes sparse gradients must be switched to them before this (DDP reads it here)."""

    @abc.abstractmethod
    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (validation results, the stop flag)."""

    @abc.abstractmethod
    def mean(self, value: float) -> float: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        pass


class SingleProcess(Dist):
    def wrap(self, model: nn.Module, opts: Sequence[torch.optim.Optimizer]) -> tuple[nn.Module, Optimizers]:
        return model, Optimizers(opts)

    def broadcast(self, value: float) -> float:
        return value

    def mean(self, value: float) -> float:
        return value


class TorchDist(Dist):
    """torch.distributed, as set up by torchrun (TorchDistributor): gloo on CPU, nccl on GPU."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as td

        self.td = td
        if not td.is_initialized():
            td.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world = td.get_rank(), td.get_world_size()
        self.device = device

    def wrap(self, model: nn.Module, opts: Sequence[torch.optim.Optimizer]) -> tuple[nn.Module, Optimizers]:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # gloo all-reduces the sparse row gradients of a sparse nn.Embedding; NCCL cannot
        # (train.sparse_ids "auto" keeps them dense on a GPU).
        return DistributedDataParallel(model, device_ids=ids), Optimizers(opts)

    def _collective(self, value: float, op: str) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        if op == "broadcast":
            self.td.broadcast(t, src=0)
        else:
            self.td.all_reduce(t)
            t /= self.world
        return float(t.item())

    def broadcast(self, value: float) -> float:
        return self._collective(value, "broadcast")

    def mean(self, value: float) -> float:
        return self._collective(value, "mean")

    def close(self) -> None:
        if self.td.is_initialized():
            self.td.destroy_process_group()


class HorovodDist(Dist):
    """Horovod (gloo on CPU, NCCL on GPU clusters): averaged gradients via its optimizer."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.world = hvd.rank(), hvd.size()

    def wrap(self, model: nn.Module, opts: Sequence[torch.optim.Optimizer]) -> tuple[nn.Module, Optimizers]:
        """One DistributedOptimizer per optimizer, each over its own parameters: Horovod
        all-gathers a sparse row gradient (SparseAdam's) and all-reduces the dense ones."""
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        wrapped = []
        for opt in opts:
            mine = {id(p) for group in opt.param_groups for p in group["params"]}
            hvd.broadcast_optimizer_state(opt, root_rank=0, model=model)
            wrapped.append(hvd.DistributedOptimizer(
                opt, named_parameters=[(n, p) for n, p in model.named_parameters() if id(p) in mine]))
        return model, Optimizers(wrapped)

    def broadcast(self, value: float) -> float:
        return float(self.hvd.broadcast(torch.tensor([value], dtype=torch.float64), root_rank=0).item())

    def mean(self, value: float) -> float:
        return float(self.hvd.allreduce(torch.tensor([value], dtype=torch.float64), op=self.hvd.Average).item())

    def close(self) -> None:
        self.hvd.shutdown()


def make_dist(backend: str, device: torch.device) -> Dist:
    if backend == "horovod":
        return HorovodDist()
    if backend == "torchdistributor" and "WORLD_SIZE" in os.environ:
        return TorchDist(device)
    return SingleProcess()


def run_distributed(backend: str, num_workers: int, fn: Callable[[dict[str, Any]], Any], params: dict[str, Any],
                    use_gpu: bool = False, local_mode: bool = True) -> Any:
    """Runs ``fn(params)`` on ``num_workers`` workers and returns rank 0's result."""
    params = {**params, "backend": backend}
    if backend == "local":
        return fn(params)
    if backend == "torchdistributor":
        from pyspark.ml.torch.distributor import TorchDistributor

        distributor = TorchDistributor(num_processes=num_workers, local_mode=local_mode, use_gpu=use_gpu)
        return distributor.run(fn, params)
    if backend == "horovod":
        try:
            import horovod.spark
        except ImportError as exc:
            raise RuntimeError("train.backend=horovod needs Horovod: build it with scripts/build_horovod.sh and "
                               "pip install the wheel it prints (or `pip install -e .[horovod]` style extra)") from exc
        results = horovod.spark.run(fn, args=(params,), num_proc=num_workers, use_gloo=not use_gpu,
                                    verbose=0)
        return results[0]
    raise ValueError(f"unknown train.backend {backend!r}")
