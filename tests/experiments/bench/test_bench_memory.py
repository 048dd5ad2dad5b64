"""Benchmark 5 (round memory vs m) runs in its --quick form and writes valid JSON."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

import abo_jax
from experiments.bench import memory, workload


def test_quick_run_writes_json(tmp_path):
    memory.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "memory.json").read_text())
    assert data["benchmark"] == "memory"
    config = memory.get_config(quick=True)
    rounds = [r for r in data["rows"] if r["variant"] == "abo-jax round"]
    assert [r["m"] for r in rounds] == list(config.clients)
    # More clients hold more data and factors, so the planned peak grows with m.
    assert rounds[-1]["peak_bytes"] > rounds[0]["peak_bytes"] > 0
    assert all(s["bytes_per_client"] > 0 for s in data["summary"])
    # Donating the state lets XLA write the next state over it: a smaller planned peak.
    donated = [r for r in data["rows"] if r["variant"] == "abo-jax round, donate_state"]
    assert [r["m"] for r in donated] == list(config.clients)
    assert all(d["alias_bytes"] > 0 for d in donated)
    assert all(d["peak_bytes"] < r["peak_bytes"] for d, r in zip(donated, rounds, strict=True))
    grouped = [r for r in data["rows"] if r["variant"].endswith("client_chunk=1")]
    assert [r["m"] for r in grouped] == list(config.clients)


def test_client_groups_hold_fewer_temporaries():
    # 64 clients whose activations (batch 10 x 256 hidden) outweigh what grouping copies: in groups
    # of 8, XLA plans a fraction of the temporaries of all 64 at once (measured 1.12 MB vs 4.16 MB).
    spec = dataclasses.replace(workload.TINY, sizes=(64, 256, 10), clients=64)
    plain = memory.planned_memory(spec, donate=True)
    grouped = memory.planned_memory(spec, donate=True, client_chunk=8)
    assert grouped["argument_bytes"] == plain["argument_bytes"]
    assert grouped["temp_bytes"] < 0.5 * plain["temp_bytes"]


def test_the_merged_contrast_is_the_same_model_and_costs_a_matrix_per_client():
    spec = dataclasses.replace(workload.TINY, clients=2)
    model, merged = workload.model_of(spec), memory.merged_model(spec)
    frozen, trainable = model.init(jax.random.key(0))
    trainable = trainable._replace(
        lora=jax.tree.map(
            lambda f: f._replace(b=f.b + 0.1), trainable.lora, is_leaf=abo_jax.is_lora
        )
    )
    x = jax.random.normal(jax.random.key(1), (5, 64), jnp.float32)
    ours = model.apply(frozen, trainable, model.prepare(frozen, x), 0.5)
    theirs = merged.apply(frozen, trainable, merged.prepare(frozen, x), 0.5)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    spec = dataclasses.replace(spec, clients=16)
    factored = memory.planned_memory(spec)["temp_bytes"]
    dense = memory.planned_memory(spec, model=merged)["temp_bytes"]
    assert dense > factored  # (m, d, k) merged weights live at once
