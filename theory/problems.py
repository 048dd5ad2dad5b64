r"""Small smooth federated LoRA problems and a self-contained trainer that records the theory's terms.

Independent of ``abo_jax.simulation`` on purpose: the trajectory conditions and rate bounds of
``theory`` are checked on runs whose every step is visible here. The problems are linear models with
one adapted weight ``W = W_0 + s B A`` (peft orientation, ``(d, k)``):

* least squares: ``f_i(B, A) = \frac{1}{2 n} \sum_j \|W x_{ij} - y_{ij}\|^2``;
* multinomial logistic regression: ``f_i = \frac{1}{n} \sum_j \mathrm{CE}(W x_{ij}, y_{ij})``.

Both are smooth and convex in the product ``W`` (not in the factors), which the weak rate bound of
:mod:`theory.bounds` uses. Clients differ by their data (each has its own input shift and target
map), weights ``p_i = n_i / n`` are equal.

The trainer (:func:`run_federated`) runs ``rounds`` rounds of: every client starts from its
broadcast factors, takes ``local_steps`` full-batch gradient steps of size ``eta`` on its own loss
(clients ``jax.vmap``-ed, steps in ``lax.scan``), the operator aggregates, and
:func:`theory.round_metrics` is recorded, all inside one ``jax.jit`` (rounds in ``lax.scan``).

This is part of **our formalization** of arXiv:2508.01348's conditions (see ``theory``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax import ABO, LoRAFactors, init_lora
from theory.functionals import round_metrics

__all__ = [
    "FederatedProblem",
    "FederatedRun",
    "least_squares_problem",
    "logistic_problem",
    "one_class_digits_problem",
    "client_losses",
    "client_loss",
    "dense_loss",
    "global_loss",
    "standard_start",
    "run_federated",
    "run_sweep",
]

LAYER = "w"  # the single adapted weight's name in the factors tree


class FederatedProblem(NamedTuple):
    """A linear model with one LoRA-adapted weight, data split over ``m`` clients."""

    x: jax.Array  # (m, n, k) float: client inputs
    y: jax.Array  # (m, n, d) float targets (least squares) or (m, n) int labels (logistic)
    w0: jax.Array  # (d, k) float: frozen base weight
    weights: jax.Array  # (m,) float: p_i, sum 1
    rank: int  # r
    kind: str  # "least_squares" or "logistic"
    f_inf: float  # a lower bound of the global objective over all W (not only rank r)


class FederatedRun(NamedTuple):
    """What :func:`run_federated` returns (``T`` rounds, ``m`` clients, ``E`` local steps)."""

    records: dict  # name -> (T,) or (T, L) per-round values (round_metrics plus the run's own)
    starts: LoRAFactors  # b (T + 1, m, d, r), a (T + 1, m, r, k): factors each round starts from
    ends: LoRAFactors  # b (T, m, d, r), a (T, m, r, k): clients after local training
    bases: jax.Array  # (T + 1, m, d, k): base weights (W0 plus accumulated base_delta)


def least_squares_problem(
    key: jax.Array,
    *,
    clients: int = 4,
    samples: int = 24,
    d: int = 3,
    k: int = 5,
    rank: int = 1,
    heterogeneity: float = 1.0,
    noise: float = 0.1,
) -> FederatedProblem:
    """Least squares with client-specific target maps ``W_i = W_* + heterogeneity * U_i``.

    Args:
      key: PRNG key.
      clients: ``m``.
      samples: ``n`` per client.
      d, k: output and input sizes.
      rank: LoRA rank ``r``.
      heterogeneity: size of the client-specific part of the targets and input shifts.
      noise: target noise standard deviation.

    Returns:
      :class:`FederatedProblem` with ``f_inf`` the unconstrained least-squares minimum.
    """
    kx, kw, ku, ks, kn, k0 = jax.random.split(key, 6)
    shift = heterogeneity * jax.random.normal(ks, (clients, 1, k))
    x = jax.random.normal(kx, (clients, samples, k)) + shift
    w_star = jax.random.normal(kw, (d, k)) / jnp.sqrt(k)
    w_i = w_star[None] + heterogeneity * jax.random.normal(ku, (clients, d, k)) / jnp.sqrt(k)
    y = jnp.einsum("cnk,cdk->cnd", x, w_i) + noise * jax.random.normal(kn, (clients, samples, d))
    w0 = 0.1 * jax.random.normal(k0, (d, k)) / jnp.sqrt(k)
    weights = jnp.full((clients,), 1.0 / clients)
    # Global objective sum_i p_i / (2n) ||X_i W^T - Y_i||^2: unconstrained minimum over W.
    xs, ys = x.reshape(-1, k), y.reshape(-1, d)
    w_ls, *_ = jnp.linalg.lstsq(xs, ys)
    f_inf = 0.5 * jnp.sum(jnp.square(xs @ w_ls - ys)) / (clients * samples)
    return FederatedProblem(x, y, w0, weights, rank, "least_squares", float(f_inf))


def logistic_problem(
    key: jax.Array,
    *,
    clients: int = 4,
    samples: int = 24,
    classes: int = 3,
    k: int = 5,
    rank: int = 1,
    heterogeneity: float = 1.0,
) -> FederatedProblem:
    """Multinomial logistic regression; client ``i`` labels by its own map ``W_* + h U_i``.

    ``f_inf = 0`` (cross-entropy is non-negative).
    """
    kx, kw, ku, ks, k0 = jax.random.split(key, 5)
    x = jax.random.normal(kx, (clients, samples, k)) + heterogeneity * jax.random.normal(
        ks, (clients, 1, k)
    )
    w_star = jax.random.normal(kw, (classes, k))
    w_i = w_star[None] + heterogeneity * jax.random.normal(ku, (clients, classes, k))
    y = jnp.argmax(jnp.einsum("cnk,cdk->cnd", x, w_i), axis=-1)
    w0 = 0.1 * jax.random.normal(k0, (classes, k)) / jnp.sqrt(k)
    weights = jnp.full((clients,), 1.0 / clients)
    return FederatedProblem(x, y, w0, weights, rank, "logistic", 0.0)


def one_class_digits_problem(
    *, rank: int = 4, samples: int = 100, seed: int = 0
) -> tuple[FederatedProblem, tuple[jax.Array, jax.Array]]:
    """scikit-learn's digits as a 10-client logistic problem, one class per client.

    Client ``i`` holds ``samples`` training images of digit ``i`` (inputs ``(64,)`` in ``[0, 1]``),
    weights ``p_i = 1/10``, a zero frozen base ``(10, 64)``: the global objective
    ``F = sum_i p_i f_i`` is multinomial logistic regression on all ten classes, while ``f_0``
    alone is minimized by predicting class 0 everywhere.

    Args:
      rank: LoRA rank ``r``.
      samples: training images per client (``<= 140``: every class has at least that many).
      seed: seed of the train/test split.

    Returns:
      ``(problem, (x_test (n, 64), y_test (n,)))``.
    """
    from abo_jax.data import load_digits

    ds = load_digits(flatten=True, seed=seed)
    x_train, y_train = np.asarray(ds.x_train), np.asarray(ds.y_train)
    idx = [np.flatnonzero(y_train == c)[:samples] for c in range(10)]
    if min(len(i) for i in idx) < samples:
        raise ValueError(f"samples: at most {min(len(i) for i in idx)} per class, got {samples}")
    x = jnp.asarray(np.stack([x_train[i] for i in idx]))
    y = jnp.asarray(np.stack([y_train[i] for i in idx]))
    w0 = jnp.zeros((10, x.shape[-1]), x.dtype)
    problem = FederatedProblem(x, y, w0, jnp.full((10,), 0.1, x.dtype), rank, "logistic", 0.0)
    return problem, (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))


def client_losses(problem: FederatedProblem, run: FederatedRun, t: int = -1) -> jax.Array:
    """``(m,)``: each client's loss at its own start of round ``t`` (``f_i(P_i Q_i)``).

    ``sum_i p_i`` of it is the global objective ``F`` also for heterogeneous ranks and
    personalized operators, where clients hold different broadcasts.
    """
    b, a, base = run.starts.b[t], run.starts.a[t], run.bases[t]
    fn = lambda b, a, base, x, y: client_loss(problem.kind, LoRAFactors(b, a), base, x, y)  # noqa: E731
    return jax.vmap(fn)(b, a, base, problem.x, problem.y)


def _loss_from_outputs(kind: str, out: jax.Array, y: jax.Array) -> jax.Array:
    if kind == "least_squares":
        return 0.5 * jnp.mean(jnp.sum(jnp.square(out - y), axis=-1))
    logz = jax.nn.logsumexp(out, axis=-1)
    return jnp.mean(logz - jnp.take_along_axis(out, y[:, None], axis=-1)[:, 0])


def client_loss(
    kind: str, factors: LoRAFactors, base: jax.Array, x: jax.Array, y: jax.Array, scale=1.0
):
    """One client's loss at factors ``b (d, r)``, ``a (r, k)`` over base ``(d, k)``, never merging."""
    out = x @ base.T + scale * ((x @ factors.a.T) @ factors.b.T)
    return _loss_from_outputs(kind, out, y)


