"""Benchmark 2 (vmap vs per-client loops) runs in its --quick form and writes valid JSON."""

import json

from experiments.bench import vmap_vs_loop


def _check_rows(data, variants):
    assert data["benchmark"] == "vmap_vs_loop"
    m = vmap_vs_loop.get_config(quick=True).clients
    assert [(r["m"], r["variant"]) for r in data["rows"]] == [(k, v) for k in m for v in variants]
    for row in data["rows"]:
        for key in ("vmapped_s", "loop_update_s", "loop_step_s", "matmul_gflops"):
            assert row[key] > 0
        # The per-client loop (a) and every variant run the same maths as the plain round.
        assert row["a_vs_vmapped_max_abs"] < 1e-5
        assert row["variant_vs_plain_max_abs"] < 1e-5


def test_quick_run_writes_json(tmp_path):
    vmap_vs_loop.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "vmap_vs_loop.json").read_text())
    _check_rows(data, ["1 device, all clients at once", "1 device, groups of 3"])
    assert len(data["env"]["devices"]) == 1


def test_quick_run_on_two_host_devices(tmp_path, run_module):
    # --host-devices must act before JAX starts, so it runs in a fresh process.
    run_module(
        "experiments.bench.vmap_vs_loop", "--quick", "--host-devices", "2", "--out", str(tmp_path)
    )
    data = json.loads((tmp_path / "vmap_vs_loop.json").read_text())
    _check_rows(
        data,
        ["1 device, all clients at once", "1 device, groups of 3", "2 devices, groups of 1"],
    )
    assert len(data["env"]["devices"]) == 2
