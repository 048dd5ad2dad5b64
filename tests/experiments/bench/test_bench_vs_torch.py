"""Benchmark 3 (abo-jax vs PyTorch) runs in its --quick form; the torch mirror computes the same round."""

import json

import pytest

from experiments.bench import vs_torch

pytest.importorskip("torch", reason="torch is the optional benchmark dependency")


def test_quick_run_writes_json_and_torch_matches_jax(tmp_path):
    vs_torch.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "vs_torch.json").read_text())
    assert data["benchmark"] == "vs_torch" and "skipped" not in data
    assert [r["m"] for r in data["rows"]] == list(vs_torch.get_config(quick=True).clients)
    for row in data["rows"]:
        assert row["abo_jax_s"] > 0 and row["torch_s"] > 0 and row["speedup"] > 0
    # Same LoRA MLP, init, loss, optimizer and PS in both frameworks (float32 round-off only).
    assert data["equality_check_max_abs"] < 1e-5