def dense_loss(kind: str, w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """One client's loss as a function of the dense weight ``w (d, k)`` (``F_i`` of the bounds)."""
    return _loss_from_outputs(kind, x @ w.T, y)


def global_loss(problem: FederatedProblem, factors: LoRAFactors, base: jax.Array, scale=1.0):
    """``f = sum_i p_i f_i`` at one model (factors un-stacked, base ``(d, k)``)."""
    per = jax.vmap(lambda x, y: client_loss(problem.kind, factors, base, x, y, scale))(
        problem.x, problem.y
    )
    return jnp.dot(problem.weights, per)


def standard_start(problem: FederatedProblem, key: jax.Array) -> LoRAFactors:
    """The peft start ``B = 0``, ``A`` Kaiming-uniform, shared by all clients (un-stacked)."""
    d, k = problem.w0.shape
    return init_lora(key, d, k, problem.rank, dtype=problem.w0.dtype)


def _sqnorm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def run_federated(
    problem: FederatedProblem,
    abo: ABO,
    *,
    eta: float,
    rounds: int,
    local_steps: int,
    key: jax.Array,
    start: LoRAFactors | None = None,
    scale: float = 1.0,
) -> FederatedRun:
    r"""Federated LoRA with full-batch local gradient descent; records the theory's terms per round.

    Args:
      problem: a :class:`FederatedProblem`.
      abo: any operator with the ABO signature (its ``base_delta`` is added to the clients' bases).
      eta: local step size ``> 0``.
      rounds: ``T >= 1``.
      local_steps: ``E >= 1``.
      key: PRNG key (start and operator state).
      start: shared starting factors ``b (d, r)``, ``a (r, k)`` (default :func:`standard_start`).
      scale: LoRA scale ``s``.

    Returns:
      :class:`FederatedRun`. ``records`` holds, per round ``t`` (``(T,)`` arrays), everything of
      :func:`theory.round_metrics` for the clients after local training and the broadcast, and

      * ``loss``: ``f(x^t)`` at the model round ``t`` starts from (client 0's start, identical for
        global operators), ``loss_next``: ``f(x^{t+1})``;
      * ``grad_sq_norm``: ``\|\nabla f(x^t)\|^2`` (gradient in factor space);
      * ``max_client_grad_sq``: ``\max_{i, e} \|\nabla f_i(y_i^{t,e})\|^2`` over the local steps;
      * ``grad_norm_ybar``: ``\|\nabla f(\bar y^{t})\|`` at the factor average of the clients;
      * ``dense_grad_norm_zbar``: ``\|\nabla F(W^{t}_{base} + s \bar Z^{t})\|_F``, the gradient of
        the objective as a function of the dense weight at the averaged product;
      * ``broadcast_spread``: ``\max_i \|(P_i, Q_i) - (P_0, Q_0)\|^2`` (zero for global operators).

    Raises:
      ValueError: ``eta <= 0``, ``rounds < 1`` or ``local_steps < 1``.
    """
    if not eta > 0:
        raise ValueError(f"eta: the step size must be > 0, got {eta}")
    if rounds < 1 or local_steps < 1:
        raise ValueError(f"rounds and local_steps: must be >= 1, got {rounds}, {local_steps}")
    k_start, k_state = jax.random.split(key)
    m = problem.weights.shape[0]
    start = standard_start(problem, k_start) if start is None else start
    starts0 = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (m, *x.shape)), start)
    bases0 = jnp.broadcast_to(problem.w0[None], (m, *problem.w0.shape))
    state0 = abo.init({LAYER: starts0}, key=k_state)
    fn = _build(abo, problem.kind, int(rounds), int(local_steps), float(scale))
    records, starts, ends, bases = fn(
        _data(problem), jnp.asarray(eta, problem.w0.dtype), starts0, bases0, state0
    )
    return FederatedRun(records=records, starts=starts, ends=ends, bases=bases)


