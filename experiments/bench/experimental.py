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
  optimizer: ``fused_sgd`` (:func:`fused_paper_sgd`, the paper's SGD as one tree map) or
    ``ablation_plain_sgd`` (no momentum, no decay: other maths, to measure what they cost).

Two more suites (``--suite``):

* ``rounds``: the unpatched round driven differently, ``--rounds R`` rounds per timed call: a loop
  of ``R`` jitted calls (the baseline), the same with ``make_simulation(donate_state=True)``, one
  jitted ``lax.scan`` over the ``R`` rounds (no per-round dispatch; data and cached inputs as
  arguments, or closed over as constants of the executable), and the round compiled under
  ``jax.default_matmul_precision("highest")``; each checked against the baseline's state.
* ``products``: the per-client LoRA products of one layer (forward ``u = x A^T``, ``z = u B^T``
  and the backward ``dB = g^T u``, ``du = g B``, ``dA = du^T x``) written four ways: the client
  axis leading (what ``jax.vmap`` gives), the client axis second (batch-major), broadcast
  multiply-and-sum (no GEMM), and, for small ``m``, one dense product against every client's
  factors keeping the diagonal blocks (``m`` times the FLOPs; GFLOP/s count only the useful ones);
  and, as a yardstick for XLA:CPU's kernels, the same products by numpy's batched ``matmul``
  (``numpy_blas``: its BLAS, OpenBLAS in numpy's wheels; threads as ``OPENBLAS_NUM_THREADS``).

* ``svd``: the round with SP and ``theory.round_metrics`` (the paper experiment's cell: SVDs in the
  aggregation and the metrics), its CPU SVD through ``abo_jax.linalg``'s buffer callback (the
  library) and through the ``jax.pure_callback`` it replaced (swapped in while compiling only).

* ``shuffle``: the plain round with the epoch orders drawn by ``abo_jax.data._shuffle`` (the
  library: one-operand sorts, a cumulative-sum partition) and by the ``jax.random.permutation`` and
  stable ``jnp.argsort`` it replaced (swapped in while compiling only); the same orders, so the
  same numbers (``max_abs_diff_vs_first`` 0).

Run: ``python -m experiments.bench.experimental [--quick] [--suite S]``, ``S`` one of ``client``,
``rounds``, ``products``, ``svd``, ``shuffle``;
prints the timings of each variant and writes ``experimental[_<suite>].json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
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
    replace_optimizer: optax.GradientTransformation | None = None,
):
    """A copy of ``abo_jax.client_update`` with the experiment's switches (see the module doc)."""
    optimizer = optimizer if replace_optimizer is None else replace_optimizer
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


