r"""Rate bounds ``D/(eta E T) + (M + N) eta (+ first-order term)`` evaluated on a recorded run.

**Our derivation**, not the paper's (arXiv:2508.01348 states rates of the form ``D/(eta T) + M eta``
under its weak condition and ``D/(eta T) + (M + N) eta`` under its strong one; its proofs are not
public in a form we can quote). Everything below is our own and deliberately conservative.

Setting (what :func:`theory.problems.run_federated` does): a global operator (every client gets the
same factors ``x^t = (P^t, Q^t)``, no ``base_delta``), ``T`` rounds, ``E`` local full-batch gradient
steps of size ``eta`` on ``f_i``, ``f = \sum_i p_i f_i``, ``y_i^{t,0} = x^t``,
``y_i^{t,e+1} = y_i^{t,e} - \eta \nabla f_i(y_i^{t,e})``. Constants, measured on the run:

* ``G^2 = \max_{t,i,e} \|\nabla f_i(y_i^{t,e})\|^2`` (gradient second moment; full batch, so the
  max), hence ``\|y_i^{t,e} - x^t\| \le \eta e G``;
* ``L``: smoothness of ``f`` and every ``f_i`` in the factors on the run. We take the larger of a
  Hessian-vector power iteration (``jax.jvp`` of ``jax.grad``) at every iterate and the structural
  bound ``L \le s^2 L_F (C_A^2 + C_B^2) + s G_F`` (for ``f_i(B, A) = F_i(W_0 + s B A)``: the
  second derivative in direction ``(U, V)`` is ``s^2 \nabla^2 F_i[U A + B V]^2 + 2 s \langle \nabla
  F_i, U V\rangle``), with ``L_F`` the power-iteration Hessian norm of ``F_i`` in ``W``,
  ``G_F = \max \|\nabla F_i\|_F`` and ``C_A, C_B`` the largest factor norms of the run;
* ``D = f(x^0) - f_{\inf}`` (``f_inf`` of the problem: a lower bound over all ``W``).

**Local progress** (both bounds). With ``\langle \nabla f(y), \nabla f_i(y) \rangle`` expanded at
``x^t`` and ``\|\nabla f(y_i^{t,e}) - \nabla f(x^t)\|, \|\nabla f_i(y_i^{t,e}) - \nabla f_i(x^t)\| \le
L \eta e G``:

.. math::
    \sum_i p_i f(y_i^{t,E}) \le f(x^t) - \eta E \|\nabla f(x^t)\|^2
        + L \eta^2 G^2 \big(E(E-1) + E/2\big).

**Weak bound** (needs ``F`` convex in ``W``: true for least squares and logistic regression on a
linear model). Jensen gives ``F(W_0 + s \bar Z) \le \sum_i p_i f(y_i^{t,E})``, and smoothness of
``F`` in the product with ``e_w^2 = \|PQ - \bar Z\|_F^2`` (``= R_w - R_w^*`` by identity 1):
``f(x^{t+1}) \le F(W_0 + s\bar Z) + s \|\nabla F(W_0 + s \bar Z)\|_F e_w + \tfrac{s^2 L_F}{2} e_w^2``.

**Strong bound** (no convexity). With ``\bar y`` the factor average and ``e_s^2 = \|P - \bar B\|^2 +
\|Q - \bar A\|^2`` (``= R_B - R_B^* + R_A - R_A^*``, identity 5):
``f(\bar y) \le \sum_i p_i f(y_i) + \tfrac{L}{2}(R_B^* + R_A^*)`` and
``f(x^{t+1}) \le f(\bar y) + \|\nabla f(\bar y)\| e_s + \tfrac{L}{2} e_s^2``.

Summing over rounds and dividing by ``\eta E T``:

.. math::
    \frac1T \sum_{t<T} \|\nabla f(x^t)\|^2 \le \frac{D}{\eta E T} + M \eta + N \eta + F_1,
    \qquad M = L G^2 (E - \tfrac12),

* weak: ``N = s^2 L_F R / (2E)`` with ``R = \sup_t R_w / \eta^2``;
  ``F_1 = \frac{1}{\eta E T}\sum_t s \|\nabla F(W_0 + s\bar Z^t)\|_F\, e_w^t``;
* strong: ``N = L (R_P + R_Q) / (2E)`` with ``R_P = \sup_t R_B/\eta^2``, ``R_Q = \sup_t R_A/\eta^2``;
  ``F_1 = \frac{1}{\eta E T}\sum_t \|\nabla f(\bar y^t)\|\, e_s^t``.

``F_1`` is measured, not bounded by the condition constants: the conditions (``R \le C \eta^2``)
alone only give ``e = O(\eta)``, which makes ``F_1 = O(1)`` in a worst case. It is zero for PS in the
strong bound (``e_s = 0``) and ``O(\eta)`` whenever the server error is second order
(``e = O(\eta^2)``: PS's product error is a covariance of ``O(\eta)`` drifts; SP's truncation of a
rank-``r`` start plus ``O(\eta)`` drift). The report gives every term separately.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax import LoRAFactors
from theory.problems import FederatedProblem, FederatedRun, client_loss, dense_loss

__all__ = ["RateBoundReport", "rate_bounds", "hessian_norm"]


def hessian_norm(fun, x: Any, *, key: jax.Array, iters: int = 30) -> jax.Array:
    """Largest ``|eigenvalue|`` of the Hessian of a scalar ``fun`` at ``x`` (any pytree).

    Power iteration on Hessian-vector products ``jax.jvp(jax.grad(fun), (x,), (v,))``; jit- and
    vmap-compatible.
    """
    leaves, treedef = jax.tree.flatten(x)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(
        treedef, [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves, strict=True)]
    )
    grad = jax.grad(fun)

    def hvp(v):
        return jax.jvp(grad, (x,), (v,))[1]

    def norm(t):
        return jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in jax.tree.leaves(t)))

    def body(_, carry):
        v, _ = carry
        hv = hvp(v)
        n = norm(hv)
        return jax.tree.map(lambda a: a / jnp.maximum(n, 1e-300), hv), n

    v = jax.tree.map(lambda a: a / norm(v), v)
    _, lam = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), leaves[0].dtype)))
    return lam


@dataclasses.dataclass(frozen=True)
class RateBoundReport:
    """Our rate bounds on one run, every term separately (see the module docstring)."""

    eta: float
    local_steps: int  # E
    rounds: int  # T
    initial_gap: float  # D = f(x^0) - f_inf
    smoothness: float  # L used (max of the two estimates)
    smoothness_power: float  # L from Hessian-vector power iteration at the iterates
    smoothness_structural: float  # s^2 L_F (C_A^2 + C_B^2) + s G_F
    dense_smoothness: float  # L_F
    grad_second_moment: float  # G^2
    c_a: float
    c_b: float
    dense_grad_max: float  # G_F
    weak_constant: float  # R = sup_t R_w / eta^2
    strong_constants: tuple[float, float]  # (R_P, R_Q)
    m_term: float  # M
    n_weak: float
    n_strong: float
    first_order_weak: float
    first_order_strong: float
    bound_weak: float
    bound_strong: float
    measured: float  # (1/T) sum_t ||grad f(x^t)||^2
    factor_weak: float  # bound_weak / measured
    factor_strong: float
    holds_weak: bool
    holds_strong: bool
    # Each round's descent inequality of the derivation, with that round's measured terms:
    # f(x^{t+1}) - f(x^t) + eta E ||grad f(x^t)||^2 <= local drift + first- + second-order terms.
    per_round_weak: bool  # every round satisfies the weak-bound step
    per_round_strong: bool  # every round satisfies the strong-bound step
    per_round_slack: tuple[float, float]  # smallest (rhs - lhs) over rounds, weak and strong

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A table a person can read."""
        d_term = self.initial_gap / (self.eta * self.local_steps * self.rounds)
        rows = [
            f"eta={self.eta:g}  E={self.local_steps}  T={self.rounds}  D={self.initial_gap:.4g}  "
            f"L={self.smoothness:.4g} (power {self.smoothness_power:.4g}, structural "
            f"{self.smoothness_structural:.4g})  G^2={self.grad_second_moment:.4g}  "
            f"C_A={self.c_a:.3g}  C_B={self.c_b:.3g}",
            f"{'bound':<8}{'D/(eta E T)':<14}{'M eta':<12}{'N eta':<12}{'F1':<12}{'total':<12}"
            f"{'measured':<12}{'factor':<10}holds  every round",
        ]
        for name, n, f1, total, factor, ok, step in (
            ("weak", self.n_weak, self.first_order_weak, self.bound_weak, self.factor_weak,
             self.holds_weak, self.per_round_weak),
            ("strong", self.n_strong, self.first_order_strong, self.bound_strong,
             self.factor_strong, self.holds_strong, self.per_round_strong),
        ):  # fmt: skip
            rows.append(
                f"{name:<8}{d_term:<14.4g}{self.m_term * self.eta:<12.4g}{n * self.eta:<12.4g}"
                f"{f1:<12.4g}{total:<12.4g}{self.measured:<12.4g}{factor:<10.3g}{str(ok):<7}{step}"
            )
        return "\n".join(rows)


