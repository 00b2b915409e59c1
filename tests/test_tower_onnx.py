"""The service's ONNX user tower computes what the PyTorch tower computes, and refuses to serve
an export that does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkrec.model.tower_onnx import ExportMismatchError, OnnxUserTower, _example
from sparkrec.model.towers import ModelSpec, UserTower


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(3)
    return UserTower(ModelSpec(n_items=50, n_users=40, dim=16, id_dim=8, hidden=32, history=8)).eval()


def test_onnx_tower_equals_torch_at_any_batch_size(tower):
    onnx = OnnxUserTower(tower)
    for batch, seed in ((1, 10), (3, 11), (64, 12)):
        inputs = _example(batch, 16, 8, 40, seed)
        with torch.no_grad():
            want = tower(*(torch.from_numpy(x) for x in inputs)).numpy()
        got = onnx(*inputs)
        assert got.shape == (batch, 16)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_graph_that_differs_from_the_module_is_refused(tower):
    onnx = OnnxUserTower(tower)
    changed = UserTower(tower.spec).eval()
    changed.load_state_dict(tower.state_dict())
    with torch.no_grad():
        changed.decay.add_(2.0)  # recency weighting: the exported graph still has the old value
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        onnx._check(changed)
