"""The rounds the benchmarks time: abo_jax's simulator and the per-client-loop baselines around it.

:func:`make_harness` builds, for one :class:`~experiments.bench.workload.RoundSpec` and problem:

* ``vmapped``: the round under test, one jitted call. With ``impl="sim"`` (the default whenever
  ``abo_jax.simulation`` is importable) it is ``abo_jax.make_simulation(paper_mlp(...),
  product_sum())``'s ``round(state, data, inputs)``, with the first layer's frozen product cached by
  ``sim.prepare`` once per run, as the simulator does in a real run. With ``impl="bench"`` it is the
  bench's own reference round (:mod:`experiments.bench.workload`).
* ``loop_update`` (baseline a): the same one-client update (``abo_jax.client_update`` for the
  simulator) jitted once and called client by client in a Python loop, then the jitted server step.
* ``loop_step`` (baseline b): one jitted SGD step per minibatch per client (same model, loss and
  optimizer), minibatches drawn on the host with numpy, then the jitted server step.
* ``check``: the max abs difference between (a) and the vmapped round's global model (same keys),
  so the comparison is known to be like for like.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from abo_jax.data.client_data import ClientData
from experiments.bench import common
from experiments.bench import workload as W


def sim_available() -> bool:
    return hasattr(abo_jax, "make_simulation") and hasattr(abo_jax, "paper_mlp")


class Harness(NamedTuple):
    impl: str  # "sim" (abo_jax.simulation) or "bench" (experiments/bench/workload.py)
    vmapped: Callable[..., Any]  # jitted round; call as vmapped(*vmapped_args)
    vmapped_args: tuple
    loop_update: Callable[[], Any]  # thunk: a whole round with baseline (a)
    loop_step: Callable[[], Any]  # thunk: a whole round with baseline (b)
    check: Callable[[], float]  # max |global (a) - global (vmapped)|
    global_of: Callable[[Any], Any]  # vmapped output -> global trainable tree (for comparisons)
    # scanned(R) -> (thunk running R rounds in one call (sim.rounds), compile seconds); sim only
    scanned: Callable[[int], tuple[Callable[[], Any], float]] | None = None


def describe(impl: str | None) -> str:
    if impl == "sim":
        return (
            "abo_jax.make_simulation(paper_mlp(...), product_sum(), optimizer=paper_sgd(...)).round"
            " (jitted; vmapped abo_jax.client_update; first-layer x @ W0.T cached by sim.prepare)"
        )
    if impl == "bench":
        return (
            "the bench's own reference round (experiments/bench/workload.py: one-client update from"
            " abo_jax.lora + optax, jax.vmap over clients, PS via abo_jax.product_sum, one jax.jit)"
        )
    return str(impl)


# ---- the simulator ------------------------------------------------------------------------------


def sim_parts(
    spec: W.RoundSpec, *, mesh=None, abo=None, donate_state: bool = False, client_chunk=None
):
    """``(model, optimizer, sim)`` for ``spec`` (paper MLP, PS, paper SGD)."""
    model = abo_jax.paper_mlp(
        spec.sizes[0], spec.sizes[1:-1], spec.sizes[-1], ranks=spec.ranks, dtype=spec.dtype
    )
    opt = abo_jax.paper_sgd(spec.lr, spec.momentum, spec.weight_decay)
    sim = abo_jax.make_simulation(
        model,
        abo_jax.product_sum() if abo is None else abo,
        optimizer=opt,
        local_epochs=spec.epochs,
        batch_size=spec.batch,
        mesh=mesh,
        donate_state=donate_state,
        client_chunk=client_chunk,
    )
    return model, opt, sim


def client_data(problem: W.Problem):
    m, n = problem.y.shape
    return ClientData(
        x=problem.x,
        y=problem.y,
        mask=jnp.ones((m, n), bool),
        sizes=jnp.full((m,), n, jnp.int32),
    )


def sim_setup(
    spec: W.RoundSpec,
    problem: W.Problem,
    *,
    mesh=None,
    seed: int = 0,
    donate: bool = False,
    client_chunk: int | None = None,
):
    """``(model, opt, sim, state, data, inputs)``, placed on ``mesh`` when given."""
    model, opt, sim = sim_parts(spec, mesh=mesh, donate_state=donate, client_chunk=client_chunk)
    data = client_data(problem)
    state = sim.init(jax.random.key(seed), data)
    data = sim.shard(data, "data")
    state = sim.shard(state, "state")
    inputs = sim.shard(sim.prepare(state, data), "inputs")
    return model, opt, sim, state, data, inputs


def _sim_harness(spec: W.RoundSpec, problem: W.Problem, seed: int) -> Harness:
    from abo_jax.simulation import client_update, masked_cross_entropy

    model, opt, sim, state, data, inputs = sim_setup(spec, problem, seed=seed)
    m, n = problem.y.shape
    frozen = state.frozen
    start = jax.tree.map(lambda v: v[0], state.clients)  # the global start (all clients equal)
    keys = jax.random.split(jax.random.key(seed + 1), m)  # the loops' own client keys
    weights = state.weights
    server = partial(_sim_server, weights=weights)
    server_jit = jax.jit(server)
    scale = state.lora_scale[0]  # the round's per-client LoRA scale (all equal here)
    update = jax.jit(
        lambda t, inp, y, mask, key: (
            client_update(
                model,
                opt,
                frozen,
                t,
                inp,
                y,
                mask,
                key,
                local_epochs=spec.epochs,
                batch_size=spec.batch,
                lora_scale=scale,
            ).trainable
        )
    )

    @functools.cache
    def per_client():  # built on first use (per-client device arrays, as a loop framework holds)
        return [
            (jax.tree.map(lambda v, i=i: v[i], inputs), data.y[i], data.mask[i], keys[i])
            for i in range(m)
        ]

    def loop_update():
        outs = [update(start, inp, y, mask, key) for inp, y, mask, key in per_client()]
        return server_jit(jax.tree.map(lambda *v: jnp.stack(v), *outs))

    def step(params, opt_state, batch_inputs, labels, valid):
        def objective(p):
            return masked_cross_entropy(model.apply(frozen, p, batch_inputs, scale), labels, valid)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step_jit = jax.jit(step)
    opt_init = jax.jit(opt.init)

    @functools.cache
    def host():  # per-client numpy arrays, built on first use
        return [
            (jax.tree.map(lambda v, i=i: np.asarray(v[i]), inputs), np.asarray(problem.y[i]))
            for i in range(m)
        ]

    rng = np.random.default_rng(seed)
    valid = np.ones((spec.batch,), bool)

    def loop_step():
        finals = []
        for inp, y in host():
            params, opt_state = start, opt_init(start)
            for _ in range(spec.epochs):
                perm = rng.permutation(n)
                for s in range(-(-n // spec.batch)):
                    idx = perm[s * spec.batch : (s + 1) * spec.batch]
                    batch = jax.tree.map(lambda v, idx=idx: v[idx], inp)
                    ok = valid[: idx.shape[0]]
                    params, opt_state, _ = step_jit(params, opt_state, batch, y[idx], ok)
            finals.append(params)
        return server_jit(jax.tree.map(lambda *v: jnp.stack(v), *finals))

    def global_of(out):
        new_state, _ = out
        return jax.tree.map(lambda v: v[0], new_state.clients)

    def check():
        return _sim_check(spec, problem, seed)

    return Harness(
        "sim",
        sim.round,
        (state, data, inputs),
        loop_update,
        loop_step,
        check,
        global_of,
        _scanned(sim, state, data, inputs),
    )


class Variant(NamedTuple):
    """One configuration of the simulator's round (see :func:`sim_variant`)."""

    name: str
    thunk: Callable[[], Any]  # one round
    compile_s: float
    scanned: Callable[[int], tuple[Callable[[], Any], float]] | None  # as Harness.scanned
    max_abs_diff: float  # |global model - the plain round's| after one round


