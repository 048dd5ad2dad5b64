"""The shared benchmark machinery: atomic JSON, tables, interleaved timing."""

import json
import math

import jax
import numpy as np
import pytest

from experiments.bench import common


def test_write_json_is_atomic_and_jsonable(tmp_path):
    path = common.write_json(
        tmp_path / "sub" / "x.json",
        {"a": np.float32(1.5), "b": np.arange(3), "c": math.inf, "t": (1, 2)},
    )
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None, "t": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left behind


def test_time_interleaved_round_robin():
    calls = []
    t = common.time_interleaved(
        {name: (lambda name=name: calls.append(name)) for name in "abc"}, reps=3, warmup=1
    )
    # One warm-up round in order, then each repetition starts one variant later (rotation).
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t[name].times_s) == 3 and t[name].median_s >= 0 for name in "abc")
    with pytest.raises(ValueError, match="reps"):
        common.time_interleaved({"a": lambda: None}, reps=0)


def test_format_table():
    table = common.format_table([{"x": 1, "y": 0.5}], [("x", "X", None), ("y", "Y", ".2f")])
    assert table.splitlines() == ["X     Y", "-  ----", "1  0.50"]


def _fake_bench(run):
    """A minimal benchmark module for :func:`common.bench_main`."""
    import dataclasses
    import types

    @dataclasses.dataclass(frozen=True)
    class Config:
        quick: bool

    return types.SimpleNamespace(
        __doc__="Fake benchmark.\n\nMore.",
        NAME="fake",
        TITLE="Fake",
        COLUMNS=[("x", "X", None)],
        NOTES=("a note",),
        get_config=lambda quick: Config(quick),
        run=run,
    )


def test_bench_main_writes_config_env_and_result(tmp_path, capsys):
    seen = []

    def run(config, reps):
        seen.append((config.quick, reps))
        return {"rows": [{"x": 1}], "targets": {"ok": True}}

    out = common.bench_main(["--quick", "--reps", "3", "--out", str(tmp_path)], _fake_bench(run))
    assert seen == [(True, 3)]
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data == json.loads(json.dumps(common.to_jsonable(out)))
    assert data["benchmark"] == "fake" and data["config"] == {"quick": True}
    assert data["rows"] == [{"x": 1}] and data["targets"] == {"ok": True}
    assert "loadavg" in data["env"] and "loadavg_at_start" in data["env"]
    printed = capsys.readouterr().out
    assert "== Fake ==" in printed and "note: a note" in printed and "targets:" in printed


def test_bench_main_records_a_skip(tmp_path):
    def run(config, reps):
        raise LookupError("optional dependency missing")

    out = common.bench_main(["--out", str(tmp_path)], _fake_bench(run), skip_on=(LookupError,))
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data["skipped"] == out["skipped"] == "optional dependency missing"
    assert "rows" not in data


def test_code_fingerprint_follows_names_and_contents(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    first = common.code_fingerprint(pkg)
    assert common.code_fingerprint(pkg) == first
    (pkg / "notes.txt").write_text("still not code")
    assert common.code_fingerprint(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    edited = common.code_fingerprint(pkg)
    assert edited != first
    (pkg / "sub" / "b.py").rename(pkg / "c.py")
    assert common.code_fingerprint(pkg) not in (first, edited)


def test_report_renders_every_benchmark_with_its_own_columns():
    from experiments.bench import report
    from experiments.bench.__main__ import BENCHMARKS

    for name in BENCHMARKS:
        tables = report._tables(name)
        row = {key: 1.5 for _, columns in tables for key, _, _ in columns}
        text = report.section(name, {"rows": [row], "summary": [row], "targets": {"t": True}})
        for _, columns in tables:
            header = "| " + " | ".join(h for _, h, _ in columns) + " |"
            assert header in text, name
        assert '{"t": true}' in text
    assert report.section("memory", {"skipped": "no torch"}).endswith("skipped: no torch\n")


def test_use_host_devices_after_jax_started_says_so():
    jax.numpy.zeros(1).block_until_ready()  # JAX has started with the default device count
    assert common.use_host_devices(1) == jax.device_count()
    with pytest.raises(RuntimeError, match="--host-devices"):
        common.use_host_devices(jax.device_count() + 1)
    assert common.mesh_devices(7) == (7 if jax.device_count() >= 7 else 1)  # a divisor of m
