"""A lean federated LoRA trainer for the paper's MLP (the experiments' own engine).

One client's local SGD is written once and ``jax.vmap``-ed over clients (seeds run in turn); a whole
round (local training, client sampling, any ABO, bias averaging, test metrics and the mismatch
metrics) is one jitted function, compiled once per cell and called once per round.

The paper's protocol (arXiv:2508.01348): MLP ``in-200-200-10`` (ReLU) over a randomly initialized
frozen base, LoRA (scale 1) on all three linear layers, biases trainable and averaged, SGD with
momentum and weight decay (PyTorch semantics, momentum reset every round), cross-entropy.

The frozen first-layer product ``x @ W0.T`` depends only on the data, so it is computed once per
example and seed and reused every step (valid while the operator sends no ``base_delta``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.aggregation import ABO, weighted_sum
from abo_jax.data.client_data import ClientData
from abo_jax.lora import init_lora, mask_rank

__all__ = [
    "TrainConfig",
    "Trainable",
    "paper_ranks",
    "init_model",
    "forward",
    "mismatch_metrics",
    "FederatedRun",
    "run_federated",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Local training and round settings (the paper's values by default)."""

    epochs: int = 1  # local epochs E per round
    rounds: int = 300
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clients_per_round: int = 0  # 0: every client takes part
    hidden: tuple[int, ...] = (200, 200)


class Trainable(NamedTuple):
    """What a client trains and sends: LoRA factors and biases, one entry per linear layer."""

    lora: tuple  # LoRAFactors per layer: b (d, r), a (r, k)
    bias: tuple  # (d,) per layer


def paper_ranks(delta: float, num_layers: int = 3) -> tuple[int, ...]:
    """The paper's ranks: ``int(160 delta)`` for hidden layers, ``int(100 delta)`` for the last.

    Example:
      >>> paper_ranks(0.07)
      (11, 11, 7)
    """
    if not delta > 0:
        raise ValueError(f"delta: the rank ratio must be > 0, got {delta}")
    hidden = max(1, int(round(160 * delta, 9)))
    last = max(1, int(round(100 * delta, 9)))
    return (hidden,) * (num_layers - 1) + (last,)


def layer_shapes(in_dim: int, hidden: tuple[int, ...], classes: int) -> list[tuple[int, int]]:
    """``(d, k)`` per linear layer (peft orientation: out, in)."""
    dims = [in_dim, *hidden, classes]
    return [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]


def init_model(key, shapes, ranks, dtype=jnp.float32):
    """Frozen base weights ``(d, k)`` and the trainable part (PyTorch ``nn.Linear`` init for the
    base and biases, peft init for LoRA: Kaiming-uniform ``A``, ``B = 0``).

    Returns:
      ``(base, trainable)`` with ``base`` a tuple of ``(d, k)`` arrays.
    """
    base, loras, biases = [], [], []
    for i, ((d, k), r) in enumerate(zip(shapes, ranks, strict=True)):
        kw, kb, ka = jax.random.split(jax.random.fold_in(key, i), 3)
        bound = 1.0 / math.sqrt(k)
        base.append(jax.random.uniform(kw, (d, k), dtype, -bound, bound))
        biases.append(jax.random.uniform(kb, (d,), dtype, -bound, bound))
        loras.append(init_lora(ka, d, k, r, dtype=dtype))
    return tuple(base), Trainable(lora=tuple(loras), bias=tuple(biases))


def forward(base, tr: Trainable, x, first_frozen=None):
    """Logits of the adapted MLP; ``first_frozen = x @ W0_1.T`` when precomputed.

    Args:
      base: tuple of ``(d, k)`` frozen weights.
      tr: :class:`Trainable`.
      x: ``(b, k_1)`` inputs.
      first_frozen: optional ``(b, d_1)``.

    Returns:
      ``(b, classes)`` logits.
    """
    h = x
    n = len(base)
    for i, (w, f, bias) in enumerate(zip(base, tr.lora, tr.bias, strict=True)):
        frozen = first_frozen if (i == 0 and first_frozen is not None) else h @ w.T
        h_new = frozen + (h @ f.a.T) @ f.b.T + bias[None, :]
        h = jax.nn.relu(h_new) if i < n - 1 else h_new
    return h


def _xent(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]


