"""The paper grid's --quick run end to end: outputs well-formed, resumes after a failure mid-grid."""

import csv
import dataclasses
import functools
import sys

import jax
import numpy as np
import pytest

import experiments.paper.run as paper
from abo_jax.simulation.checkpoint import CheckpointError
from experiments.common.grid import cell_path
from experiments.common.io import read_json
from experiments.common.plotting import is_valid_png
from experiments.paper.claim import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from experiments.paper.config import get_quick_config


def test_paper_quick_runs_resumes_and_writes_well_formed_results(tmp_path, monkeypatch):
    argv = ["--quick", "--out", str(tmp_path), "--progress", "false"]
    real = paper._run_cell
    calls = []

    def failing(cell, cache, progress, folder, *mesh):
        if len(calls) == 2:
            raise RuntimeError("injected failure after two cells")
        calls.append(cell)
        return real(cell, cache, progress, folder, *mesh)

    monkeypatch.setattr(paper, "_run_cell", failing)
    try:
        paper.main(argv)
        raise AssertionError("the injected failure should stop the grid")
    except RuntimeError as err:
        assert "injected" in str(err)
    cfg = get_quick_config()
    cells = paper.make_cells(cfg)
    folder = tmp_path / paper.run_name(cfg) / "cells"
    done = {i: cell_path(folder, cells[i]).stat().st_mtime_ns for i in (0, 1)}
    assert not cell_path(folder, cells[2]).exists()

    monkeypatch.setattr(paper, "_run_cell", real)
    result = paper.main(argv)
    assert result["counts"] == {"run": len(cells) - 2, "skipped": 2}
    assert {i: cell_path(folder, cells[i]).stat().st_mtime_ns for i in (0, 1)} == done

    run_dir = result["folder"]
    with open(run_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cells) == 2 * 2 * 2  # deltas x epochs x operators
    for row in rows:
        best, lo, hi = float(row["best_mean"]), float(row["best_lo"]), float(row["best_hi"])
        assert 0.0 <= best <= 100.0 and lo <= best <= hi
        assert float(row["final_mean"]) <= best + 1e-9
    rec = read_json(cell_path(folder, cells[0]))
    res = rec["result"]
    seeds, rounds = cfg.seeds, rec["cell"]["rounds"]
    assert np.asarray(res["curves"]["test_acc"]).shape == (seeds, rounds)
    np.testing.assert_allclose(res["best_acc"], np.max(res["curves"]["test_acc"], axis=1))
    for term in paper.MISMATCH_TERMS:
        arr = np.asarray(res["metrics"][term], float)
        assert arr.shape == (seeds, rounds, 3) and np.all(arr >= 0)
    verdict = read_json(run_dir / "verdict.json")
    for key in ("best_acc", "final_acc"):
        v = verdict["digits"][key]
        assert v["overall"] in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
        assert {"rank", "epoch"} <= set(v)
    names = {p.name for p in run_dir.glob("*.png")}
    assert {"heatmap_digits_best.png", "heatmap_digits_final.png"} <= names
    assert any(n.startswith("curves_") for n in names)
    assert any(n.startswith("mismatch_") for n in names)
    assert all(is_valid_png(p) for p in run_dir.glob("*.png"))


def test_paper_ranks_and_rounds_follow_the_protocol():
    assert paper.paper_ranks(0.01) == (1, 1, 1)
    assert paper.paper_ranks(0.04) == (6, 6, 4)
    assert paper.paper_ranks(0.07) == (11, 11, 7)
    assert paper.paper_ranks(0.07, num_hidden=3) == (11, 11, 11, 7)
    cfg = paper.PaperConfig()
    assert [paper.rounds_for(cfg, e) for e in (1, 2, 3, 5, 10)] == [300, 150, 100, 60, 30]
    # The authors' loop is range(training_rounds + 1), round 0 training: 301 at E = 1, 31 at E = 10.
    authors = paper.get_config("paper")
    assert (authors.protocol, authors.seeds, authors.max_test) == ("paper", 1, 0)
    assert [paper.rounds_for(authors, e) for e in (1, 2, 3, 5, 10)] == [301, 151, 101, 61, 31]
    # Their normalization on their data sets; digits (not in the paper) is standardized.
    assert authors.normalization == "paper"
    assert paper.normalization_for(authors, "fashion_mnist") == "paper"
    assert paper.normalization_for(authors, "digits") == "standardize"
    for c in (cfg, authors, dataclasses.replace(cfg, normalization="none")):
        assert paper.run_name(c).startswith(f"paper-fashion_mnist-{c.protocol}-{c.normalization}-")


