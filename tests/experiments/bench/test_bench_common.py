"""The shared benchmark machinery: atomic JSON, tables, interleaved timing."""

import json
import math

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
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert len(t["a"].times_s) == 3 and t["a"].median_s >= 0
    with pytest.raises(ValueError, match="reps"):
        common.time_interleaved({"a": lambda: None}, reps=0)


def test_format_table():
    table = common.format_table([{"x": 1, "y": 0.5}], [("x", "X", None), ("y", "Y", ".2f")])
    assert table.splitlines() == ["X     Y", "-  ----", "1  0.50"]
