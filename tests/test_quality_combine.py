"""The quality benchmark's --combine: seeds measured in separate runs average as one run would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality


def _run(path: Path, seeds: list[int], hybrid: list[float], ease: list[float]) -> Path:
    models = {"hybrid": {"ndcg@10": quality.stats(hybrid), "recall@20": quality.stats(hybrid)},
              "ease": {"ndcg@10": quality.stats(ease), "recall@20": quality.stats(ease)}}
    path.write_text(json.dumps({"movielens": {"stratified": {"seeds": seeds, "models": models},
                                              "temporal_loo": {"models": {"hybrid": {}}}}}))
    return path


def test_combine_concatenates_seeds_and_recomputes_stats(tmp_path: Path) -> None:
    a = _run(tmp_path / "a.json", [42], [0.30], [0.20])
    b = _run(tmp_path / "b.json", [43, 44], [0.34, 0.32], [0.40, 0.30])
    merged, verdicts = quality.combine([a, b])
    strat = merged["movielens"]["stratified"]
    assert strat["seeds"] == [42, 43, 44]
    assert strat["models"]["hybrid"]["ndcg@10"]["values"] == [0.30, 0.34, 0.32]
    assert strat["models"]["ease"]["ndcg@10"]["mean"] == pytest.approx(0.30)
    assert strat["models"]["hybrid"]["ndcg@10"]["std"] == pytest.approx(0.02)
    assert "temporal_loo" in merged["movielens"]
    assert any("MEETS the 1.05x goal on ndcg@10" in v for v in verdicts)  # 0.32 vs 0.30 = 1.067x


def test_a_later_run_of_a_model_and_seed_replaces_the_earlier_one(tmp_path: Path, capsys) -> None:
    both = _run(tmp_path / "both.json", [42, 43], [0.30, 0.31], [0.20, 0.22])
    rerun = tmp_path / "rerun.json"  # the hybrid alone, re-run after a change, on the same seeds
    rerun.write_text(json.dumps({"movielens": {"stratified": {"seeds": [42, 43], "models": {
        "hybrid": {"ndcg@10": quality.stats([0.40, 0.42]), "recall@20": quality.stats([0.40, 0.42])}}}}}))
    merged, _ = quality.combine([both, rerun])
    strat = merged["movielens"]["stratified"]
    assert strat["seeds"] == [42, 43]  # each split counted once
    assert strat["models"]["hybrid"]["ndcg@10"]["values"] == [0.40, 0.42]
    assert strat["models"]["ease"]["ndcg@10"]["values"] == [0.20, 0.22]
    assert "replaces movielens hybrid seed(s) [42, 43]" in capsys.readouterr().out
