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
        level: int

    return types.SimpleNamespace(
        __doc__="Fake benchmark.\n\nMore.",
        NAME="fake",
        TITLE="Fake",
        COLUMNS=[("x", "X", None)],
        OPTIONS={"--level": {"type": int, "default": 1, "help": "a level"}},
        notes=lambda config, result: ["a note"],
        json_name=lambda config: f"fake_{config.level}",
        get_config=lambda quick, level: Config(quick, level),
        run=run,
    )


def test_bench_main_writes_config_env_and_result(tmp_path, capsys):
    seen = []

    def run(config, reps):
        seen.append((config.quick, reps))
        return {"rows": [{"x": 1}], "targets": {"ok": True}}

    argv = ["--quick", "--reps", "3", "--level", "4", "--out", str(tmp_path)]
    out = common.bench_main(argv, _fake_bench(run))
    assert seen == [(True, 3)]
    data = json.loads((tmp_path / "fake_4.json").read_text())
    assert data == json.loads(json.dumps(common.to_jsonable(out)))
    assert data["benchmark"] == "fake" and data["config"] == {"quick": True, "level": 4}
    assert data["rows"] == [{"x": 1}] and data["targets"] == {"ok": True}
    assert "loadavg" in data["env"] and "loadavg_at_start" in data["env"]
    printed = capsys.readouterr().out
    assert "== Fake ==" in printed and "note: a note" in printed and "targets:" in printed


def test_bench_main_records_a_skip(tmp_path):
    def run(config, reps):
        raise LookupError("optional dependency missing")

    out = common.bench_main(["--out", str(tmp_path)], _fake_bench(run), skip_on=(LookupError,))
    data = json.loads((tmp_path / "fake_1.json").read_text())
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


def test_use_host_devices_after_jax_started_says_so():
    jax.numpy.zeros(1).block_until_ready()  # JAX has started with the default device count
    assert common.use_host_devices(1) == jax.device_count()
    with pytest.raises(RuntimeError, match="--host-devices"):
        common.use_host_devices(jax.device_count() + 1)
    assert common.mesh_devices(7) == (7 if jax.device_count() >= 7 else 1)  # a divisor of m


def test_max_abs_diff_closed_form_and_bool_leaves():
    a = {"x": np.array([1.0, -2.0]), "ok": np.array(True)}
    b = {"x": np.array([1.5, 1.0]), "ok": np.array(False)}
    assert common.max_abs_diff(a, b) == 3.0
    assert common.max_abs_diff(a, a) == 0.0


def test_time_with_matmul_reports_the_best_size():
    t, mm = common.time_with_matmul({"noop": lambda: None}, (32, 64), reps=2)
    per = {n: 2.0 * s**3 / t[f"matmul_{s}"].median_s / 1e9 for n, s in (("a", 32), ("b", 64))}
    assert mm["gflops"] == max(per.values()) and mm["best"] in ("matmul_32", "matmul_64")
    assert set(mm["times_s"]) == {"matmul_32", "matmul_64"} and len(t["noop"].times_s) == 2


def test_every_benchmark_is_listed_and_documents_every_option(capsys):
    import importlib
    import re

    from experiments.bench.__main__ import BENCHMARKS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for name in BENCHMARKS:
        assert re.search(rf"^  {name} +\S", listing, re.M), name
        with pytest.raises(SystemExit):
            importlib.import_module(f"experiments.bench.{name}").main(["--help"])
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m experiments.bench.{name} ")
        blocks = re.split(r"\n  (?=--)", out.split("options:", 1)[1])
        assert len(blocks) >= 5 and all(len(" ".join(b.split()[1:])) > 8 for b in blocks[1:]), out


def test_importing_the_benchmarks_leaves_the_environment_alone():
    code = (
        "import os, importlib; before = dict(os.environ); "
        "from experiments.bench.__main__ import BENCHMARKS; "
        "[importlib.import_module('experiments.bench.' + n) for n in BENCHMARKS]; "
        "import sys; sys.exit(0 if dict(os.environ) == before else 1)"
    )
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = str(common.ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