def mismatch_metrics(clients, weights, broadcast) -> dict[str, jax.Array]:
    r"""Per-layer mismatch terms of one round (DESIGN.md), each ``(L,)``.

    ``R_w = sum_i p_i ||P_i Q_i - B_i A_i||^2``, ``R_B = sum_i p_i ||P_i - B_i||^2``,
    ``R_A = sum_i p_i ||Q_i - A_i||^2``, ``sp_tail = sum_{j>r} s_j(Zbar)^2``,
    ``ps_error = ||Zbar - Bbar Abar||^2``, and the largest factor norms ``max_i ||B_i||``,
    ``max_i ||A_i||`` (the paper's bounded-factor assumption).

    Args:
      clients: tuple of LoRAFactors ``b (m, d, r)``, ``a (m, r, k)`` after local training.
      weights: ``(m,)``.
      broadcast: the ABO's ``Broadcast`` (factors like ``clients``).
    """
    out: dict[str, list] = {
        k: [] for k in ("R_w", "R_B", "R_A", "sp_tail", "ps_error", "B_max", "A_max")
    }
    for f, g in zip(clients, broadcast.factors, strict=True):
        p = weights.astype(f.b.dtype)
        z = f.b @ f.a  # (m, d, k)
        zbar = jnp.einsum("c,cdk->dk", p, z)
        sq = lambda t: jnp.sum(t**2, axis=(-2, -1))
        out["R_w"].append(p @ sq(g.b @ g.a - z))
        out["R_B"].append(p @ sq(g.b - f.b))
        out["R_A"].append(p @ sq(g.a - f.a))
        s = jnp.linalg.svd(zbar, compute_uv=False)
        out["sp_tail"].append(jnp.sum(s[f.b.shape[-1] :] ** 2))
        bbar = jnp.einsum("c,cdr->dr", p, f.b)
        abar = jnp.einsum("c,crk->rk", p, f.a)
        out["ps_error"].append(sq(zbar - bbar @ abar))
        live = p > 0
        out["B_max"].append(jnp.max(jnp.where(live, jnp.sqrt(sq(f.b)), 0.0)))
        out["A_max"].append(jnp.max(jnp.where(live, jnp.sqrt(sq(f.a)), 0.0)))
    return {k: jnp.stack(v) for k, v in out.items()}


class FederatedRun(NamedTuple):
    """Per-round histories, every array with a leading seed axis ``s`` and round axis ``t``."""

    test_acc: np.ndarray  # (s, T)
    test_loss: np.ndarray  # (s, T)
    train_loss: np.ndarray  # (s, T) weighted mean of the clients' local losses
    metrics: dict  # name -> (s, T, ...) from metrics_fn
    diagnostics: dict  # name -> (s, T, ...) numeric ABO diagnostics
    seconds_per_round: float  # wall time per round (all seeds) after compilation
    compile_seconds: float


