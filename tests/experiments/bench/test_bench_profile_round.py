"""The per-op profile: HLO parsing against closed forms, and the --quick run's bookkeeping."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import profile_round


def compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def only_dot(ops):
    (dot,) = [o for o in ops.values() if o["op"] == "dot"]
    return dot


def test_hlo_ops_counts_dot_flops_and_tells_large_from_skinny_products():
    x = jnp.ones((64, 40), jnp.float32)
    w = jnp.ones((40, 32), jnp.float32)
    dot = only_dot(profile_round.hlo_ops(compiled_text(lambda a, b: a @ b, x, w)))
    assert dot["kind"] == "dot, large" and dot["flops"] == 2 * 64 * 40 * 32

    xs = jnp.ones((4, 64, 40), jnp.float32)  # per-client products with a rank-8 side
    a = jnp.ones((4, 8, 40), jnp.float32)
    dot = only_dot(profile_round.hlo_ops(compiled_text(jax.vmap(lambda u, v: u @ v.T), xs, a)))
    assert dot["kind"] == "dot, skinny" and dot["flops"] == 4 * 2 * 64 * 40 * 8

    ws = jnp.ones((4, 40, 32), jnp.float32)  # batched, but every side > 16: large
    dot = only_dot(profile_round.hlo_ops(compiled_text(jax.vmap(lambda u, v: u @ v), xs, ws)))
    assert dot["kind"] == "dot, large" and dot["flops"] == 4 * 2 * 64 * 40 * 32


def test_hlo_ops_classifies_sorts():
    keys = jnp.arange(10, dtype=jnp.float32)[::-1]
    ops = profile_round.hlo_ops(compiled_text(lambda k: jnp.sort(k) * 2.0, keys))
    assert {o["kind"] for o in ops.values() if o["op"] == "sort"} == {"sort"}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="op names as XLA:CPU records them")
def test_profile_ops_counts_executions_inside_a_loop():
    def body(c, _):
        return c @ c * 0.5, None

    x = jnp.eye(8, dtype=jnp.float32)
    fn = jax.jit(lambda a: jax.lax.scan(body, a, None, length=7)[0])
    jax.block_until_ready(fn(x))
    names = profile_round.hlo_ops(fn.lower(x).compile().as_text())
    per_op = profile_round.profile_ops(lambda: fn(x), calls=2)
    dot_runs = [n for name, (_, n) in per_op.items() if names.get(name, {}).get("op") == "dot"]
    assert dot_runs == [pytest.approx(7.0)]  # once per iteration, per call


def test_hlo_ops_keeps_what_it_takes_to_run_the_dot_again():
    a = jnp.ones((4, 6, 5), jnp.float32)
    b = jnp.ones((4, 3, 5), jnp.float32)
    fn = jax.vmap(lambda x, y: x @ y.T)
    (dot,) = [o["dot"] for o in profile_round.hlo_ops(compiled_text(fn, a, b)).values() if o["dot"]]
    out = jax.lax.dot_general(jnp.ones(dot["lhs"]), jnp.ones(dot["rhs"]), dot["dimension_numbers"])
    assert dot["dtype"] == "f32" and out.shape == (4, 6, 3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="op names as XLA:CPU records them")
def test_dots_alone_runs_each_dot_as_often_as_asked_not_hoisted():
    # Big enough that XLA:CPU runs the loop op by op (tiny loops become one kernel, no events).
    dims = (((1,), (0,)), ((), ()))
    dot = {"dtype": "f32", "lhs": (64, 256), "rhs": (256, 128), "dimension_numbers": dims}
    thunk = profile_round.dots_alone([(dot, 7)])
    (products,) = thunk()
    assert [p.shape for p in products] == [(64, 128)]
    profile = profile_round.profile_ops(thunk, calls=2)
    runs = [n for name, (_, n) in profile.items() if name.startswith("dot")]
    assert runs == [pytest.approx(7.0)]  # seven products per call: the loop-invariant dot stays


def test_quick_run_writes_consistent_json(tmp_path):
    profile_round.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "profile_round.json").read_text())
    assert data["benchmark"] == "profile_round"
    (summary,) = data["summary"]
    assert summary["round_s"] > 0 and 0 < summary["dot_share"] < 1
    # The ceiling is the achieved fraction with the non-dot time removed: never below it.
    assert summary["dot_ceiling"] >= summary["frac_unavoidable"]
    assert summary["dots_alone_s"] > 0 and summary["dots_alone_ceiling"] > 0
    rows = data["rows"]
    assert {r["kind"] for r in rows} <= set(profile_round.KINDS)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    dots = [r for r in rows if r["kind"].startswith("dot")]
    assert dots and all(r["gflops"] > 0 for r in dots)
    assert sum(r["share"] for r in dots) == pytest.approx(summary["dot_share"])


def test_quick_run_on_two_host_devices_profiles_the_sharded_round_too(tmp_path, run_module):
    run_module(
        "experiments.bench.profile_round", "--quick", "--host-devices", "2", "--out", str(tmp_path)
    )
    data = json.loads((tmp_path / "profile_round.json").read_text())
    sharded = [s for s in data["summary"] if s["workload"] == "tiny, 2 devices"]
    assert len(sharded) == 1 and sharded[0]["dots_alone_s"] > 0
    rows = [r for r in data["rows"] if r["workload"] == "tiny, 2 devices"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert any(r["kind"] == "collective" for r in rows)  # the round's all-reduce over devices
