"""The hybrid two-tower model.

Index conventions: every item and user index inside the model is the table index + 1, so 0
is padding (an empty history slot, a missing category, an unknown user).

* Item tower: item-id embedding + projected text embedding + categorical embeddings -> MLP
  -> unit vector. The id part is dropped at random while training and is absent for items
  with no training interactions, so a brand-new item is served from its text and fields.
* User tower: attention and recency-weighted pooling over the item-tower vectors of the
  user's last N items (with the time gap of each to the user's latest event), plus an
  optional user-id embedding and interest-text embedding -> MLP -> unit vector. A user's
  vector is a function of their history, so it follows new events without retraining.
* Loss: sampled softmax over in-batch negatives (plus optional uniform negatives) with
  log-Q popularity correction and a temperature.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelSpec:
    """Everything needed to rebuild the module: saved as JSON beside the weights."""

    n_items: int
    n_users: int
    dim: int = 64
    id_dim: int = 64
    text_in: int = 0  # 0: no text features
    text_dim: int = 64
    cat_vocab_sizes: list[int] = field(default_factory=list)  # per single-valued field
    genre_vocab: int = 0  # 0: no multi-valued genre field
    cat_dim: int = 16
    hidden: int = 256
    history: int = 30
    id_dropout: float = 0.3
    dropout: float = 0.1
    user_id: bool = True
    temperature: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> ModelSpec:
        """The spec a saved model recorded. Options retired since then are dropped when they
        hold their inert default (a model trained with them on could not be rebuilt, so it fails)."""
        doc = dict(doc)
        for name, inert in RETIRED_OPTIONS.items():
            value = doc.pop(name, inert)
            if value != inert:
                raise ValueError(f"the saved model uses {name}={value!r}, which this version no longer has")
        return cls(**doc)


# Spec options removed from the model, with the value that meant "off". ``user_text_in`` fed a
# user-interest text vector to the user tower but nothing ever set it; interest text reaches a
# user's list through the text-space blend of the recommend stage instead.
RETIRED_OPTIONS: dict[str, object] = {"user_text_in": 0}


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ItemTower(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        n = spec.n_items + 1
        self.id_emb = nn.Embedding(n, spec.id_dim, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        d_in = spec.id_dim
        # Catalogue features are buffers, not parameters: they are data the tower reads.
        # persistent=False keeps them out of the weights file (they ship as the catalogue).
        self.register_buffer("has_id", torch.zeros(n, dtype=torch.bool), persistent=False)
        if spec.text_in:
            self.register_buffer("text", torch.zeros(n, spec.text_in, dtype=torch.float16), persistent=False)
            self.text_proj = nn.Linear(spec.text_in, spec.text_dim)
            d_in += spec.text_dim
        if spec.cat_vocab_sizes:
            self.register_buffer("cats", torch.zeros(n, len(spec.cat_vocab_sizes), dtype=torch.long),
                                 persistent=False)
            self.cat_embs = nn.ModuleList(nn.Embedding(v, spec.cat_dim, padding_idx=0)
                                          for v in spec.cat_vocab_sizes)
            d_in += spec.cat_dim * len(spec.cat_vocab_sizes)
        if spec.genre_vocab:
            self.register_buffer("genres", torch.zeros(n, 4, dtype=torch.long), persistent=False)
            self.genre_bag = nn.EmbeddingBag(spec.genre_vocab, spec.cat_dim, mode="mean", padding_idx=0)
            d_in += spec.cat_dim
        self.mlp = _mlp(d_in, spec.hidden, spec.dim, spec.dropout)

    def set_catalog(self, has_id: Tensor, text: Tensor | None = None, cats: Tensor | None = None,
                    genres: Tensor | None = None) -> None:
        self.has_id.copy_(has_id)
        if self.spec.text_in and text is not None:
            self.text.copy_(text.to(self.text.dtype))
        if self.spec.cat_vocab_sizes and cats is not None:
            self.cats.copy_(cats)
        if self.spec.genre_vocab and genres is not None:
            self.genres.copy_(genres)

    def forward(self, items: Tensor) -> Tensor:
        shape = items.shape
        flat = items.reshape(-1)
        keep = self.has_id[flat]
        if self.training and self.spec.id_dropout > 0:
            keep = keep & (torch.rand(flat.shape, device=flat.device) >= self.spec.id_dropout)
        parts = [self.id_emb(flat) * keep.unsqueeze(-1).to(self.id_emb.weight.dtype)]
        if self.spec.text_in:
            parts.append(self.text_proj(self.text[flat].to(self.text_proj.weight.dtype)))
        if self.spec.cat_vocab_sizes:
            cats = self.cats[flat]
            parts.extend(emb(cats[:, i]) for i, emb in enumerate(self.cat_embs))
        if self.spec.genre_vocab:
            parts.append(self.genre_bag(self.genres[flat]))
        out = F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)
        return out.reshape(*shape, -1)


class UserTower(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.gap = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, d))
        self.pos = nn.Embedding(spec.history, d)
        self.query = nn.Parameter(torch.randn(d) * 0.05)
        self.key = nn.Linear(d, d)
        self.decay = nn.Parameter(torch.tensor(0.0))  # recency weighting, learned
        d_in = 2 * d
        if spec.user_id:
            self.id_emb = nn.Embedding(spec.n_users + 1, spec.id_dim, padding_idx=0)
            nn.init.normal_(self.id_emb.weight, std=0.05)
            self.id_query = nn.Linear(spec.id_dim, d, bias=False)
            d_in += spec.id_dim
        self.mlp = _mlp(d_in, spec.hidden, d, spec.dropout)

    def forward(self, item_vecs: Tensor, mask: Tensor, gaps: Tensor, users: Tensor) -> Tensor:
        """item_vecs (B, N, d) of the history, mask (B, N) true for real items (right-aligned:
        the most recent item is last), gaps (B, N) log-scaled time to the latest event."""
        b, n, d = item_vecs.shape
        pos = self.pos(torch.arange(self.spec.history - n, self.spec.history, device=item_vecs.device))
        keys = self.key(item_vecs + self.gap(gaps.unsqueeze(-1)) + pos)
        query = self.query.expand(b, d)
        id_part = None
        if self.spec.user_id:
            id_part = self.id_emb(users)
            if self.training:  # users unseen in training must still be served from history alone
                id_part = id_part * (torch.rand(b, 1, device=users.device) >= self.spec.id_dropout)
            query = query + self.id_query(id_part)
        neg = torch.finfo(keys.dtype).min
        attn = torch.einsum("bnd,bd->bn", keys, query) / math.sqrt(d)
        attn = torch.softmax(attn.masked_fill(~mask, neg), dim=-1) * mask
        recency = torch.softmax((-F.softplus(self.decay) * gaps).masked_fill(~mask, neg), dim=-1) * mask
        parts = [torch.einsum("bn,bnd->bd", attn, item_vecs), torch.einsum("bn,bnd->bd", recency, item_vecs)]
        if id_part is not None:
            parts.append(id_part)
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.items = ItemTower(spec)
        self.users = UserTower(spec)
        self.register_buffer("log_q", torch.zeros(spec.n_items + 1), persistent=False)

    def _unique_item_vectors(self, *groups: Tensor) -> list[Tensor]:
        """Item-tower vectors for several index tensors, computing each distinct item once:
        a batch's histories repeat items many times, and the tower dominates the step cost."""
        flat = torch.cat([g.reshape(-1) for g in groups])
        uniq, inverse = torch.unique(flat, return_inverse=True)
        vectors = self.items(uniq)[inverse]
        out, start = [], 0
        for g in groups:
            out.append(vectors[start:start + g.numel()].reshape(*g.shape, -1))
            start += g.numel()
        return out

    def user_vectors(self, users: Tensor, hist: Tensor, gaps: Tensor) -> Tensor:
        (hist_vectors,) = self._unique_item_vectors(hist)
        return self.users(hist_vectors, hist > 0, gaps, users)

    def item_vectors(self, items: Tensor) -> Tensor:
        return self.items(items)

    def forward(self, batch: dict[str, Tensor], logq: bool = True, extra_negatives: int = 0) -> Tensor:
        """The training loss: DDP synchronises gradients only through forward()."""
        return self.loss(batch, logq, extra_negatives)

    def loss(self, batch: dict[str, Tensor], logq: bool = True, extra_negatives: int = 0) -> Tensor:
        target, hist = batch["target"], batch["hist"]
        hist_vectors, v = self._unique_item_vectors(hist, target)
        u = self.users(hist_vectors, hist > 0, batch["gaps"], batch["user"])
        t = self.spec.temperature
        logits = u @ v.T / t
        if logq:  # in-batch negatives are drawn by popularity: undo that bias
            logits = logits - self.log_q[target].unsqueeze(0)
        same = target.unsqueeze(0) == target.unsqueeze(1)
        eye = torch.eye(len(target), dtype=torch.bool, device=target.device)
        logits = logits.masked_fill(same & ~eye, torch.finfo(logits.dtype).min)  # a positive is no negative
        if extra_negatives:
            neg = torch.randint(1, self.spec.n_items + 1, (extra_negatives,), device=target.device)
            extra = u @ self.items(neg).T / t
            extra = extra.masked_fill(neg.unsqueeze(0) == target.unsqueeze(1), torch.finfo(extra.dtype).min)
            if logq:  # uniform sampling: q = M / N for every sampled item
                extra = extra - math.log(extra_negatives / self.spec.n_items)
            logits = torch.cat([logits, extra], dim=1)
        losses = F.cross_entropy(logits.float(), torch.arange(len(target), device=target.device), reduction="none")
        w = batch["weight"].float()
        return (losses * w).sum() / w.sum().clamp_min(1e-6)