def fused_paper_sgd(learning_rate: float, momentum: float, weight_decay: float):
    """``paper_sgd``'s recursion as one map over the tree (same operations in the same order:
    ``buf = (g + wd p) + momentum buf``, ``update = buf * (-lr)``)."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, buf, params):
        buf = jax.tree.map(
            lambda g, b, p: (g + weight_decay * p) + momentum * b, grads, buf, params
        )
        return jax.tree.map(lambda b: b * -learning_rate, buf), buf

    return optax.GradientTransformation(init, update)


def _optimizer(spec: W.RoundSpec, name: str) -> optax.GradientTransformation:
    if name == "fused_sgd":
        return fused_paper_sgd(spec.lr, spec.momentum, spec.weight_decay)
    if name == "ablation_plain_sgd":  # NOT the same maths: what the optimizer's state costs
        return optax.sgd(spec.lr)
    raise ValueError(name)


def patched_round(spec: W.RoundSpec, problem: W.Problem, seed: int = 0, **switches):
    """The simulator's round compiled with :func:`client_update_variant` (``switches``).

    ``switches["optimizer"]``, if given, names a replacement local optimizer (``fused_sgd``, or
    ``ablation_plain_sgd``, which changes the maths and is only there to measure a cost).

    Returns:
      ``(compiled, args, compile_seconds)``.
    """
    if "optimizer" in switches:
        switches = dict(switches)
        switches["replace_optimizer"] = _optimizer(spec, switches.pop("optimizer"))
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
    "fused_sgd": {"optimizer": "fused_sgd"},
    "ablation_plain_sgd (other maths)": {"optimizer": "ablation_plain_sgd"},
}


def _spec(args) -> W.RoundSpec:
    if args.quick:
        return dataclasses.replace(W.TINY, clients=2, samples=40)
    if args.small_clients:
        return dataclasses.replace(W.SMALL_CLIENTS, clients=args.clients)
    return dataclasses.replace(W.RoundSpec(), clients=args.clients, samples=args.samples)


def suite_client(args, spec: W.RoundSpec):
    """The patched ``client_update`` variants (see the module doc), one round per call."""
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
    return thunks, compile_s, outs, 1


def suite_rounds(args, spec: W.RoundSpec):
    """``R`` rounds per call: jitted loop, donated loop, one scanned call, highest precision."""
    problem = W.make_problem(spec)
    n_rounds = args.rounds
    thunks, compile_s, outs = {}, {}, {}

    def loop(name, donate=False, precision=None):
        *_, sim, state, data, inputs = R.sim_setup(spec, problem, donate=donate)
        with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
            compiled, compile_s[name] = common.compile_timed(sim.round, state, data, inputs)
        held = {"state": state}

        def thunk():
            for _ in range(n_rounds):
                held["state"], metrics = compiled(held["state"], data, inputs)
            return held["state"], metrics

        return thunk

    def scanned(name, constants=False):
        *_, sim, state, data, inputs = R.sim_setup(spec, problem)

        def rounds(state, data, inputs):
            return jax.lax.scan(
                lambda s, _: sim.round_step(s, data, inputs), state, None, length=n_rounds
            )

        if constants:  # data and inputs folded into the executable as constants
            fn = jax.jit(lambda s: rounds(s, data, inputs))
            compiled, compile_s[name] = common.compile_timed(fn, state)
            call = compiled
        else:
            compiled, compile_s[name] = common.compile_timed(
                partial(sim.rounds, num_rounds=n_rounds), state, data, inputs
            )
            call = lambda s: compiled(s, data, inputs)  # noqa: E731
        held = {"state": state}

        def thunk():
            held["state"], metrics = call(held["state"])
            return held["state"], metrics

        return thunk

    thunks["loop of jitted rounds"] = loop("loop of jitted rounds")
    thunks["loop, donate_state"] = loop("loop, donate_state", donate=True)
    thunks["sim.rounds (lax.scan over rounds)"] = scanned("sim.rounds (lax.scan over rounds)")
    thunks["lax.scan, data as constants"] = scanned("lax.scan, data as constants", constants=True)
    thunks["precision highest"] = loop("precision highest", precision="highest")
    for name, thunk in thunks.items():  # R rounds from the same start: the states must agree
        outs[name] = jax.tree.map(np.asarray, thunk()[0].clients)
    return thunks, compile_s, outs, n_rounds


@contextlib.contextmanager
def _pure_callback_svd():
    """``abo_jax.linalg``'s CPU SVD as it was before the buffer callback (``jax.pure_callback``),
    for tracing inside this block only (no derivative: the round takes none)."""
    import abo_jax.linalg as linalg

    def svd_pure(x):
        n, p = x.shape[-2:]
        q = min(n, p)
        spec = lambda *shape: jax.ShapeDtypeStruct(x.shape[:-2] + shape, x.dtype)  # noqa: E731
        shapes = (spec(n, q), spec(q), spec(q, p))
        return jax.pure_callback(linalg._host_svd, shapes, x, vmap_method="expand_dims")

    original = linalg._svd
    linalg._svd = svd_pure
    try:
        yield
    finally:
        linalg._svd = original


def suite_svd(args, spec: W.RoundSpec):
    """SP with ``theory.round_metrics``: the library's buffer-callback SVD vs ``pure_callback``."""
    import abo_jax
    from theory import round_metrics

    problem = W.make_problem(spec)
    model, opt, _ = R.sim_parts(spec)
    sim = abo_jax.make_simulation(
        model,
        abo_jax.sum_product(),
        optimizer=opt,
        local_epochs=spec.epochs,
        batch_size=spec.batch,
        metrics_fn=round_metrics,
    )
    data = R.client_data(problem)
    state = sim.init(jax.random.key(0), data)
    return _swapped_rounds(
        sim,
        state,
        data,
        sim.prepare(state, data),
        (
            ("buffer_callback (abo_jax.linalg)", contextlib.nullcontext),
            ("pure_callback (before)", _pure_callback_svd),
        ),
    )


