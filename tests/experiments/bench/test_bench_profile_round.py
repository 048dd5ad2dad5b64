"""The per-op profile: HLO parsing against closed forms, and the --quick run's bookkeeping."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import profile_round


def compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_hlo_ops_counts_dot_flops_and_tells_shared_from_batched_dots():
    x = jnp.ones((6, 5), jnp.float32)
    w = jnp.ones((5, 3), jnp.float32)
    ops = profile_round.hlo_ops(compiled_text(lambda a, b: a @ b, x, w))
    dots = [o for o in ops.values() if o["op"] == "dot"]
    assert len(dots) == 1
    assert dots[0]["kind"] == "dot, shared operand" and dots[0]["flops"] == 2 * 6 * 5 * 3

    xs = jnp.ones((4, 6, 5), jnp.float32)  # a per-client product: batch dims in the dot
    ws = jnp.ones((4, 5, 3), jnp.float32)
    ops = profile_round.hlo_ops(compiled_text(jax.vmap(lambda a, b: a @ b), xs, ws))
    dots = [o for o in ops.values() if o["op"] == "dot"]
    assert len(dots) == 1
    assert dots[0]["kind"] == "dot, per client" and dots[0]["flops"] == 4 * 2 * 6 * 5 * 3


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


def test_quick_run_writes_consistent_json(tmp_path):
    profile_round.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "profile_round.json").read_text())
    assert data["benchmark"] == "profile_round"
    (summary,) = data["summary"]
    assert summary["round_s"] > 0 and 0 < summary["dot_share"] < 1
    # The ceiling is the achieved fraction with the non-dot time removed: never below it.
    assert summary["dot_ceiling"] >= summary["frac_unavoidable"]
    rows = data["rows"]
    assert {r["kind"] for r in rows} <= set(profile_round.KINDS)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    dots = [r for r in rows if r["kind"].startswith("dot")]
    assert dots and all(r["gflops"] > 0 for r in dots)
    assert sum(r["share"] for r in dots) == pytest.approx(summary["dot_share"])