def run_sweep(
    problem: FederatedProblem,
    abo: ABO,
    *,
    etas: Any,
    rounds: int,
    local_steps: int,
    key: jax.Array,
    start: LoRAFactors | None = None,
    scale: float = 1.0,
) -> dict[float, FederatedRun]:
    """:func:`run_federated` at several step sizes at once (``jax.vmap`` over ``eta``, one compile).

    Every run uses the same start and operator state (same ``key``).

    Returns:
      ``{eta: FederatedRun}``.
    """
    etas = [float(e) for e in etas]
    if not etas or any(not e > 0 for e in etas):
        raise ValueError(f"etas: step sizes must be > 0, got {etas}")
    if rounds < 1 or local_steps < 1:
        raise ValueError(f"rounds and local_steps: must be >= 1, got {rounds}, {local_steps}")
    k_start, k_state = jax.random.split(key)
    m = problem.weights.shape[0]
    start = standard_start(problem, k_start) if start is None else start
    starts0 = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (m, *x.shape)), start)
    bases0 = jnp.broadcast_to(problem.w0[None], (m, *problem.w0.shape))
    state0 = abo.init({LAYER: starts0}, key=k_state)
    fn = _build(abo, problem.kind, int(rounds), int(local_steps), float(scale))
    out = jax.vmap(fn, in_axes=(None, 0, None, None, None))(
        _data(problem), jnp.asarray(etas, problem.w0.dtype), starts0, bases0, state0
    )
    return {
        eta: FederatedRun(*jax.tree.map(lambda x, i=i: x[i], tuple(out)))
        for i, eta in enumerate(etas)
    }