@pytest.mark.parametrize("rounds_per_dispatch", [1, 2])
def test_a_cell_killed_mid_run_resumes_from_its_checkpoint_with_the_same_numbers(
    tmp_path, monkeypatch, rounds_per_dispatch
):
    # One round per dispatch goes through abo_jax.run (checkpoint every round here); two through
    # train_in_chunks (checkpoint every chunk). Killed once two rounds are stored, then resumed.
    cfg = get_quick_config()
    cell = next(c for c in paper.make_cells(cfg) if c["op"] == "sp" and c["rounds"] == 3)
    cache = paper._DataCache(cfg)
    run_cell = functools.partial(paper._run_cell, rounds_per_dispatch=rounds_per_dispatch)
    whole = run_cell(cell, cache, False, tmp_path / "whole")

    monkeypatch.setattr(paper, "CHECKPOINT_EVERY", 1)

    def kill_after_two_rounds(done):
        if done == 2:
            raise KeyboardInterrupt("killed")

    folder = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, cache, False, folder, on_rounds=kill_after_two_rounds)
    assert len(list((folder / "partial").glob("*.ckpt"))) == 1
    resumed = run_cell(cell, cache, False, folder)
    assert not list((folder / "partial").glob("*.ckpt"))  # removed once the cell is done
    np.testing.assert_array_equal(resumed["curves"]["test_acc"], whole["curves"]["test_acc"])
    for term in paper.MISMATCH_TERMS:
        np.testing.assert_array_equal(resumed["metrics"][term], whole["metrics"][term])


def test_paper_cell_on_two_host_devices_gives_the_one_device_numbers(tmp_path, run_module):
    # One cell (SP, delta 0.07, E = 1, theory.round_metrics recorded) of the quick grid with its
    # clients sharded over 2 CPU devices of one process, and over 2 processes of one device each
    # (JAX's distributed runtime on 127.0.0.1: python -m abo_jax.launch, bounded in time),
    # against one device; each in a subprocess (the device count must be set before JAX starts,
    # and all then run with the same JAX settings).
    import dataclasses
    import json

    from experiments.common.io import config_hash

    argv = ["--quick", "--operators", "sp", "--deltas", "0.07", "--epochs", "1"]
    argv += ["--progress", "false"]

    def cell_record(devices: int, processes: int = 1) -> dict:  # the same JAX settings for all
        out = tmp_path / f"devices_{devices}_processes_{processes}"
        if processes == 1:
            run_module(
                "experiments.paper", *argv, "--host-devices", str(devices), "--out", str(out)
            )
        else:  # the launcher's hard time limit ends a stuck rank
            launch = ["--processes", str(processes), "--devices-per-process", "1", "--timeout"]
            run_module("abo_jax.launch", *launch, "300", "--", sys.executable, "-m",
                       "experiments.paper", *argv, "--out", str(out))  # fmt: skip
        (cell,) = out.glob("*/cells/*.json")
        assert not list(out.glob("*/partial/*"))  # process 0 removed the finished cell's checkpoint
        return json.loads(cell.read_text())

    a, b, c = cell_record(1), cell_record(2), cell_record(1, processes=2)
    assert a["cell"] == b["cell"] and (a["result"]["devices"], b["result"]["devices"]) == (1, 2)
    # 2 processes x 1 device: the program of 1 process x 2 devices, collectives across processes
    assert c["cell"] == b["cell"] and (c["result"]["devices"], c["result"]["processes"]) == (2, 2)
    for key in ("train_loss", "test_loss", "test_acc"):
        np.testing.assert_allclose(
            c["result"]["curves"][key], b["result"]["curves"][key], rtol=1e-6, atol=1e-7
        )
    for term in paper.MISMATCH_TERMS:
        got, want = np.asarray(c["result"]["metrics"][term]), b["result"]["metrics"][term]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.max(np.abs(want)))
    max_test = get_quick_config().max_test
    for other in (b, c):  # against one device: float32 sums in another order, nothing more
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(
                other["result"]["curves"][key], a["result"]["curves"][key], atol=1e-5
            )
        acc_a, acc = np.asarray(a["result"]["curves"]["test_acc"]), other["result"]["curves"]
        assert np.max(np.abs(acc_a - np.asarray(acc["test_acc"]))) <= 100.0 / max_test  # 1 flip

    # The device count names its own results folder; the speed-only options do not.
    cfg = get_quick_config()
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress", "curve_cells", "level", *paper._SPEED_FIELDS):
        fields.pop(k)
    assert paper.run_name(cfg) == f"paper-digits-project-standardize-{config_hash(fields)}"
    assert paper.run_name(dataclasses.replace(cfg, host_devices=2)) != paper.run_name(cfg)
    assert paper.run_name(dataclasses.replace(cfg, rounds_per_dispatch=7)) == paper.run_name(cfg)


