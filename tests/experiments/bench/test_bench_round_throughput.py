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
    sharded = [r for r in rows if r["variant"] == "round, 2 devices, all clients at once"]
    assert len(sharded) == 1 and sharded[0]["round_s"] > 0
    assert sharded[0]["vs_plain_round_max_abs"] < 1e-5  # the same numbers as the plain round


def test_round_flops_closed_form():
    # One layer (d, k) = (3, 5), rank 2, 1 client, 4 samples, batch 2, one epoch: first layer only,
    # so unavoidable = LoRA forward 2r(k+d) + backward 4dr + 2rk per sample-step, plus aggregation.
    spec = workload.RoundSpec(sizes=(5, 3), ranks=(2,), clients=1, samples=4, batch=2)
    d, k, r = 3, 5, 2
    per = 2 * r * (k + d) + 4 * d * r + 2 * r * k
    agg = 2 * 1 * (r * (d + k) + d)
    flops = workload.round_flops(spec)
    assert flops["unavoidable"] == 4 * per + agg
    assert flops["naive"] == 4 * (per + 2 * d * k) + agg
    assert flops["first_once"] == 2 * d * k * 4