def plain_variant(h: Harness, thunk: Callable[[], Any], compile_s: float) -> Variant:
    """The harness's own round (one device, all clients at once) as a :class:`Variant`."""
    return Variant("1 device, all clients at once", thunk, compile_s, h.scanned, 0.0)


def sim_variant(
    spec: W.RoundSpec,
    problem: W.Problem,
    reference: Any,
    *,
    devices: int = 1,
    client_chunk: int | None = None,
    seed: int = 0,
) -> Variant:
    """The simulator's round over a mesh of the first ``devices`` JAX devices, in client groups.

    ``devices = 1``: no mesh. ``reference``: the plain round's global model from the same start
    (``h.global_of(h.vmapped(*h.vmapped_args))`` of the ``"sim"`` harness), so every variant is
    known to compute the same numbers.
    """
    mesh = common.host_mesh(devices)
    *_, sim, state, data, inputs = sim_setup(
        spec, problem, mesh=mesh, seed=seed, client_chunk=client_chunk
    )
    thunk, compiled, seconds = common.compiled_thunk(sim.round, state, data, inputs)
    ours = jax.tree.map(lambda v: v[0], compiled(state, data, inputs)[0].clients)
    name = f"{devices} device{'s' if devices > 1 else ''}"
    name += f", groups of {client_chunk}" if client_chunk else ", all clients at once"
    scanned = _scanned(sim, state, data, inputs)
    return Variant(name, thunk, seconds, scanned, max_abs_diff(ours, reference))


