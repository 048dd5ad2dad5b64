"""The benchmark workload: a LoRA MLP round, its FLOP count, and the per-client-loop baselines.

One federated round: every client starts from the global trainable state (LoRA factors of every
layer + biases), runs ``epochs`` local epochs of minibatch SGD (momentum, weight decay, cross-entropy;
the optimizer state starts fresh each round, as in the paper's protocol), and the server aggregates
the factors with an ABO (PS by default) and averages the biases with ``p_i = n_i / sum n``.

This module holds the bench's own reference implementation of that round, written from
``abo_jax.lora`` + optax (one-client update, ``jax.vmap``-ed, one ``jax.jit`` per round), and the
baselines that run the very same one-client maths client by client:

* :func:`loop_update_round` (baseline a): one jitted local update per client, in a Python loop;
* :func:`loop_step_round` (baseline b): one jitted SGD step per minibatch per client, host-side
  batching (the way per-client-loop JAX frameworks simulate).

:func:`round_flops` counts the FLOPs a round cannot avoid (DESIGN.md, "Performance"): the first
layer's frozen product ``x @ W0.T`` depends only on the data, so it is computed once per sample,
not every step; the naive count adds it back for every step.

Reference: Chen et al., arXiv:2508.01348 (the MLP protocol, SP/PS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax


@dataclass(frozen=True)
class RoundSpec:
    """Shapes and hyperparameters of one benchmark round."""

    sizes: tuple[int, ...] = (784, 200, 200, 10)  # layer widths, input first (the paper's MLP)
    ranks: tuple[int, ...] = (8, 8, 5)  # LoRA rank per layer (delta = 0.05: int(160 d), int(100 d))
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
        return self.samples // self.batch  # a last partial batch is dropped

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(d, k)`` of every layer (peft orientation: out, in)."""
        return [(d, k) for k, d in zip(self.sizes[:-1], self.sizes[1:], strict=True)]


# Many small clients (20 samples, batch 10) of the digits-sized MLP: benchmarks 2, 3, 5 and 6 set m.
SMALL_CLIENTS = RoundSpec(
    sizes=(64, 200, 200, 10), ranks=(8, 8, 5), clients=0, samples=20, batch=10
)
# The --quick forms: a tiny MLP that only checks a benchmark runs.
TINY = RoundSpec(sizes=(64, 16, 10), ranks=(2, 2), clients=0, samples=20, batch=10)


class Problem(NamedTuple):
    """Everything a round needs, on the device."""

    trainable: Any  # {"lora": tuple of LoRAFactors (d, r), (r, k); "bias": tuple of (d,)}
    base: tuple  # frozen W0 per layer, (d, k)
    x: jax.Array  # (m, n, k0) float
    y: jax.Array  # (m, n) int32
    weights: jax.Array  # (m,) p_i = n_i / sum n
    keys: jax.Array  # (m,) PRNG keys, one per client for this round
    first: jax.Array | None = None  # (m, n, d1) cached x @ W0_1.T, or None (see cache_first_layer)


def cache_first_layer(problem: Problem) -> Problem:
    """Computes every sample's ``x @ W0_1.T`` once (it depends only on the data and the frozen base),
    to be reused by every step of every epoch and round."""
    first = jnp.einsum("cnk,dk->cnd", problem.x, problem.base[0])
    return problem._replace(first=first)


def make_problem(spec: RoundSpec, seed: int = 0) -> Problem:
    """Random frozen base (Kaiming-uniform, as torch's Linear), peft LoRA init, synthetic data."""
    dtype = jnp.dtype(spec.dtype)
    key = jax.random.key(seed)
    k_base, k_lora, k_x, k_y, k_round = jax.random.split(key, 5)
    base, lora, bias = [], [], []
    for i, ((d, k), r) in enumerate(zip(spec.layer_shapes, spec.ranks, strict=True)):
        bound = 1.0 / math.sqrt(k)
        base.append(jax.random.uniform(jax.random.fold_in(k_base, i), (d, k), dtype, -bound, bound))
        lora.append(abo_jax.init_lora(jax.random.fold_in(k_lora, i), d, k, r, dtype=dtype))
        bias.append(jnp.zeros((d,), dtype))
    m, n = spec.clients, spec.samples
    x = jax.random.normal(k_x, (m, n, spec.sizes[0]), dtype)
    y = jax.random.randint(k_y, (m, n), 0, spec.sizes[-1], jnp.int32)
    weights = jnp.full((m,), 1.0 / m, dtype)  # equal n_i
    return Problem(
        trainable={"lora": tuple(lora), "bias": tuple(bias)},
        base=tuple(base),
        x=x,
        y=y,
        weights=weights,
        keys=jax.random.split(k_round, m),
    )


