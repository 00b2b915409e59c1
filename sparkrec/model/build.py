"""A TwoTower from its spec and catalogue, and the item matrix it scores against.

Training (``worker``), saving and loading (``registry``) and scoring (``recommend``, the
service) all need these two; they live apart from the training worker so serving code does
not import the trainer (and with it petastorm and the distributed backends).
"""

from __future__ import annotations

import torch

from .data import Catalog
from .towers import ModelSpec, TwoTower


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
