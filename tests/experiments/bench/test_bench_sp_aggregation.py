"""Benchmark 4 (SP stacked vs dense) runs end to end in its --quick form and writes valid JSON."""

import json
import math

from experiments.bench import sp_aggregation


def test_quick_run_writes_json_and_agrees(tmp_path):
    out = sp_aggregation.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "sp_aggregation.json").read_text())
    config = sp_aggregation.get_config(quick=True)
    assert data["benchmark"] == "sp_aggregation" and data["quick"] is True
    assert data["env"]["jax"] and data["config"]["rank"] == config.rank
    assert {(r["d"], r["m"]) for r in data["rows"]} == {
        (d, m) for d in config.sizes for m in config.clients
    }
    for row in data["rows"]:
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("stacked_s", "dense_s"))
        # Same result as the dense SVD to float32 precision (not a timing assertion).
        assert row["sv_rel_err"] <= config.rtol and row["product_rel_err"] <= config.rtol
    assert out["targets"]["all_same_result"] is True
