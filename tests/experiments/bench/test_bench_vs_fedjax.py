"""Benchmark 8 (abo-jax vs FedJAX): FedJAX's unshuffled batch order, the equivalence check, --quick.

FedJAX is the ``fedjax`` extra that ``make`` installs with the others, so these tests run in CI.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax
from experiments.bench import common
from experiments.bench import vs_fedjax as V

# haiku (FedJAX's model library) calls a jax function that jax has deprecated since.
pytestmark = pytest.mark.filterwarnings(
    "ignore:jax.core.set_current_trace is deprecated:DeprecationWarning"
)


def fedjax_order(n: int, n_max: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``shuffle_repeat_batch(skip_shuffle=True, num_epochs=1)`` written out: rows 0..n-1 in order,
    the last batch filled from row 0 on, then empty steps up to ``ceil(n_max / batch)``."""
    steps, fixed = -(-n // batch), -(-n_max // batch)
    idx = np.zeros((fixed, batch), np.int64)
    valid = np.zeros((fixed, batch), bool)
    flat = [j % n for j in range(steps * batch)]
    idx[:steps] = np.reshape(flat, (steps, batch))
    valid[:steps] = True
    return idx, valid


@pytest.mark.parametrize("n, n_max, batch", [(12, 12, 5), (7, 12, 5), (10, 10, 10), (1, 4, 3)])
def test_repeat_batches_is_fedjax_order(n, n_max, batch):
    mask = jnp.arange(n_max) < n
    idx, valid = V.repeat_batches(jax.random.key(0), mask, batch)
    want_idx, want_valid = fedjax_order(n, n_max, batch)
    np.testing.assert_array_equal(np.asarray(valid), want_valid)
    np.testing.assert_array_equal(np.where(want_valid, np.asarray(idx), 0), want_idx)


def test_fedjax_batches_are_the_order_written_out():
    fedjax = V.import_fedjax()
    x = np.arange(7, dtype=np.float32)[:, None]
    cds = fedjax.ClientDataset({"x": x})
    hparams = fedjax.ShuffleRepeatBatchHParams(batch_size=3, num_epochs=1, skip_shuffle=True)
    got = [b["x"][:, 0].astype(int).tolist() for b in cds.shuffle_repeat_batch(hparams)]
    idx, _ = fedjax_order(7, 7, 3)
    assert got == idx.tolist()


def test_equivalence_check_holds_and_fails_on_another_order():
    config = V.get_config(quick=True)
    w = V.TINY
    x, y = V.client_arrays(w, seed=0)
    check = V.check_equivalence(V.import_fedjax(), w, x, y, config, devices=1)
    assert check["same_steps"] and check["steps_per_client"] == -(-w.samples // w.batch)
    assert check["max_abs_diff"] <= config.tolerance
    # The same comparison with FedJAX's shuffled order must not pass: the check can fail.
    data = V.client_data(x, y)
    rnd, state, data, inputs, model = V.abo_round(
        w,
        data,
        config=config,
        client_update=functools.partial(abo_jax.client_update, batches_fn=V.repeat_batches),
    )
    start = V.global_params(state, model)
    shuffled = V.FedJaxRound(
        V.import_fedjax(),
        w,
        x,
        y,
        V.to_haiku(start),
        lr=config.lr,
        momentum=config.momentum,
        shuffle=True,
        devices=1,
    )
    ours = V.global_params(rnd.apply(state, data, inputs)[0], model)
    assert common.max_abs_diff(V.from_haiku(shuffled().params), ours) > 100 * config.tolerance


def test_quick_run_writes_json(tmp_path):
    V.main(["--quick", "--out", str(tmp_path), "--reps", "1"])
    data = json.loads((tmp_path / "vs_fedjax.json").read_text())
    assert data["benchmark"] == "vs_fedjax" and "skipped" not in data
    variants = {r["variant"] for r in data["rows"]}
    assert {"fedjax", "abo-jax full (default)", "abo-jax full, vmap"} <= variants
    assert {"abo-jax LoRA (PS)", "abo-jax full, per-client loop"} <= variants
    for row in data["rows"]:
        assert row["median_s"] > 0 and row["fedjax_over_this"] > 0
        assert row["equivalence"]["max_abs_diff"] <= data["config"]["tolerance"]