@contextlib.contextmanager
def _xla_sort_shuffle():
    """``epoch_batches`` as it was before ``abo_jax.data._shuffle``: ``jax.random.permutation``
    and a stable ``jnp.argsort`` (XLA key-value sorts), for tracing inside this block only."""
    from abo_jax.data import _padding

    original = _padding.permutation, _padding.stable_partition
    _padding.permutation = jax.random.permutation
    _padding.stable_partition = lambda flags: jnp.argsort(jnp.logical_not(flags), stable=True)
    _padding.epoch_batches.clear_cache()  # it is jitted: trace it again under the swap
    try:
        yield
    finally:
        _padding.permutation, _padding.stable_partition = original
        _padding.epoch_batches.clear_cache()


def _swapped_rounds(sim, state, data, inputs, variants):
    """``sim``'s round compiled once per ``(name, context)``, traced inside the context; the
    outputs compared are the clients' new state and the round's metrics."""
    thunks, compile_s, outs = {}, {}, {}
    for name, ctx in variants:
        with ctx():  # a fresh jit of the same function: traced again under the swap
            fn = jax.jit(lambda s, d, i: sim.round_step(s, d, i))
            compiled, compile_s[name] = common.compile_timed(fn, state, data, inputs)
        thunks[name] = lambda c=compiled: c(state, data, inputs)
        new_state, metrics = compiled(state, data, inputs)
        outs[name] = jax.tree.map(lambda v: np.asarray(v, float), (new_state.clients, metrics))
    return thunks, compile_s, outs, 1


def suite_shuffle(args, spec: W.RoundSpec):
    """The plain round, epoch orders from ``abo_jax.data._shuffle`` vs XLA's key-value sorts."""
    *_, sim, state, data, inputs = R.sim_setup(spec, W.make_problem(spec))
    return _swapped_rounds(
        sim,
        state,
        data,
        inputs,
        (
            ("one-operand sorts (abo_jax.data._shuffle)", contextlib.nullcontext),
            ("key-value sorts (before)", _xla_sort_shuffle),
        ),
    )


def lora_products(layout: str, m: int):
    """One layer's per-client LoRA products (see the module doc) in ``layout``."""
    idx = jnp.arange(m)

    def diag(t):  # (m, b, m, r) -> (m, b, r): each client against its own factors
        return t[idx, :, idx]

    def fn(x, a, b, g):
        if layout == "client_leading":
            u = jnp.einsum("cbk,crk->cbr", x, a)
            du = jnp.einsum("cbd,cdr->cbr", g, b)
            z = jnp.einsum("cbr,cdr->cbd", u, b)
        elif layout == "client_second":
            xt, gt = jnp.swapaxes(x, 0, 1), jnp.swapaxes(g, 0, 1)
            u = jnp.swapaxes(jnp.einsum("bck,crk->bcr", xt, a), 0, 1)
            du = jnp.swapaxes(jnp.einsum("bcd,cdr->bcr", gt, b), 0, 1)
            z = jnp.swapaxes(jnp.einsum("bcr,cdr->bcd", jnp.swapaxes(u, 0, 1), b), 0, 1)
        elif layout == "multiply_sum":
            u = jnp.sum(x[:, :, None, :] * a[:, None], -1)
            du = jnp.sum(g[..., None] * b[:, None], -2)
            z = jnp.sum(u[:, :, None, :] * b[:, None], -1)
        elif layout == "dense_diagonal":
            u = diag(jnp.einsum("cbk,erk->cber", x, a))
            du = diag(jnp.einsum("cbd,edr->cber", g, b))
            z = diag(jnp.einsum("cbr,edr->cbed", u, b))
        else:
            raise ValueError(layout)
        db = jnp.einsum("cbd,cbr->cdr", g, u)
        da = jnp.einsum("cbr,cbk->crk", du, x)
        return z, db, da

    return fn


def numpy_lora_products(x, a, b, g):
    """:func:`lora_products` (``client_leading``) with numpy's ``matmul`` on host arrays."""
    u = np.matmul(x, np.swapaxes(a, 1, 2))
    du = np.matmul(g, b)
    z = np.matmul(u, np.swapaxes(b, 1, 2))
    db = np.matmul(np.swapaxes(g, 1, 2), u)
    da = np.matmul(np.swapaxes(du, 1, 2), x)
    return z, db, da


