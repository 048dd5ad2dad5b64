"""The round under test, built from abo_jax's values; its FLOP count; the per-client-loop baselines.

The round is ``abo_jax.federated_round(paper_mlp(...), product_sum(), optimizer=paper_sgd(...))``
wrapped by ``on_mesh`` and ``jit_round`` (``scan_rounds`` for several rounds per call), with the
first layer's frozen product ``x @ W0.T`` cached once per run by ``rnd.prepare``. A variant of it is
a set of the round's own arguments (:func:`setup`): another local update is a ``client_update=``
value, another batching ``client_update=partial(abo_jax.client_update, batches_fn=...)``, another
operator ``abo=``, another model ``model=``, client groups ``client_chunk=`` (``map_clients=
client_groups(...)``), devices, donation. Nothing is patched; the benchmarks hold no copy of it.

The baselines run the same one-client maths client by client (:func:`loops`): (a) the round's own
``client_update`` jitted once and called per client, (b) one jitted SGD step per minibatch with the
batches drawn on the host (as per-client-loop frameworks do); both then the jitted server step.

Reference: Chen et al., arXiv:2508.01348 (the MLP protocol, SP/PS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from experiments.bench.common import compiled_thunk, host_mesh


@dataclass(frozen=True)
class RoundSpec:
    """Shapes and hyperparameters of one benchmark round."""

    sizes: tuple[int, ...] = (784, 200, 200, 10)  # layer widths, input first (the paper's MLP)
    ranks: tuple[int, ...] = (8, 8, 5)  # LoRA rank per layer (delta = 0.05)
    clients: int = 10  # m
    samples: int = 6016  # n per client (one MNIST class ~ 6000; 94 full batches of 64)
    batch: int = 64
    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dtype: str = "float32"

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.samples // self.batch)

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(d, k)`` of every layer (peft orientation: out, in)."""
        return list(zip(self.sizes[1:], self.sizes[:-1], strict=True))


# Many small clients (20 samples, batch 10) of the digits-sized MLP: benchmarks 2, 3, 5, 6 set m.
SMALL_CLIENTS = RoundSpec(sizes=(64, 200, 200, 10), clients=0, samples=20, batch=10)
# The --quick forms: a tiny MLP that only checks a benchmark runs.
TINY = RoundSpec(sizes=(64, 16, 10), ranks=(2, 2), clients=0, samples=20, batch=10)


def model_of(spec: RoundSpec) -> abo_jax.Model:
    sizes = spec.sizes
    return abo_jax.paper_mlp(sizes[0], sizes[1:-1], sizes[-1], ranks=spec.ranks, dtype=spec.dtype)


def optimizer_of(spec: RoundSpec) -> optax.GradientTransformation:
    return abo_jax.paper_sgd(spec.lr, spec.momentum, spec.weight_decay)


def make_data(spec: RoundSpec, seed: int = 0) -> abo_jax.ClientData:
    """Synthetic clients: ``x (m, n, k0)`` standard normal, ``y (m, n)`` uniform labels, all real."""
    k_x, k_y = jax.random.split(jax.random.key(seed))
    m, n = spec.clients, spec.samples
    return abo_jax.ClientData(
        x=jax.random.normal(k_x, (m, n, spec.sizes[0]), jnp.dtype(spec.dtype)),
        y=jax.random.randint(k_y, (m, n), 0, spec.sizes[-1], jnp.int32),
        mask=jnp.ones((m, n), bool),
        sizes=jnp.full((m,), n, jnp.int32),
    )