def forward(trainable, base, x, first_frozen=None, *, merged: bool = False):
    """Logits of the LoRA MLP (ReLU between layers, scale 1); ``x`` is ``(b, k0)``.

    ``first_frozen`` ``(b, d1)``: a precomputed ``x @ W0_1.T``, reused instead of recomputed.
    ``merged``: the naive forward through ``W0 + B A`` (a ``(d, k)`` matrix per client once
    vmapped); only the memory benchmark uses it, as the contrast.
    """
    h = x
    n_layers = len(base)
    for i, (w0, f, bias) in enumerate(zip(base, trainable["lora"], trainable["bias"], strict=True)):
        if merged:
            h = h @ abo_jax.merge_lora(w0, f).T + bias[None]
        else:
            frozen = first_frozen if (i == 0 and first_frozen is not None) else h @ w0.T
            h = frozen + (h @ f.a.T) @ f.b.T + bias[None]
        if i < n_layers - 1:
            h = jax.nn.relu(h)
    return h


def loss_fn(trainable, base, x, y, first_frozen=None, *, merged: bool = False):
    logits = forward(trainable, base, x, first_frozen, merged=merged)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def optimizer(spec: RoundSpec) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay) semantics: decay added to the gradient."""
    return optax.chain(
        optax.add_decayed_weights(spec.weight_decay), optax.sgd(spec.lr, spec.momentum)
    )


def sgd_step(
    spec: RoundSpec, trainable, opt_state, base, xb, yb, first_frozen=None, *, merged=False
):
    """One minibatch step of one client."""
    loss, grads = jax.value_and_grad(partial(loss_fn, merged=merged))(
        trainable, base, xb, yb, first_frozen
    )
    updates, opt_state = optimizer(spec).update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


def epoch_order(spec: RoundSpec, key, shuffle: bool = True):
    """``(epochs, steps, batch)`` sample indices: a fresh permutation per epoch (or in order)."""
    n, s, b = spec.samples, spec.steps_per_epoch, spec.batch
    if shuffle:
        keys = jax.random.split(key, spec.epochs)
        perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
    else:
        perms = jnp.broadcast_to(jnp.arange(n), (spec.epochs, n))
    return perms[:, : s * b].reshape(spec.epochs * s, b)


def local_update(
    spec: RoundSpec,
    trainable,
    base,
    x,
    y,
    key,
    first=None,
    *,
    shuffle: bool = True,
    precompute: bool = False,
    merged: bool = False,
):
    """One client's local training: ``epochs`` epochs of minibatch SGD from ``trainable``.

    Args:
      x: ``(n, k0)``; y: ``(n,)``; key: this client's key for the round.
      first: ``(n, d1)`` cached ``x @ W0_1.T`` (reused at every step), or None.
      precompute: when ``first`` is None, compute ``x @ W0_1.T`` once for all ``n`` samples at the
        start of the round and reuse it at every step of every epoch.

    Returns:
      ``(trainable after training, mean loss)``.
    """
    order = epoch_order(spec, key, shuffle)  # (t, b)
    if first is None and precompute:
        first = x @ base[0].T

    def step(carry, idx):
        params, opt_state = carry
        ff = None if first is None else first[idx]
        params, opt_state, loss = sgd_step(
            spec, params, opt_state, base, x[idx], y[idx], ff, merged=merged
        )
        return (params, opt_state), loss

    opt_state = optimizer(spec).init(trainable)
    (trainable, _), losses = jax.lax.scan(step, (trainable, opt_state), order)
    return trainable, losses.mean()


def aggregate(clients, weights, abo: abo_jax.ABO | None = None):
    """Server step: the ABO on the stacked LoRA factors, the weighted mean of the biases.

    Returns the next global trainable state (one client's slice of the broadcast).
    """
    abo = abo_jax.product_sum() if abo is None else abo
    lora = {f"layer{i}": f for i, f in enumerate(clients["lora"])}
    broadcast, _, _ = abo.aggregate(lora, weights)
    factors = tuple(
        jax.tree.map(lambda v: v[0], broadcast.factors[f"layer{i}"]) for i in range(len(lora))
    )
    bias = tuple(abo_jax.weighted_sum(clients["bias"], weights))
    return {"lora": factors, "bias": bias}


def vmapped_round(
    spec: RoundSpec, problem: Problem, *, shuffle=True, precompute=False, merged=False, abo=None
):
    """The whole round as one function of the problem: vmap over clients, then aggregate."""
    update = partial(local_update, spec, shuffle=shuffle, precompute=precompute, merged=merged)
    clients, losses = jax.vmap(update, in_axes=(None, None, 0, 0, 0, 0))(
        problem.trainable, problem.base, problem.x, problem.y, problem.keys, problem.first
    )
    return aggregate(clients, problem.weights, abo), losses


def jit_vmapped_round(spec: RoundSpec, *, shuffle=True, precompute=False, abo=None):
    """``jax.jit`` of :func:`vmapped_round` taking a :class:`Problem`."""
    return jax.jit(
        lambda problem: vmapped_round(
            spec, problem, shuffle=shuffle, precompute=precompute, abo=abo
        )
    )


def split_clients(problem: Problem):
    """Per-client device arrays (held by a per-client-loop framework before the round starts)."""
    m = problem.x.shape[0]
    first = [None] * m if problem.first is None else [problem.first[i] for i in range(m)]
    return [(problem.x[i], problem.y[i], problem.keys[i], first[i]) for i in range(m)]


def loop_update_round(spec: RoundSpec, *, shuffle=True, abo=None):
    """Baseline (a): ``round(problem, per_client)`` calling one jitted local update per client."""
    update = jax.jit(partial(local_update, spec, shuffle=shuffle))
    agg = jax.jit(partial(aggregate, abo=abo))

    def round_fn(problem: Problem, per_client):
        outs = [update(problem.trainable, problem.base, x, y, k, f) for x, y, k, f in per_client]
        clients = jax.tree.map(lambda *v: jnp.stack(v), *[o[0] for o in outs])
        return agg(clients, problem.weights)

    return round_fn, update, agg


def split_clients_host(problem: Problem):
    """Per-client numpy arrays ``(x, y, first or None)`` for :func:`loop_step_round`."""
    m = problem.x.shape[0]
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    first = None if problem.first is None else np.asarray(problem.first)
    return [(x[i], y[i], None if first is None else first[i]) for i in range(m)]


def loop_step_round(spec: RoundSpec, *, shuffle=True, abo=None, seed: int = 0):
    """Baseline (b): one jitted step per minibatch per client; numpy host-side batching."""
    step = jax.jit(partial(sgd_step, spec))
    opt_init = jax.jit(optimizer(spec).init)
    agg = jax.jit(partial(aggregate, abo=abo))
    rng = np.random.default_rng(seed)

    def round_fn(problem: Problem, per_client_np):
        """``per_client_np``: ``[(x (n, k0), y (n,), first (n, d1) or None)]`` host arrays."""
        finals = []
        for x, y, first in per_client_np:
            params = problem.trainable
            opt_state = opt_init(params)
            for _ in range(spec.epochs):
                perm = rng.permutation(spec.samples) if shuffle else np.arange(spec.samples)
                for s in range(spec.steps_per_epoch):
                    idx = perm[s * spec.batch : (s + 1) * spec.batch]
                    ff = None if first is None else first[idx]
                    params, opt_state, _ = step(params, opt_state, problem.base, x[idx], y[idx], ff)
            finals.append(params)
        clients = jax.tree.map(lambda *v: jnp.stack(v), *finals)
        return agg(clients, problem.weights)

    return round_fn, step, agg


def layer_flops(d: int, k: int, r: int, *, first: bool, frozen_forward: bool) -> dict[str, float]:
    """FLOPs per sample per step of one LoRA layer (multiply-add = 2; elementwise ops not counted).

    Forward: ``x W0^T`` (``2dk``, skipped when ``frozen_forward`` is False), ``(x A^T) B^T``
    (``2r(k + d)``). Backward: ``dB`` (``2dr``), ``d(xA^T) = g B`` (``2dr``), ``dA`` (``2rk``), and,
    except for the first layer (the input needs no gradient), ``dx = g W0 + d(xA^T) A`` (``2dk +
    2rk``).
    """
    fwd = (2.0 * d * k if frozen_forward else 0.0) + 2.0 * r * (k + d)
    bwd = 4.0 * d * r + 2.0 * r * k + (0.0 if first else 2.0 * d * k + 2.0 * r * k)
    return {"forward": fwd, "backward": bwd}


def round_flops(spec: RoundSpec) -> dict[str, float]:
    """FLOPs of one round: ``unavoidable`` and ``naive`` (first frozen product every step).

    ``unavoidable``: every step's LoRA forward/backward and the frozen products of layers 2..L
    (forward and the backward to their input); aggregation (PS: ``2 m`` FLOPs per factor entry) is
    included and negligible. The first layer's ``x @ W0_1.T`` is not: it depends only on the data, so
    it is computed once per run and cached (``first_once`` reports its cost, which a run of ``R``
    rounds amortizes to ``first_once / R`` per round). ``naive``: the first frozen product
    recomputed at every step, as a plain forward pass does.
    """
    samples_per_round = spec.clients * spec.steps_per_epoch * spec.batch * spec.epochs
    per_sample_unavoidable = 0.0
    per_sample_naive = 0.0
    n_factor = 0
    for i, ((d, k), r) in enumerate(zip(spec.layer_shapes, spec.ranks, strict=True)):
        lo = layer_flops(d, k, r, first=i == 0, frozen_forward=i > 0)
        na = layer_flops(d, k, r, first=i == 0, frozen_forward=True)
        per_sample_unavoidable += lo["forward"] + lo["backward"]
        per_sample_naive += na["forward"] + na["backward"]
        n_factor += r * (d + k) + d
    d1, k1 = spec.layer_shapes[0]
    aggregation = 2.0 * spec.clients * n_factor
    first_once = 2.0 * d1 * k1 * spec.clients * spec.samples
    return {
        "unavoidable": per_sample_unavoidable * samples_per_round + aggregation,
        "naive": per_sample_naive * samples_per_round + aggregation,
        "per_sample_step_unavoidable": per_sample_unavoidable,
        "per_sample_step_naive": per_sample_naive,
        "first_once": first_once,
    }
