"""Benchmark 6 (forced CPU devices) runs in its --quick form: same numbers on 1 and 2 devices."""

import json

from experiments.bench import sharding


def test_quick_run_writes_json_same_numbers(tmp_path):
    sharding.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "sharding.json").read_text())
    assert data["benchmark"] == "sharding"
    assert [r["devices"] for r in data["rows"]] == list(sharding.get_config(quick=True).devices)
    assert all(r["round_s"] > 0 for r in data["rows"])
    assert all(r["same_numbers"] for r in data["rows"])
    # Every worker ran the code the parent saw (results of different code are never compared).
    assert {r["code_fingerprint"] for r in data["rows"]} == {data["code_fingerprint"]}
