"""EXPERIMENT ONLY: patched copies of abo_jax hot paths, to measure proposed changes side by side.

Nothing here is used by the benchmarks' headline figures. :func:`client_update_variant` is a copy of
``abo_jax.simulation.client.client_update`` (same maths) with switches for the changes under study;
:func:`patched_round` swaps it into ``abo_jax.simulation.round`` only while the simulator's round is
traced and compiled, so the patched and the original rounds can be timed in one process.

Switches:
  unroll: ``jax.lax.scan(..., unroll=unroll)`` over the minibatch steps.
  pre_gather: gather the whole epoch's minibatches once per epoch (``(nb, bs, ...)``) and scan
    over them, instead of gathering ``bs`` rows inside every step.
  skip_select: drop the per-step ``where(nonempty, new, old)`` over parameters and optimizer state
    (valid only when no batch is fully masked, as with equal client sizes that fill every batch).

Run: ``python -m experiments.bench.experimental [--quick]`` prints the timings of each variant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from functools import partial

import jax
import jax.numpy as jnp
import optax

from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W


def client_update_variant(
    model,
    optimizer,
    frozen,
    trainable,
    inputs,
    labels,
    mask,
    key,
    *,
    local_epochs=1,
    batch_size=64,
    lora_scale=1.0,
    trainable_mask=None,
    opt_state=None,
    loss_fn=None,
    batches_fn=None,
    unroll: int = 1,
    pre_gather: bool = False,
    skip_select: bool = False,
):
    """A copy of ``abo_jax.client_update`` with the experiment's switches (see the module doc)."""
    from abo_jax.data import epoch_batches
    from abo_jax.simulation.client import ClientUpdate, _apply_mask, _select, masked_cross_entropy

    loss_fn = masked_cross_entropy if loss_fn is None else loss_fn
    batches_fn = epoch_batches if batches_fn is None else batches_fn
    if opt_state is None:
        opt_state = optimizer.init(trainable)

    def objective(params, batch_inputs, batch_labels, batch_mask):
        logits = model.apply(frozen, params, batch_inputs, lora_scale)
        return loss_fn(logits, batch_labels, batch_mask)

    grad_fn = jax.value_and_grad(objective)

    def update(carry, batch_inputs, batch_labels, valid):
        params, state = carry
        loss, grads = grad_fn(params, batch_inputs, batch_labels, valid)
        grads = _apply_mask(grads, trainable_mask)
        updates, new_state = optimizer.update(grads, state, params)
        updates = _apply_mask(updates, trainable_mask)
        new_params = optax.apply_updates(params, updates)
        nonempty = jnp.any(valid)
        if skip_select:
            return (new_params, new_state), (loss, nonempty)
        params, state = _select(nonempty, (new_params, new_state), (params, state))
        return (params, state), (loss, nonempty)

    def step(carry, batch):
        idx, valid = batch
        return update(carry, jax.tree.map(lambda v: v[idx], inputs), labels[idx], valid)

    def step_gathered(carry, batch):
        batch_inputs, batch_labels, valid = batch
        return update(carry, batch_inputs, batch_labels, valid)

    def epoch(carry, e):
        idx, valid = batches_fn(jax.random.fold_in(key, e), mask, batch_size)
        if pre_gather:
            xs = (jax.tree.map(lambda v: v[idx], inputs), labels[idx], valid)
            return jax.lax.scan(step_gathered, carry, xs, unroll=unroll)
        return jax.lax.scan(step, carry, (idx, valid), unroll=unroll)

    (params, opt_state), (losses, nonempty) = jax.lax.scan(
        epoch, (trainable, opt_state), jnp.arange(local_epochs)
    )
    count = jnp.sum(nonempty)
    mean_loss = jnp.sum(jnp.where(nonempty, losses, 0.0)) / jnp.maximum(count, 1)
    return ClientUpdate(params, opt_state, mean_loss, count.astype(jnp.int32))


@contextlib.contextmanager
def _swap_client_update(fn):
    import abo_jax.simulation.round as round_module

    original = round_module.client_update
    round_module.client_update = fn
    try:
        yield
    finally:
        round_module.client_update = original


def patched_round(spec: W.RoundSpec, problem: W.Problem, seed: int = 0, **switches):
    """The simulator's round compiled with :func:`client_update_variant` (``switches``).

    Returns:
      ``(compiled, args, compile_seconds)``.
    """
    *_, sim, state, data, inputs = R.sim_setup(spec, problem, seed=seed)
    with _swap_client_update(partial(client_update_variant, **switches)):
        compiled, compile_s = common.compile_timed(sim.round, state, data, inputs)
    return compiled, (state, data, inputs), compile_s


VARIANTS = {
    "original": None,
    "unroll=2": {"unroll": 2},
    "unroll=4": {"unroll": 4},
    "pre_gather": {"pre_gather": True},
    "skip_select": {"skip_select": True},
    "all(unroll=4,pre_gather,skip_select)": {
        "unroll": 4,
        "pre_gather": True,
        "skip_select": True,
    },
}


def main(argv: list[str] | None = None) -> dict:
    p = common.bench_parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--samples", type=int, default=1280)
    args = p.parse_args(argv)
    if args.quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
    else:
        spec = dataclasses.replace(W.RoundSpec(), clients=args.clients, samples=args.samples)
    problem = W.make_problem(spec)
    thunks, compile_s, outs = {}, {}, {}
    for name, switches in VARIANTS.items():
        if switches is None:
            h = R.make_harness(spec, problem, impl="sim")
            compiled, compile_s[name] = common.compile_timed(h.vmapped, *h.vmapped_args)
            run_args = h.vmapped_args
        else:
            compiled, run_args, compile_s[name] = patched_round(spec, problem, **switches)
        thunks[name] = lambda c=compiled, a=run_args: c(*a)
        outs[name] = jax.tree.map(lambda v: v[0], compiled(*run_args)[0].clients)
    mm_thunks, mm_flops = common.matmul_reference((1024, 2048))
    thunks.update(mm_thunks)
    t = common.time_interleaved(thunks, reps=args.reps or 5, warmup=1)
    peak = common.matmul_peak(t, mm_flops)["gflops"] * 1e9
    flops = W.round_flops(spec)["unavoidable"]
    rows = [
        {
            "variant": name,
            "round_s": t[name].median_s,
            "speedup": t["original"].median_s / t[name].median_s,
            "frac_unavoidable": flops / t[name].median_s / peak,
            "max_abs_diff_vs_original": R.max_abs_diff(outs["original"], outs[name]),
            "compile_s": compile_s[name],
        }
        for name in VARIANTS
    ]
    columns = [
        ("variant", "variant", None),
        ("round_s", "round [s]", ".3g"),
        ("speedup", "vs original", ".2f"),
        ("frac_unavoidable", "unavoid./matmul", ".2f"),
        ("max_abs_diff_vs_original", "max |diff|", ".1e"),
        ("compile_s", "compile [s]", ".1f"),
    ]
    env = common.env_info()
    common.print_report(
        "EXPERIMENT: patched client_update variants",
        dataclasses.asdict(spec),
        env,
        common.format_table(rows, columns),
    )
    out = {"benchmark": "experimental", "quick": args.quick, "spec": spec, "env": env, "rows": rows}
    common.write_json(args.out / "experimental.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