def _scanned(sim, state, data, inputs):
    """``scanned(R) -> (thunk, compile seconds)``: R rounds of ``sim`` in one ``sim.rounds`` call."""

    def scanned(num_rounds):
        thunk, _, seconds = common.compiled_thunk(
            partial(sim.rounds, num_rounds=num_rounds), state, data, inputs
        )
        return thunk, seconds

    return scanned


def _sim_server(stacked, *, weights):
    """The round's server step for a global ABO (PS): aggregate, one client's broadcast."""
    broadcast, _, _ = abo_jax.product_sum().aggregate(stacked.lora, weights)
    lora = jax.tree.map(lambda v: v[0], broadcast.factors)
    return abo_jax.Trainable(lora=lora, extra=abo_jax.weighted_sum(stacked.extra, weights))


def _sim_check(spec: W.RoundSpec, problem: W.Problem, seed: int) -> float:
    """Max abs difference between the simulator's round and ``client_update`` client by client.

    One batch per epoch (``batch = n``), so each step's gradient is a mean over the whole client
    and does not depend on the shuffling: the check needs no knowledge of how the round derives its
    PRNG keys.
    """
    from abo_jax.simulation import client_update

    spec = dataclasses.replace(spec, batch=spec.samples)
    model, opt, sim, state, data, inputs = sim_setup(spec, problem, seed=seed)
    new_state, _ = sim.round(state, data, inputs)
    ref = jax.tree.map(lambda v: v[0], new_state.clients)
    start = jax.tree.map(lambda v: v[0], state.clients)
    one = jax.jit(
        lambda inp, y, mask, key: (
            client_update(
                model,
                opt,
                state.frozen,
                start,
                inp,
                y,
                mask,
                key,
                local_epochs=spec.epochs,
                batch_size=spec.batch,
                lora_scale=state.lora_scale[0],
            ).trainable
        )
    )
    keys = jax.random.split(jax.random.key(seed), problem.y.shape[0])
    outs = [
        one(jax.tree.map(lambda v, i=i: v[i], inputs), data.y[i], data.mask[i], keys[i])
        for i in range(problem.y.shape[0])
    ]
    got = _sim_server(jax.tree.map(lambda *v: jnp.stack(v), *outs), weights=state.weights)
    return max_abs_diff(ref, got)


# ---- the bench's own round ----------------------------------------------------------------------


def _bench_harness(spec: W.RoundSpec, problem: W.Problem, seed: int, cache_first: bool) -> Harness:
    problem = W.cache_first_layer(problem) if cache_first else problem
    fn = jax.jit(partial(W.vmapped_round, spec))
    loop_a, _, _ = W.loop_update_round(spec)
    loop_b, _, _ = W.loop_step_round(spec, seed=seed)
    per_client = functools.cache(lambda: W.split_clients(problem))
    per_client_np = functools.cache(lambda: W.split_clients_host(problem))

    def check():
        return max_abs_diff(fn(problem)[0], loop_a(problem, per_client()))

    return Harness(
        "bench",
        fn,
        (problem,),
        lambda: loop_a(problem, per_client()),
        lambda: loop_b(problem, per_client_np()),
        check,
        lambda out: out[0],
    )


def make_harness(
    spec: W.RoundSpec,
    problem: W.Problem,
    *,
    impl: str = "auto",
    cache_first: bool = False,
    seed: int = 0,
) -> Harness:
    """The vmapped round and its per-client-loop baselines for ``spec`` (see the module doc).

    Args:
      impl: ``"sim"``, ``"bench"`` or ``"auto"`` (``"sim"`` when available).
      cache_first: ``impl="bench"`` only: feed the round the first layer's cached frozen product.
    """
    if impl == "auto":
        impl = "sim" if sim_available() else "bench"
    if impl == "sim":
        return _sim_harness(spec, problem, seed)
    if impl == "bench":
        return _bench_harness(spec, problem, seed, cache_first)
    raise ValueError(f"impl must be 'auto', 'sim' or 'bench', got {impl!r}")


def max_abs_diff(tree_a, tree_b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    )
