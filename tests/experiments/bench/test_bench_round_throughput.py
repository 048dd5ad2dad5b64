"""Benchmark 1 (round FLOP/s vs matmul) runs in its --quick form and writes valid JSON."""

import json

from experiments.bench import round_throughput, workload


def test_quick_run_writes_json(tmp_path):
    round_throughput.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "round_throughput.json").read_text())
    assert data["benchmark"] == "round_throughput"
    assert data["matmul"]["gflops"] > 0
    assert data["rows"][0]["variant"] == "round" and data["rows"][0]["round_s"] > 0
    spec = round_throughput.get_config(quick=True).spec
    assert data["flops"]["unavoidable"] == workload.round_flops(spec)["unavoidable"]


def test_quick_run_on_two_host_devices_adds_the_sharded_round(tmp_path, run_module):
    run_module(
        "experiments.bench.round_throughput",
        "--quick",
        "--host-devices",
        "2",
        "--out",
        str(tmp_path),
    )
    rows = json.loads((tmp_path / "round_throughput.json").read_text())["rows"]
    sharded = [r for r in rows if r["variant"] == "round, 2 devices"]
    assert len(sharded) == 1 and sharded[0]["round_s"] > 0
    assert sharded[0]["vs_plain_round_max_abs"] < 1e-5  # the same numbers as the plain round