def rate_bounds(
    problem: FederatedProblem,
    run: FederatedRun,
    *,
    eta: float,
    local_steps: int,
    scale: float = 1.0,
    constants: Any = None,
    key: jax.Array | None = None,
    power_iters: int = 30,
) -> RateBoundReport:
    r"""Evaluates our weak and strong rate bounds on a run and compares them with the measured rate.

    Args:
      problem: the problem the run trained on.
      run: from :func:`theory.problems.run_federated` (a global operator without ``base_delta``).
      eta: the run's step size ``> 0``.
      local_steps: the run's ``E``.
      scale: the run's LoRA scale ``s``.
      constants: optional :class:`theory.conditions.ConditionReport` of an ``eta`` sweep; its
        constants (uniform in ``eta``) replace this run's ``sup_t R / eta^2`` when larger.
      key: PRNG key of the power iterations.
      power_iters: power-iteration steps.

    Returns:
      :class:`RateBoundReport`; ``holds_*`` say whether the bound is above the measured average
      squared gradient norm, ``factor_*`` by how much; ``per_round_*`` whether every round's
      descent step of the derivation holds with that round's measured terms (a check of the
      derivation itself, not only of its sum).

    Raises:
      ValueError: ``eta <= 0``, a personalized operator or one with ``base_delta``, too few rounds.
    """
    if not eta > 0:
        raise ValueError(f"eta: the step size must be > 0, got {eta}")
    rec = {k: np.asarray(v) for k, v in run.records.items()}
    rounds = int(rec["loss"].shape[0])
    if rounds < 1:
        raise ValueError("records: no rounds recorded")
    if np.max(rec["broadcast_spread"]) > 0:
        raise ValueError("run: the rate bounds need a global operator (same factors for everyone)")
    if not np.all(np.asarray(run.bases) == np.asarray(run.bases)[:1]):
        raise ValueError("run: the rate bounds need an operator without base_delta")
    for name, v in rec.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"records: {name!r} contains NaN or Inf values")
    key = jax.random.key(0) if key is None else key
    e_steps, s = int(local_steps), float(scale)
    base = problem.w0

    # Every iterate the run visited: round starts (client 0, global) and clients' ends.
    starts = jax.tree.map(lambda x: x[:, 0], run.starts)  # (T+1, d, r), (T+1, r, k)
    ends = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), run.ends)  # (T m, ...)
    points = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), starts, ends)
    l_power, l_dense, g_dense = _curvature(problem, points, base, s, key, power_iters)
    sq = lambda f: jnp.sum(jnp.square(f.b), (1, 2)), lambda f: jnp.sum(jnp.square(f.a), (1, 2))
    c_b = float(jnp.sqrt(jnp.max(sq[0](points))))
    c_a = float(jnp.sqrt(jnp.max(sq[1](points))))
    l_struct = s**2 * l_dense * (c_a**2 + c_b**2) + s * g_dense
    big_l = max(l_power, l_struct)
    g2 = float(np.max(rec["max_client_grad_sq"]))

    r_w = float(np.max(rec["weak_mismatch"]) / eta**2)
    r_p = float(np.max(rec["strong_mismatch_b"]) / eta**2)
    r_q = float(np.max(rec["strong_mismatch_a"]) / eta**2)
    if constants is not None:
        finite = lambda c, x: max(x, c) if np.isfinite(c) else x
        r_w = finite(constants.weak.constant, r_w)
        r_p = finite(constants.strong_b.constant, r_p)
        r_q = finite(constants.strong_a.constant, r_q)

    denom = eta * e_steps * rounds
    d_gap = float(rec["loss"][0]) - problem.f_inf
    m_term = big_l * g2 * (e_steps - 0.5)
    n_weak = s**2 * l_dense * r_w / (2 * e_steps)
    n_strong = big_l * (r_p + r_q) / (2 * e_steps)
    e_w = np.sqrt(np.maximum(rec["product_error"], 0.0))
    e_s = np.sqrt(np.maximum(rec["factor_error_b"] + rec["factor_error_a"], 0.0))
    f1_weak = float(np.sum(s * rec["dense_grad_norm_zbar"] * e_w) / denom)
    f1_strong = float(np.sum(rec["grad_norm_ybar"] * e_s) / denom)
    bound_weak = d_gap / denom + (m_term + n_weak) * eta + f1_weak
    bound_strong = d_gap / denom + (m_term + n_strong) * eta + f1_strong
    measured = float(np.mean(rec["grad_sq_norm"]))

    lhs = rec["loss_next"] - rec["loss"] + eta * e_steps * rec["grad_sq_norm"]
    local = big_l * eta**2 * g2 * (e_steps * (e_steps - 1) + e_steps / 2)
    rhs_weak = local + s * rec["dense_grad_norm_zbar"] * e_w + 0.5 * s**2 * l_dense * e_w**2
    rhs_strong = (
        local
        + rec["grad_norm_ybar"] * e_s
        + 0.5 * big_l * (rec["strong_mismatch_b"] + rec["strong_mismatch_a"])
    )
    tol = 1e-12 * max(1.0, float(np.max(np.abs(rec["loss"]))))
    slack_weak = float(np.min(rhs_weak - lhs))
    slack_strong = float(np.min(rhs_strong - lhs))
    return RateBoundReport(
        eta=float(eta),
        local_steps=e_steps,
        rounds=rounds,
        initial_gap=d_gap,
        smoothness=big_l,
        smoothness_power=l_power,
        smoothness_structural=l_struct,
        dense_smoothness=l_dense,
        grad_second_moment=g2,
        c_a=c_a,
        c_b=c_b,
        dense_grad_max=g_dense,
        weak_constant=r_w,
        strong_constants=(r_p, r_q),
        m_term=m_term,
        n_weak=n_weak,
        n_strong=n_strong,
        first_order_weak=f1_weak,
        first_order_strong=f1_strong,
        bound_weak=bound_weak,
        bound_strong=bound_strong,
        measured=measured,
        factor_weak=bound_weak / measured if measured > 0 else float("inf"),
        factor_strong=bound_strong / measured if measured > 0 else float("inf"),
        holds_weak=bool(bound_weak >= measured),
        holds_strong=bool(bound_strong >= measured),
        per_round_weak=bool(slack_weak >= -tol),
        per_round_strong=bool(slack_strong >= -tol),
        per_round_slack=(slack_weak, slack_strong),
    )