def suite_products(args, spec: W.RoundSpec):
    """The LoRA products of layer 1 (``k = sizes[0]``) and layer 2 of ``spec``, four layouts."""
    thunks, compile_s, outs = {}, {}, {}
    m, bs = spec.clients, spec.batch
    useful = 0.0
    for layer, ((d, k), r) in enumerate(zip(spec.layer_shapes[:2], spec.ranks, strict=False)):
        keys = jax.random.split(jax.random.key(layer), 4)
        x = jax.random.normal(keys[0], (m, bs, k))
        a = jax.random.normal(keys[1], (m, r, k))
        b = jax.random.normal(keys[2], (m, d, r))
        g = jax.random.normal(keys[3], (m, bs, d))
        useful += 2.0 * m * bs * r * (2 * k + 3 * d)
        layouts = ["client_leading", "client_second", "multiply_sum"]
        layouts += ["dense_diagonal"] if m <= 16 else []
        for layout in layouts:
            name = f"layer{layer} {layout}"
            thunks[name], _, compile_s[name] = common.compiled_thunk(
                jax.jit(lora_products(layout, m)), x, a, b, g
            )
            outs[name] = thunks[name]()
        # Not JAX: the same products by numpy's batched matmul (its BLAS), for the kernels' rate.
        host = [np.asarray(v) for v in (x, a, b, g)]
        name = f"layer{layer} numpy_blas"
        thunks[name], compile_s[name] = (lambda h=host: numpy_lora_products(*h)), 0.0
        outs[name] = thunks[name]()
    return thunks, compile_s, outs, useful


def main(argv: list[str] | None = None) -> dict:
    p = common.bench_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--suite", choices=("client", "rounds", "products", "svd", "shuffle"), default="client"
    )
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--samples", type=int, default=1280)
    p.add_argument("--small-clients", action="store_true", help="digits MLP, 20 samples, batch 10")
    p.add_argument("--rounds", type=int, default=5, help="rounds per call (suite rounds)")
    args = p.parse_args(argv)
    spec = _spec(args)
    suite = {
        "client": suite_client,
        "rounds": suite_rounds,
        "products": suite_products,
        "svd": suite_svd,
        "shuffle": suite_shuffle,
    }
    thunks, compile_s, outs, scale = suite[args.suite](args, spec)
    t, mm = common.time_with_matmul(thunks, (1024, 2048), reps=args.reps or 5)
    peak = mm["gflops"] * 1e9
    rows = []
    first = next(iter(thunks))
    for name in thunks:
        row = {"variant": name, "call_s": t[name].median_s, "compile_s": compile_s[name]}
        if args.suite == "products":
            ref = outs[name.split()[0] + " client_leading"]
            row["rel_diff_vs_client_leading"] = max(
                float(np.max(np.abs(np.asarray(o) - np.asarray(r))) / np.max(np.abs(r)))
                for o, r in zip(outs[name], ref, strict=True)
            )
        else:
            flops = W.round_flops(spec)["unavoidable"] * scale
            row["speedup"] = t[first].median_s / t[name].median_s
            row["frac_unavoidable"] = flops / t[name].median_s / peak
            row["max_abs_diff_vs_first"] = R.max_abs_diff(outs[first], outs[name])
        rows.append(row)
    if args.suite == "products":  # both layers' products per call; GFLOP/s of the useful FLOPs
        for layout in {r["variant"].split()[1] for r in rows}:
            total = sum(r["call_s"] for r in rows if r["variant"].endswith(layout))
            for r in rows:
                if r["variant"].endswith(layout):
                    r["useful_gflops_both_layers"] = scale / total / 1e9
    env = common.env_info()
    common.print_report(
        f"EXPERIMENT: {args.suite} variants (matmul {mm['gflops']:.0f} GFLOP/s)",
        dataclasses.asdict(spec),
        env,
        common.format_table(rows, [(k, k, ".3g" if k != "variant" else None) for k in rows[0]]),
    )
    name = "experimental" if args.suite == "client" else f"experimental_{args.suite}"
    out = {
        "benchmark": name,
        "quick": args.quick,
        "spec": spec,
        "env": env,
        "matmul": mm,
        "rows": rows,
    }
    common.write_json(args.out / f"{name}.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