def in_order_batches(key: jax.Array, mask: jax.Array, batch_size: int):
    """A ``batches_fn`` without shuffling (rows in order, the last batch padded and masked): with
    it a round does not depend on how it derives its keys, so other code can be checked against it."""
    del key
    nb = -(-mask.shape[0] // batch_size)
    idx = jnp.arange(nb * batch_size, dtype=jnp.int32)
    valid = (idx < mask.shape[0]) & mask[jnp.minimum(idx, mask.shape[0] - 1)]
    return jnp.where(valid, idx, 0).reshape(nb, batch_size), valid.reshape(nb, batch_size)


class Setup(NamedTuple):
    """One variant of the round, ready to time: ``rnd.apply(state, data, inputs)`` is one round."""

    rnd: abo_jax.FederatedRound  # jitted (jit_round)
    step: abo_jax.FederatedRound  # the same round before jit_round (to wrap further)
    state: abo_jax.SimState
    data: abo_jax.ClientData
    inputs: Any
    model: abo_jax.Model
    optimizer: optax.GradientTransformation
    client_update: Any
    one: Any  # the abstract trainable tree of one client (shapes without a client axis)

    def global_model(self, state: abo_jax.SimState) -> abo_jax.Trainable:
        """The global model of ``state`` (the round's start: equal copies of the PS broadcast)."""
        return one_copy(state.clients, self.one)

    def compiled(self):
        """``(thunk, compiled, compile seconds)`` of one round from ``state``."""
        return compiled_thunk(self.rnd.apply, self.state, self.data, self.inputs)

    def scanned(self, num_rounds: int):
        """``(thunk, compile seconds)``: ``num_rounds`` rounds in one call (``scan_rounds``)."""
        rnd = abo_jax.jit_round(abo_jax.scan_rounds(self.step, num_rounds))
        thunk, _, seconds = compiled_thunk(rnd.apply, self.state, self.data, self.inputs)
        return thunk, seconds


def setup(
    spec: RoundSpec,
    data: abo_jax.ClientData | None = None,
    *,
    seed: int = 0,
    model: abo_jax.Model | None = None,
    abo: abo_jax.ABO | None = None,
    optimizer: optax.GradientTransformation | None = None,
    client_update: Any = abo_jax.client_update,
    client_chunk: int | None = None,
    devices: int = 1,
    donate: bool = False,
    metrics_fn: Any = None,
) -> Setup:
    """The round of ``spec`` with the given arguments, its initial state, data and cached inputs.

    ``devices > 1``: on a ``("clients",)`` mesh of the first ``devices`` JAX devices (``on_mesh``),
    client groups formed per device. Defaults: :func:`model_of`, PS, :func:`optimizer_of`.
    """
    model = model_of(spec) if model is None else model
    optimizer = optimizer_of(spec) if optimizer is None else optimizer
    mesh = host_mesh(devices)
    groups = (
        abo_jax.client_groups(client_chunk, mesh)
        if client_chunk
        else abo_jax.simulation.vmap_clients
    )
    rnd = abo_jax.federated_round(
        model,
        abo_jax.product_sum() if abo is None else abo,
        optimizer=optimizer,
        client_update=client_update,
        local_epochs=spec.epochs,
        batch_size=spec.batch,
        metrics_fn=metrics_fn,
        map_clients=groups,
    )
    if mesh is not None:
        rnd = abo_jax.on_mesh(rnd, mesh)
    data = make_data(spec, seed) if data is None else data
    state = rnd.shard(rnd.init(jax.random.key(seed), data), "state")
    data = rnd.shard(data, "data")
    inputs = rnd.shard(rnd.prepare(state, data), "inputs")
    jitted = abo_jax.jit_round(rnd, donate=donate)
    one = jax.eval_shape(model.init, jax.random.key(0))[1]
    return Setup(jitted, rnd, state, data, inputs, model, optimizer, client_update, one)


def one_copy(tree: Any, one: Any) -> Any:
    """``tree`` without its leading client axis where it has one (every copy of a global broadcast
    is the same, so the first is the model); ``one``: the tree's shapes for one client."""
    return jax.tree.map(lambda x, y: x[0] if x.ndim > len(y.shape) else x, tree, one)


def loops(spec: RoundSpec, s: Setup, *, seed: int = 0):
    """The baselines for ``s``'s round: ``(loop_update, loop_step, server)``.

    ``loop_update()`` (a) and ``loop_step()`` (b) each run a whole round client by client and return
    the global model; ``server(stacked trainable)`` is their jitted server step (PS on the whole
    trainable tree: factors, and the weighted mean of the biases), as the round does it.
    """
    frozen, weights, scale = s.state.frozen, s.state.weights, s.state.lora_scale[0]
    start = s.global_model(s.state)  # every client starts from the broadcast
    m = spec.clients
    keys = jax.random.split(jax.random.key(seed + 1), m)

    @jax.jit
    def server(trained):
        broadcast, _, _ = abo_jax.product_sum().aggregate(trained, weights)
        return broadcast.factors  # one copy: a global operator's broadcast

    @jax.jit
    def update(inputs, labels, mask, key):
        return s.client_update(
            s.model,
            s.optimizer,
            frozen,
            start,
            inputs,
            labels,
            mask,
            key,
            local_epochs=spec.epochs,
            batch_size=spec.batch,
            lora_scale=scale,
        ).trainable

    @functools.cache
    def per_client():  # per-client device arrays, as a loop framework holds them
        pick = lambda i: jax.tree.map(lambda v: v[i], (s.inputs, s.data.y, s.data.mask))
        return [(*pick(i), keys[i]) for i in range(m)]

    def stack(trees):
        return jax.tree.map(lambda *v: jnp.stack(v), *trees)

    def loop_update():
        return server(stack([update(*args) for args in per_client()]))

    @jax.jit
    def sgd_step(params, opt_state, batch_inputs, labels, valid):
        def objective(p):
            logits = s.model.apply(frozen, p, batch_inputs, scale)
            return abo_jax.simulation.masked_cross_entropy(logits, labels, valid)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = s.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_init = jax.jit(s.optimizer.init)
    rng = np.random.default_rng(seed)
    host = functools.cache(lambda: [jax.tree.map(np.asarray, c[:2]) for c in per_client()])

    def loop_step():
        finals = []
        for inputs, labels in host():
            params, opt_state = start, opt_init(start)
            for _ in range(spec.epochs):
                perm = rng.permutation(spec.samples)
                for j in range(spec.steps_per_epoch):
                    idx = perm[j * spec.batch : (j + 1) * spec.batch]
                    batch = jax.tree.map(lambda v, idx=idx: v[idx], inputs)
                    valid = np.ones(idx.shape, bool)
                    params, opt_state, _ = sgd_step(params, opt_state, batch, labels[idx], valid)
            finals.append(params)
        return server(stack(finals))

    return loop_update, loop_step, server


def layer_flops(d: int, k: int, r: int, *, first: bool, frozen_forward: bool) -> float:
    """FLOPs per sample per step of one LoRA layer (multiply-add = 2; element-wise ops not counted).

    Forward: ``x W0^T`` (``2dk``, unless ``frozen_forward`` is False), ``(x A^T) B^T``
    (``2r(k + d)``). Backward: ``dB`` (``2dr``), ``g B`` (``2dr``), ``dA`` (``2rk``), and, except for
    the first layer (the input needs no gradient), ``dx = g W0 + d(xA^T) A`` (``2dk + 2rk``).
    """
    fwd = (2.0 * d * k if frozen_forward else 0.0) + 2.0 * r * (k + d)
    return fwd + 4.0 * d * r + 2.0 * r * k + (0.0 if first else 2.0 * d * k + 2.0 * r * k)


def round_flops(spec: RoundSpec) -> dict[str, float]:
    """FLOPs of one round: ``unavoidable`` and ``naive`` (the first frozen product every step).

    ``unavoidable``: every step's LoRA forward and backward, the frozen products of layers 2..L
    (forward, and backward to their input), and the aggregation (PS: ``2 m`` per factor entry).
    The first layer's ``x @ W0_1.T`` depends only on the data, so it is computed once per run
    (``first_once``; DESIGN.md, "Performance"); ``naive`` recomputes it every step.
    """
    samples = spec.clients * spec.steps_per_epoch * spec.batch * spec.epochs
    unavoidable = naive = 0.0
    entries = 0
    for i, ((d, k), r) in enumerate(zip(spec.layer_shapes, spec.ranks, strict=True)):
        unavoidable += layer_flops(d, k, r, first=i == 0, frozen_forward=i > 0)
        naive += layer_flops(d, k, r, first=i == 0, frozen_forward=True)
        entries += r * (d + k) + d
    d1, k1 = spec.layer_shapes[0]
    aggregation = 2.0 * spec.clients * entries
    return {
        "unavoidable": unavoidable * samples + aggregation,
        "naive": naive * samples + aggregation,
        "per_sample_step_unavoidable": unavoidable,
        "first_once": 2.0 * d1 * k1 * spec.clients * spec.samples,
    }