def _curvature(problem, points: LoRAFactors, base, s, key, iters):
    """``(L_power, L_F, G_F)``: max over points and clients of the factor Hessian norm of ``f_i``,
    the dense Hessian norm of ``F_i`` and the dense gradient norm ``\\|\\nabla F_i\\|_F``."""
    keys = jax.random.split(key, problem.x.shape[0])
    fn = _curvature_fn(problem.kind, float(s), int(iters))
    lf, ld, gd = fn(points, base, problem.x, problem.y, keys)
    return float(jnp.max(lf)), float(jnp.max(ld)), float(jnp.max(gd))


@functools.lru_cache(maxsize=16)
def _curvature_fn(kind: str, s: float, iters: int):
    def per(points, base, x, y, key):
        def one(f, k):
            k1, k2 = jax.random.split(k)
            lf = hessian_norm(lambda g: client_loss(kind, g, base, x, y, s), f, key=k1, iters=iters)
            w = base + s * f.b @ f.a
            ld = hessian_norm(lambda v: dense_loss(kind, v, x, y), w, key=k2, iters=iters)
            gd = jnp.sqrt(jnp.sum(jnp.square(jax.grad(lambda v: dense_loss(kind, v, x, y))(w))))
            return lf, ld, gd

        n = points.b.shape[0]
        return jax.vmap(one)(points, jax.random.split(key, n))

    return jax.jit(jax.vmap(per, in_axes=(None, None, 0, 0, 0)))
