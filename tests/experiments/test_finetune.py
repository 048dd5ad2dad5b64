"""experiments.finetune: the --quick form on a fixture corpus, its outputs, resumption, usage."""

import importlib.util

import numpy as np
import pytest

from experiments.common.grid import load_cells
from experiments.common.io import read_csv
from experiments.common.plotting import is_valid_png
from experiments.finetune.config import get_config, get_quick_config
from experiments.finetune.run import MISMATCH, main

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="MiniLM weights not installed (make minilm)",
)

WORDS = {
    "astro": "star planet orbit comet galaxy telescope moon",
    "cook": "bread butter oven recipe salt flour soup",
    "code": "compiler bug kernel python stack linker byte",
    "sea": "ship sail wave harbor anchor tide island",
}


@pytest.fixture
def corpus(tmp_path):
    """Four topics of 30 short texts each, drawn from disjoint vocabularies."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fortunes"
    d.mkdir()
    for topic, words in WORDS.items():
        vocab = words.split()
        texts = [" ".join(rng.choice(vocab, size=6)) + f" {i}" for i in range(30)]
        (d / topic).write_text("\n%\n".join(texts) + "\n%\n")
    return d


@needs_minilm
def test_quick_runs_writes_outputs_and_resumes(corpus, tmp_path):
    common = ["--quick", "--rounds", "2", "--max-test", "32", "--data-dir", str(corpus)]
    common += ["--out", str(tmp_path / "out"), "--name", "quick", "--progress", "false"]
    first = main([*common, "--operators", "product_sum"])
    assert first["counts"] == {"run": 1, "skipped": 0}
    # one more operator in the same folder: the finished cell is resumed, not run again
    args = [*common, "--operators", "sum_product,product_sum"]
    second = main(args)
    assert second["counts"] == {"run": 1, "skipped": 1}
    assert second["rows"][1] == first["rows"][0]
    folder = second["folder"]
    for name in ("config.json", "summary.json", "curves.json", "table.csv"):
        assert (folder / name).is_file()
    for plot in ("accuracy.png", "bytes.png", "mismatch.png", "finetune.png"):
        assert is_valid_png(folder / plot)
    rows = read_csv(folder / "table.csv")
    assert [r["operator"] for r in rows] == ["sum_product", "product_sum"]
    assert not list((folder / "partial").glob("*.ckpt"))  # finished cells leave no checkpoint
    cfg = get_quick_config()
    for rec in second["records"]:
        res = rec["result"]
        acc = np.asarray(res["curves"]["test_acc"])
        assert acc.shape == (cfg.seeds, 2)  # (seeds, rounds)
        assert np.all((acc >= 0) & (acc <= 100))
        np.testing.assert_allclose(res["final_acc"], acc[:, -1])
        for key in MISMATCH:
            values = np.asarray(res["mismatch"][key])
            assert values.shape == (cfg.seeds, 2)
            assert np.all(np.isfinite(values)) and np.all(values >= 0)
        # bytes per client per round: LoRA r=4 on query and value (384 x 384) of one layer,
        # plus the head (4 x 384 + 4), float32; SP and PS send and receive exactly that
        expected = 4 * (2 * 4 * (384 + 384) + 4 * 384 + 4)
        assert res["bytes_up_per_client"] == expected
        assert res["bytes_down_per_client"] == expected
        assert res["head_bytes"] == 4 * (4 * 384 + 4)
    # round 1 trains the same clients under both operators (same seeds, same start); on those
    # factors SP is the best rank-r broadcast for R_w (DESIGN.md identity 3): R_w(SP) <= R_w(PS)
    sp, ps = (np.asarray(r["result"]["mismatch"]["weak_mismatch"]) for r in second["records"])
    assert np.all(sp[:, 0] <= ps[:, 0] * (1 + 1e-5))
    assert np.all(sp[:, 0] < ps[:, 0])  # strictly: 4 clients of rank 4 give Zbar rank > 4
    # everything finished: a third run computes nothing and gives the same table
    third = main(args)
    assert third["counts"] == {"run": 0, "skipped": 2}
    assert third["rows"] == second["rows"]
    assert load_cells(folder / "cells")


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(get_config()):
        assert "--" + f.name.replace("_", "-") in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--operators", "sum_product,fedavg_full"], "not run by this study yet"),
        (["--operators", "sp"], "unknown"),
        (["--partition", "one_topic", "--num-clients", "7"], "multiple of num_topics"),
        (["--lora-layers", "3", "--num-layers", "2"], "at most num_layers"),
        (["--optimizer", "lion"], "adamw, sgd"),
    ],
)
def test_bad_options_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2
    assert message in capsys.readouterr().err