def _client_update(cfg: TrainConfig, steps: int, base, tr: Trainable, x, h0, y, mask, key):
    """Local training of one client for ``cfg.epochs`` epochs (no client axis anywhere)."""
    n = x.shape[0]
    bsz = cfg.batch_size

    def loss_fn(t, xb, hb, yb, mb):
        logits = forward(base, t, xb, hb)
        count = jnp.sum(mb)
        return jnp.sum(_xent(logits, yb) * mb) / jnp.maximum(count, 1), count

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def epoch(carry, ekey):
        # Real examples first, in a random order; padding rows last (their batches are skipped).
        order = jnp.argsort(jnp.where(mask, jax.random.uniform(ekey, (n,)), 2.0))

        def step(c, j):
            t, buf, lsum, lcount = c
            idx = jax.lax.dynamic_slice(order, (j * bsz,), (bsz,))
            hb = None if h0 is None else h0[idx]
            (loss, count), g = grad_fn(t, x[idx], hb, y[idx], mask[idx])
            g = jax.tree.map(lambda gi, pi: gi + cfg.weight_decay * pi, g, t)
            new_buf = jax.tree.map(lambda bi, gi: cfg.momentum * bi + gi, buf, g)
            new_t = jax.tree.map(lambda pi, bi: pi - cfg.lr * bi, t, new_buf)
            live = count > 0
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)
            return (
                keep(new_t, t),
                keep(new_buf, buf),
                lsum + jnp.where(live, loss, 0.0),
                lcount + live,
            ), None

        carry, _ = jax.lax.scan(step, carry, jnp.arange(steps))
        return carry, None

    zero = jax.tree.map(jnp.zeros_like, tr)
    init = (tr, zero, jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
    (tr, _, lsum, lcount), _ = jax.lax.scan(epoch, init, jax.random.split(key, cfg.epochs))
    return tr, lsum / jnp.maximum(lcount, 1)


def run_federated(
    cfg: TrainConfig,
    abo: ABO,
    data: ClientData,
    test_x,
    test_y,
    ranks: tuple[int, ...],
    seeds: tuple[int, ...],
    *,
    num_classes: int = 10,
    metrics_fn: Callable | None = mismatch_metrics,
    client_ranks=None,
    eval_mode: str = "global",
    on_round: Callable[[int, dict], None] | None = None,
    dtype=jnp.float32,
) -> FederatedRun:
    """Trains one federated run per seed (one compiled round, seeds in turn) with per-round metrics.

    Args:
      cfg: :class:`TrainConfig`.
      abo: any aggregation-broadcast operator (``abo.aggregate(clients, weights, state)``).
      data: :class:`ClientData` with ``x (m, n_max, features)``; ``n_max`` must be a multiple of
        ``cfg.batch_size``.
      test_x, test_y: ``(n_test, features)``, ``(n_test,)``.
      ranks: LoRA rank per layer (the padded maximum when ``client_ranks`` is given).
      seeds: one run per seed, in turn through one compiled round (each seed has its own base, init, shuffles, sampling).
      metrics_fn: ``(clients, weights, broadcast) -> dict of arrays`` inside the jit, or None.
      client_ranks: optional ``(m, L)`` int ranks per client and layer (heterogeneous ranks): the
        factors are masked to them at init and after every broadcast.
      eval_mode: ``"global"`` tests client 0's next starting model (the global model of a global
        operator); ``"clients"`` averages the test accuracy of every client's model.
      on_round: called after each round of each seed with ``(round_index, {"test_acc": (), ...})``.

    Returns:
      :class:`FederatedRun`.
    """
    _warm_lapack()
    if eval_mode not in ("global", "clients"):
        raise ValueError(f"eval_mode: 'global' or 'clients', got {eval_mode!r}")
    m, n_max = data.x.shape[:2]
    if n_max % cfg.batch_size:
        raise ValueError(f"data: n_max={n_max} must be a multiple of batch_size={cfg.batch_size}")
    steps = int(-(-int(np.max(data.sizes)) // cfg.batch_size))
    shapes = layer_shapes(data.x.shape[-1], cfg.hidden, num_classes)
    if len(ranks) != len(shapes):
        raise ValueError(f"ranks: one per layer ({len(shapes)}), got {ranks}")
    p = jnp.asarray(data.sizes / data.sizes.sum(), dtype)
    x = jnp.asarray(data.x, dtype)
    y = jnp.asarray(data.y)
    mask = jnp.asarray(data.mask)
    tx = jnp.asarray(test_x, dtype)
    ty = jnp.asarray(test_y)
    cranks = None if client_ranks is None else jnp.asarray(client_ranks, jnp.int32)

    def setup(seed):
        key = jax.random.key(seed)
        base, tr = init_model(jax.random.fold_in(key, 0), shapes, ranks, dtype)
        start = jax.tree.map(lambda a: jnp.broadcast_to(a, (m, *a.shape)), tr)
        if cranks is not None:
            start = start._replace(
                lora=tuple(mask_rank(f, cranks[:, i]) for i, f in enumerate(start.lora))
            )
        abo_state = abo.init(start.lora, key=jax.random.fold_in(key, 1))
        return base, start, abo_state

    # Does the operator change the frozen base? (Then the first layer cannot be precomputed.)
    base0, start0, state0 = setup(seeds[0])
    bc_shape = jax.eval_shape(lambda c, s: abo.aggregate(c, p, s)[0], start0.lora, state0)
    has_delta = any(leaf is not None for leaf in jax.tree.leaves(bc_shape.base_delta))
    precompute = not has_delta

    def one_round(base, start, abo_state, h0, key, h0_test):
        kc, ks = jax.random.split(key)
        if cfg.clients_per_round and cfg.clients_per_round < m:
            chosen = jax.random.permutation(ks, m)[: cfg.clients_per_round]
            taking_part = jnp.zeros((m,), bool).at[chosen].set(True)
        else:
            taking_part = jnp.ones((m,), bool)
        w = jnp.where(taking_part, p, 0.0)
        w = w / jnp.sum(w)
        update = jax.vmap(
            lambda t, xi, hi, yi, mi, ki: _client_update(cfg, steps, base, t, xi, hi, yi, mi, ki),
            in_axes=(0, 0, 0 if precompute else None, 0, 0, 0),
        )
        trained, losses = update(start, x, h0, y, mask, jax.random.split(kc, m))
        broadcast, abo_state, diag = abo.aggregate(trained.lora, w, abo_state)
        if has_delta:
            base = tuple(
                wb if dl is None else wb + dl.astype(wb.dtype)
                for wb, dl in zip(base, _layers(broadcast.base_delta, len(base)), strict=True)
            )
        lora = tuple(broadcast.factors)
        if cranks is not None:
            lora = tuple(mask_rank(f, cranks[:, i]) for i, f in enumerate(lora))
        bias = weighted_sum(trained.bias, w)
        new_start = Trainable(
            lora=lora, bias=tuple(jnp.broadcast_to(b, (m, *b.shape)) for b in bias)
        )
        hte = h0_test if precompute else None
        if eval_mode == "global":
            t0 = jax.tree.map(lambda a: a[0], new_start)
            logits = forward(base, t0, tx, hte)
            acc = jnp.mean(jnp.argmax(logits, -1) == ty)
            tloss = jnp.mean(_xent(logits, ty))
        else:
            logits = jax.vmap(lambda t: forward(base, t, tx, hte))(new_start)
            acc = jnp.mean(jnp.argmax(logits, -1) == ty[None, :])
            tloss = jnp.mean(_xent(logits, jnp.broadcast_to(ty, logits.shape[:-1])))
        out = {"test_acc": acc, "test_loss": tloss, "train_loss": jnp.sum(w * losses)}
        if metrics_fn is not None:
            out["metrics"] = metrics_fn(trained.lora, w, broadcast._replace(factors=lora))
        out["diagnostics"] = {
            k: v for k, v in diag.items() if jnp.issubdtype(jnp.asarray(v).dtype, jnp.number)
        }
        return base, new_start, abo_state, out

    # Seeds run one after another through one compiled round: a vmapped seed axis batches the
    # CPU LAPACK calls of SP (QR/SVD), which hung on the 2-core test machine.
    round_jit = jax.jit(one_round)
    history_per_seed = []
    compile_seconds = 0.0
    steady = []
    for seed in seeds:
        base, start, abo_state = setup(seed)
        if precompute:
            h0 = jnp.einsum("cnk,dk->cnd", x, base[0])  # (m, n_max, d_1)
            h0_test = tx @ base[0].T
        else:
            h0, h0_test = None, None
        base_key = jax.random.fold_in(jax.random.key(seed), 2)
        history = []
        for t in range(cfg.rounds):
            t_start = time.perf_counter()
            base, start, abo_state, out = round_jit(
                base, start, abo_state, h0, jax.random.fold_in(base_key, t), h0_test
            )
            out = jax.device_get(out)
            elapsed = time.perf_counter() - t_start
            if t == 0 and seed == seeds[0]:
                compile_seconds = elapsed
            else:
                steady.append(elapsed)
            history.append(out)
            if on_round is not None:
                on_round(t, out)
        history_per_seed.append(history)
    per_round = float(np.mean(steady)) * len(seeds) if steady else compile_seconds

    def stack(key):
        return np.stack([np.stack([np.asarray(h[key]) for h in hs]) for hs in history_per_seed])

    def stack_tree(key):
        first = history_per_seed[0][0][key]
        return {
            k: np.stack([np.stack([np.asarray(h[key][k]) for h in hs]) for hs in history_per_seed])
            for k in first
        }

    return FederatedRun(
        test_acc=stack("test_acc"),
        test_loss=stack("test_loss"),
        train_loss=stack("train_loss"),
        metrics=stack_tree("metrics") if metrics_fn is not None else {},
        diagnostics=stack_tree("diagnostics"),
        seconds_per_round=float(per_round),
        compile_seconds=float(compile_seconds),
    )


def _warm_lapack():
    # Load the CPU LAPACK kernels now, then cap their BLAS thread pool (see experiments.common).
    from experiments.common import limit_blas_threads

    jnp.linalg.svd(jnp.eye(2)).S.block_until_ready()
    limit_blas_threads(1)


def _layers(tree, n):
    if tree is None:
        return (None,) * n
    return tuple(tree)
