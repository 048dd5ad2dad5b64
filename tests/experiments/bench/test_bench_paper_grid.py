"""The paper-grid benchmark: its extrapolation against a closed form, one worker cell for real."""

import json

import numpy as np

from experiments.bench import paper_grid as G


def _cell(op, delta, e, a, b, fixed, ev=0.1, rounds=30):
    return {
        "op": op,
        "delta": delta,
        "E": e,
        "rounds": rounds,
        "train_s_per_round": a + e * b,
        "eval_s_per_round": ev,
        "fixed_s": fixed,
        "compile_s": fixed / 2,
        "setup_s": 4.0,
    }


def test_extrapolation_is_exact_for_rounds_linear_in_epochs_and_rank():
    # a(delta) = 1 + 10 delta, b(delta) = 2 + 100 delta, fixed 5 s at E = 1 and 7 s at E = 2.
    def a(d):
        return 1 + 10 * d

    def b(d):
        return 2 + 100 * d

    cells = [
        _cell(op, d, e, a(d), b(d), 5.0 + 2.0 * (e - 1))
        for op in ("sp", "ps")
        for d in (0.01, 0.07)
        for e in (1, 2)
    ]
    got = G.extrapolate(cells)
    train = sum(G.grid_rounds(e) * (a(d) + e * b(d)) for d in G.GRID_DELTAS for e in G.GRID_EPOCHS)
    evaluate = sum(G.grid_rounds(e) * 0.1 for d in G.GRID_DELTAS for e in G.GRID_EPOCHS)
    fixed = sum(5.0 + 2.0 * (e - 1) for d in G.GRID_DELTAS for e in G.GRID_EPOCHS)
    np.testing.assert_allclose(got["train"], 2 * train)
    np.testing.assert_allclose(got["evaluate"], 2 * evaluate)
    np.testing.assert_allclose([got["fixed"], got["compile"]], [2 * fixed, fixed])
    np.testing.assert_allclose(got["total"], got["fixed"] + got["train"] + got["evaluate"] + 4.0)
    assert [G.grid_rounds(e) for e in G.GRID_EPOCHS] == [300, 150, 100, 60, 30]


def test_a_worker_cell_splits_its_wall_time(tmp_path):
    config = G.get_config(quick=True)
    spec = G._spec(config, "default", "ps", 0.07, 1, tmp_path / "out")
    rec = G._run_worker(spec, timeout_s=300)
    assert (rec["op"], rec["E"], rec["rounds"], rec["rounds_per_dispatch"]) == ("ps", 1, 30, 10)
    steady = rec["rounds"] * (rec["train_s_per_round"] + rec["eval_s_per_round"])
    np.testing.assert_allclose(rec["fixed_s"] + steady, rec["cell_wall_s"], rtol=1e-6)
    assert 0 < rec["compile_s"] and 0 < rec["eval_s_per_round"] and rec["setup_s"] > 0
    json.dumps(rec)
