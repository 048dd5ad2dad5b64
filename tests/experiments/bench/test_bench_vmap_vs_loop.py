"""Benchmark 2 (vmap vs per-client loops) runs in its --quick form and writes valid JSON."""

import json

from experiments.bench import vmap_vs_loop


def test_quick_run_writes_json(tmp_path):
    vmap_vs_loop.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "vmap_vs_loop.json").read_text())
    assert data["benchmark"] == "vmap_vs_loop"
    assert [r["m"] for r in data["rows"]] == list(vmap_vs_loop.get_config(quick=True).clients)
    for row in data["rows"]:
        for key in ("vmapped_s", "loop_update_s", "loop_step_s", "matmul_gflops"):
            assert row[key] > 0
        # The per-client loop (a) runs the same maths as the vmapped round.
        if "a_vs_vmapped_max_abs" in row:
            assert row["a_vs_vmapped_max_abs"] < 1e-5