def test_chunked_rounds_match_one_dispatch_per_round(tmp_path):
    # rounds_per_dispatch > 1 runs rounds and evaluations in one jitted loop: the numbers of
    # abo_jax.run's loop up to float32 order (resuming a chunked cell: the test above).
    cfg = get_quick_config()
    cell = next(c for c in paper.make_cells(cfg) if c["op"] == "ps" and c["rounds"] == 3)
    cache = paper._DataCache(cfg)
    loop = paper._run_cell(cell, cache, False, tmp_path / "loop", rounds_per_dispatch=1)
    chunked = paper._run_cell(cell, cache, False, tmp_path / "chunked", rounds_per_dispatch=2)
    assert chunked["rounds_per_dispatch"] == 2
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(chunked["curves"][key], loop["curves"][key], rtol=1e-4)
    flips = np.abs(np.asarray(chunked["curves"]["test_acc"]) - loop["curves"]["test_acc"])
    assert np.max(flips) <= 100.0 / cfg.max_test  # at most one test example may flip
    for term in paper.MISMATCH_TERMS:
        np.testing.assert_allclose(chunked["metrics"][term], loop["metrics"][term], rtol=1e-3)


def test_statistics_and_report_rows_name_their_protocol():
    acc = np.array([[10.0, 50.0, 40.0, 30.0], [20.0, 20.0, 60.0, 70.0]])  # (seeds, rounds)
    result = {
        "ranks": [1, 1, 1],
        "best_acc": acc.max(axis=1),
        "final_acc": acc[:, -1],
        "curves": {"test_acc": acc},
        "seconds_per_round": 1.0,
    }
    cell = {"dataset": "digits", "op": "sp", "delta": 0.01, "E": 1, "rounds": 4}
    cell["normalization"] = "standardize"
    stats = paper._statistics(result, last_k=2)
    np.testing.assert_allclose(stats["lastk_acc"], [35.0, 65.0])
    np.testing.assert_allclose(paper._statistics(result, last_k=10)["lastk_acc"], [32.5, 42.5])
    (row,) = paper.summarize([{"cell": cell, "result": result}], protocol="paper", last_k=2)
    assert (row["protocol"], row["normalization"], row["last_k"], row["seeds"]) == (
        "paper",
        "standardize",
        2,
        2,
    )
    assert row["best_mean"] == 60.0 and row["final_mean"] == 50.0 and row["lastk_mean"] == 50.0
    assert row["lastk_lo"] < 50.0 < row["lastk_hi"]


def test_mismatch_terms_are_recorded_only_where_asked():
    cfg = dataclasses.replace(get_quick_config(), curve_cells="1:0.07")
    by_mode = {
        mode: {(c["E"], c["delta"]): c["mismatch"] for c in paper.make_cells(cfg_)}
        for mode, cfg_ in (
            (m, dataclasses.replace(cfg, mismatch=m)) for m in ("curves", "all", "none")
        )
    }
    assert by_mode["curves"] == {
        (1, 0.01): False,
        (2, 0.01): False,
        (1, 0.07): True,
        (2, 0.07): False,
    }
    assert all(by_mode["all"].values()) and not any(by_mode["none"].values())


def test_bad_options_are_usage_errors_before_any_work(tmp_path, capsys):
    for bad, option in (
        (["--epochs", "0"], "--epochs"),
        (["--datasets", "cifar10"], "--datasets"),
        (["--seeds", "0"], "--seeds"),
        (["--deltas", "0"], "--deltas"),
        (["--protocol", "authors"], "--protocol"),
        (["--normalization", "zca"], "--normalization"),
        (["--protocol", "paper", "--max-test", "100"], "--max-test"),
    ):
        try:
            paper.main([*bad, "--out", str(tmp_path), "--progress", "false"])
            raise AssertionError(f"{bad} should be refused")
        except SystemExit as exit_:
            assert exit_.code == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_chunked_training_refuses_fewer_rounds_than_its_checkpoint_holds(tmp_path):
    cfg = get_quick_config()
    cell = next(c for c in paper.make_cells(cfg) if c["op"] == "ps" and c["rounds"] == 3)
    data, tx, ty, classes = paper._DataCache(cfg).get(cell["dataset"])
    sim = paper.make_cell_simulation(cell, data.x.shape[-1], classes)
    keys = jax.random.split(jax.random.key(0), cell["seeds"])
    path = tmp_path / "cell.ckpt"
    kw = dict(key=keys, chunk=2, checkpoint_path=path)
    whole = paper.train_in_chunks(sim, data, (tx, ty), rounds=3, **kw)
    assert whole["round"].tolist() == [1, 2, 3]
    with pytest.raises(CheckpointError, match="holds 3 rounds, more than rounds=2"):
        paper.train_in_chunks(sim, data, (tx, ty), rounds=2, **kw)
