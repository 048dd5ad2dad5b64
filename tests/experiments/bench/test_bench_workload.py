"""The round under test and its baselines: closed forms, and the loops computing the round's maths."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax
from experiments.bench import common
from experiments.bench import workload as W

SPEC = dataclasses.replace(W.TINY, clients=4, samples=20)


def test_round_flops_closed_form():
    # One layer (d, k) = (3, 5), rank 2, 1 client, 4 samples, batch 2, one epoch: first layer only,
    # so unavoidable = LoRA forward 2r(k+d) + backward 4dr + 2rk per sample-step, plus aggregation.
    spec = W.RoundSpec(sizes=(5, 3), ranks=(2,), clients=1, samples=4, batch=2)
    d, k, r = 3, 5, 2
    per = 2 * r * (k + d) + 4 * d * r + 2 * r * k
    agg = 2 * 1 * (r * (d + k) + d)
    flops = W.round_flops(spec)
    assert flops["unavoidable"] == 4 * per + agg
    assert flops["naive"] == 4 * (per + 2 * d * k) + agg
    assert flops["first_once"] == 2 * d * k * 4
    # A hidden layer adds its frozen forward and the backward to its input: 2dk + 2dk + 2rk.
    two = W.RoundSpec(sizes=(5, 3, 2), ranks=(2, 1), clients=1, samples=4, batch=2)
    extra = 2 * 2 * 3 + 2 * 1 * (3 + 2) + 4 * 2 * 1 + 2 * 1 * 3 + 2 * 2 * 3 + 2 * 1 * 3
    assert W.round_flops(two)["per_sample_step_unavoidable"] == per + extra


@pytest.mark.parametrize("n, valid_rows", [(7, 7), (7, 4), (6, 6)])
def test_in_order_batches_closed_form(n, valid_rows):
    mask = jnp.arange(n) < valid_rows
    idx, valid = W.in_order_batches(jax.random.key(0), mask, 3)
    want = np.arange(3 * -(-n // 3)).reshape(-1, 3)
    np.testing.assert_array_equal(np.asarray(valid), want < valid_rows)
    np.testing.assert_array_equal(np.asarray(idx), np.where(want < valid_rows, want, 0))


def test_loop_a_computes_the_rounds_maths():
    # With in-order batches neither depends on the keys, so (a) must give the round's global model.
    in_order = functools.partial(abo_jax.client_update, batches_fn=W.in_order_batches)
    s = W.setup(SPEC, client_update=in_order)
    loop_update, loop_step, server = W.loops(SPEC, s)
    ours = s.global_model(s.compiled()[0]()[0])
    assert common.max_abs_diff(loop_update(), ours) < 1e-6
    # The server step alone on the unchanged starts gives the start back (PS of equal clients).
    start = s.global_model(s.state)
    copies = jax.tree.map(lambda v: jnp.broadcast_to(v, (SPEC.clients, *v.shape)), start)
    assert common.max_abs_diff(server(copies), start) < 1e-6
    # (b) moves the model as much as the round does (same data, other shuffles).
    moved = common.max_abs_diff(ours, start)
    assert 0.1 * moved < common.max_abs_diff(loop_step(), start) < 10 * moved


def test_client_groups_and_scan_are_the_same_round():
    data = W.make_data(SPEC)
    plain = W.setup(SPEC, data)
    new_state, _ = plain.compiled()[0]()
    grouped = W.setup(SPEC, data, client_chunk=3).compiled()[0]()[0]
    assert common.max_abs_diff(plain.global_model(grouped), plain.global_model(new_state)) < 1e-6
    twice = plain.rnd.apply(new_state, plain.data, plain.inputs)[0]
    scanned, metrics = plain.scanned(2)[0]()
    assert metrics["train_loss"].shape == (2,)
    assert common.max_abs_diff(plain.global_model(scanned), plain.global_model(twice)) < 1e-6