def _data(problem: FederatedProblem) -> tuple[jax.Array, jax.Array, jax.Array]:
    return problem.x, problem.y, problem.weights


_BUILT: dict[tuple, tuple[ABO, Any]] = {}


def _build(abo, kind, rounds, local_steps, scale):
    """The jitted run, cached per operator object (by identity: an ABO's traits may hold arrays,
    which are not hashable) and static settings."""
    key = (id(abo), kind, rounds, local_steps, scale)
    entry = _BUILT.get(key)
    if entry is None or entry[0] is not abo:
        if len(_BUILT) >= 32:
            _BUILT.pop(next(iter(_BUILT)))
        entry = (abo, _make_run(abo, kind, rounds, local_steps, scale))
        _BUILT[key] = entry
    return entry[1]


def _make_run(abo, kind, rounds, local_steps, scale):
    def loss_i(f, base, x, y):
        return client_loss(kind, f, base, x, y, scale)

    grad_i = jax.grad(loss_i)

    def run(data, eta, starts0, bases0, state0):
        xs, ys, w = data

        def f_global(f, base):
            return jnp.dot(w, jax.vmap(lambda x, y: loss_i(f, base, x, y))(xs, ys))

        def local(f, base, x, y):
            def step(f, _):
                g = grad_i(f, base, x, y)
                return jax.tree.map(lambda p, q: p - eta * q, f, g), _sqnorm(g)

            return jax.lax.scan(step, f, None, length=local_steps)

        def one_round(carry, _):
            starts, bases, state = carry
            x0 = jax.tree.map(lambda x: x[0], starts)
            loss, g0 = jax.value_and_grad(f_global)(x0, bases[0])
            ends, gsq = jax.vmap(local)(starts, bases, xs, ys)
            clients = {LAYER: ends}
            broadcast, state, _ = abo.aggregate(clients, w, state)
            metrics = round_metrics(clients, w, broadcast, scale=scale)
            ybar = jax.tree.map(lambda x: jnp.einsum("c,c...->...", w, x), ends)
            g_ybar = jax.grad(f_global)(ybar, bases[0])
            zbar = jnp.einsum("c,cdr,crk->dk", w, ends.b, ends.a)
            w_avg = bases[0] + scale * zbar
            g_dense = jax.grad(
                lambda wd: jnp.dot(w, jax.vmap(lambda x, y: dense_loss(kind, wd, x, y))(xs, ys))
            )(w_avg)
            new = broadcast.factors[LAYER]
            if new.b.ndim == 2:  # one global copy: every client starts from it
                new = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (w.shape[0], *x.shape)), new)
            if broadcast.base_delta is not None:
                delta = jax.tree.leaves(broadcast.base_delta)[0]
                bases = bases + (delta if delta.ndim == 3 else delta[None])
            x1 = jax.tree.map(lambda x: x[0], new)
            spread = jnp.max(
                jnp.sum(jnp.square(new.b - new.b[:1]), (1, 2))
                + jnp.sum(jnp.square(new.a - new.a[:1]), (1, 2))
            )
            rec = {
                **metrics,
                "loss": loss,
                "loss_next": f_global(x1, bases[0]),
                "grad_sq_norm": _sqnorm(g0),
                "max_client_grad_sq": jnp.max(gsq),
                "grad_norm_ybar": jnp.sqrt(_sqnorm(g_ybar)),
                "dense_grad_norm_zbar": jnp.sqrt(jnp.sum(jnp.square(g_dense))),
                "broadcast_spread": spread,
            }
            return (new, bases, state), (rec, starts, ends, bases)

        (last, last_base, _), (records, starts, ends, bases) = jax.lax.scan(
            one_round, (starts0, bases0, state0), None, length=rounds
        )
        starts = jax.tree.map(lambda s, l: jnp.concatenate([s, l[None]]), starts, last)
        bases = jnp.concatenate([bases0[None], bases], axis=0)
        del last_base
        return records, starts, ends, bases

    return jax.jit(run)
