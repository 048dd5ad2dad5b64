r"""First-order consistency of an aggregation-broadcast operator, decided by linearization.

**Our formalization and our derivation** (not a statement of arXiv:2508.01348; DESIGN.md,
"Convergence theory as code"). The weak and strong conditions bound the mismatch by ``O(delta^2)``
and so allow ``\|P Q - \bar Z\| = O(delta)``: the same order as a round's progress. An operator that
broadcasts client 0's factors satisfies both and optimizes client 0's objective only. What is
missing is first-order consistency at consensus points.

**Consensus point.** A start ``(B_0 (d, r), A_0 (r, k))``; client ``i`` (rank ``r_i``, mask
``M_i = diag(1_{j < r_i})``; ``M_i = I`` for equal ranks) holds ``B_i = B_0 M_i + delta U_i``,
``A_i = M_i A_0 + delta V_i`` with ``U_i = U_i M_i``, ``V_i = M_i V_i``. Frozen factors (FFA-LoRA's
``A``, RoLoRA's untrained one) have zero drift. With ``Pi_i(delta)`` client ``i``'s broadcast
product (``P_i Q_i + base_delta_i / s``), the operator is

1. a **fixed point** when ``Pi_i(0) = B_0 M_i A_0`` for every ``i``, and
2. **first-order consistent** when moreover ``Pi_i'(0) = T_i[x] = \bar U M_i A_0 + B_0 M_i \bar V``
   with ``\bar U = \sum_j p_j U_j``, ``\bar V = \sum_j p_j V_j``. With equal ranks this is
   ``d(PQ)/d delta = \sum_j p_j (U_j A_0 + B_0 V_j)``, i.e. ``\|PQ - \bar Z\| = o(delta)``.

With heterogeneous ranks ``T`` is the product change of one gradient step on
``F(B, A) = \sum_i p_i f_i(B M_i A)`` (every client trains the truncation of one global pair; its
drift is its masked gradient, so ``\bar U`` is ``-eta E \nabla_B F``). Such a step may also be
**preconditioned** by fixed positive per-component factors, ``\bar U -> \bar U S_B``,
``\bar V -> S_A \bar V`` (``S`` diagonal, ``> 0``): a descent direction of ``F`` with the same
stationary points. The check fits ``S`` by least squares and reports it (``rescaling``); the
``strict`` defect is the one at ``S = I``.

**Defect.** ``x = (U, V)`` with the metric ``\|x\|_p^2 = \sum_i p_i (\|U_i\|^2 + \|V_i\|^2)``;
outputs with ``\sum_i p_i \|\cdot_i\|_F^2``. The first-order defect is the operator norm of
``x -> Pi'(0)[x] - T[x]``, relative to ``\|T\|`` (``= (\|A_0\|_2^2 + \|B_0\|_2^2)^{1/2}`` for equal
ranks, both factors trained). An operator whose derivative is ``(\sum_j q_j U_j) A_0 + B_0 \sum_j
q_j V_j`` (it steps on ``\sum_j q_j f_j``) has relative defect exactly
``\chi^2(q \| p)^{1/2} = (\sum_j (q_j - p_j)^2 / p_j)^{1/2}`` (Cauchy-Schwarz in the metric, with
equality at ``U_j \propto (q_j - p_j) / p_j``): ``((1 - p_0)/p_0)^{1/2}`` for broadcasting client 0,
``(\sum_j (1/m - p_j)^2 / p_j)^{1/2}`` for an unweighted mean (:func:`mean_operator_defect`).

**The operators of abo_jax** (derived here, checked by :func:`theory.certify.certify`):

* PS: ``P = B_0 + delta \bar U``, ``Q = A_0 + delta \bar V``, so ``PQ = B_0 A_0 + delta T[x] +
  delta^2 \bar U \bar V``: consistent at every consensus point, ``B_0 = 0`` included.
* SP: ``X = (B_0 + delta \bar U)(A_0 + delta \bar V)`` has rank ``<= r``, so by Eckart-Young
  ``\|SVD_r(\bar Z) - \bar Z\| <= \|X - \bar Z\| = delta^2 \|\sum_i p_i (U_i - \bar U)(V_i -
  \bar V)\| <= delta^2 / 2``: consistent everywhere, ``B_0 = 0`` included, although SP's *factors*
  are not differentiable there (they grow like ``delta^{1/2}``). The quadratic remainder constant is
  ``K <= 1/2`` for SP and PS, ``K = 0`` for the exact operators (FedEx-LoRA, FLoRA, RoLoRA).
* HetLoRA (zero padding) at heterogeneous ranks: ``\bar B = B_0 C`` with the coverage
  ``C = diag(c_j)``, ``c_j = \sum_{i: r_i > j} p_i``, so ``Pi_i(0) = B_0 M_i C^2 A_0``: **not a fixed
  point** (a component held by few clients shrinks every round, however small the drift).
  FlexLoRA likewise: ``SVD_{r_i}(B_0 C A_0) != B_0 M_i A_0``.
* RBLA (masked average): a fixed point; its first-order step is ``\bar U C^{-1}``,
  ``C^{-1} \bar V``: strictly inconsistent, consistent with the rescaling ``S = C^{-1}``.
* FedSA-LoRA keeps each client's ``B``: ``Pi_i' = U_i A_0 + B_0 \bar V``, not the global step (it
  is a personalized operator; there is no global model to be consistent with).

**How it is computed.** ``Pi`` is linearized with :func:`jax.jvp` in float64 on the basis of live
drift coordinates. Where ``jvp`` is not finite (SP: the SVD's derivative has ``1 / (s_i^2 - s_j^2)``
terms and a consensus point has repeated zero singular values) the matrix is taken by central
differences in float64, legitimate by the Eckart-Young bound above (the remainder is
``O(delta^2)``, so the difference quotient is off by ``O(fd_step)``). Every linearization is checked
against central differences along random directions (``linearity_error``).

**Limiting constants (the upper side of certify's constants).** At a fixed point the weak ratio has
the exact limit ``lim R_w / delta^2 = \sum_i p_i \|Pi_i'(0)[x] - (U_i M_i A_0 + B_0 M_i V_i)\|^2``,
a quadratic form in ``x`` whose sup over unit ``x`` is a squared operator norm; likewise the strong
ratio from the factors' derivative when the factors are a fixed point (else the limit is ``inf``).
For a consistent operator with equal ranks ``(T - J_i)[x] = (\bar U - U_i) A_0 + B_0 (\bar V -
V_i)``, so ``lim R_w / delta^2 <= \|A_0\|_2^2 + \|B_0\|_2^2 <= C_A^2 + C_B^2`` (Cauchy-Schwarz and
``\sum_i p_i \|x_i - \bar x\|^2 <= \sum_i p_i \|x_i\|^2``; equality for ``m >= 2``). Factor averaging
(PS) has strong limit exactly ``1``. For a global operator consistency thus *implies* the weak
condition near consensus (``R_w = R_w^* + O(delta^4)`` by identity 1, with a remainder ``O(delta^2)``
in the product); the converse fails (client 0 only).

**What consistency gives (our derivation).** Let ``\Phi(W) = \sum_i p_i f_i(W)`` be ``L``-smooth in
the adapted weight ``W``, ``F(B, A) = \Phi(B A)``, ``\|\nabla f_i\| <= G`` and the factors bounded
by ``C_B, C_A`` along the run, and let each round run ``E`` local gradient steps of size ``eta`` from
the broadcast ``(B_t, A_t)``, ``W_t = B_t A_t`` (equal ranks, both factors trained). The clients'
mean factor step is ``-eta E \nabla_{B,A} F + rho``, ``\|rho\| = O(eta^2)``, whose first-order
product change is ``-eta E (\nabla\Phi A^T A + B B^T \nabla\Phi)``; ``\langle \nabla\Phi, \cdot
\rangle`` of it is ``-eta E \|\nabla_{B,A} F\|^2``. A consistent operator with remainder constant
``K`` broadcasts ``W_{t+1} = W_t - eta E (\ldots) + e_t``, ``\|e_t\| <= K delta^2 + \|rho\|
(C_A + C_B)``, ``delta = eta E G``; and ``\|W_{t+1} - W_t\|^2 <= 2 R_w + 2 \sum_i p_i \|B_i A_i -
W_t\|^2 <= 2 (R + E^2 G^2 (C_A^2 + C_B^2)) eta^2`` with ``R`` the weak constant of the certificate.
The descent lemma for ``\Phi`` gives ``F_{t+1} <= F_t - eta E \|\nabla_{B,A} F_t\|^2 + M' eta^2``,
``M' = L (R + E^2 G^2 (C_A^2 + C_B^2)) + G (K E^2 G^2 + c_\rho)``, and summed over ``T`` rounds

.. math::
    \frac1T \sum_{t<T} \|\nabla_{B,A} F(B_t, A_t)\|^2 \le \frac{D}{\eta T} + M \eta,\qquad
    D = \frac{F(B_0, A_0) - F_{\inf}}{E},\ M = \frac{M'}{E}.

A preconditioned step (``S``) gives the same with ``\|\cdot\|^2`` weighted by ``S`` and ``D``
divided by ``s_min``. **Weak alone** only gives ``\|W_{t+1} - \bar Z\| <= R^{1/2} eta``, an error of
the order of the step: the bound keeps a term ``G R^{1/2} / E`` that does not vanish as
``eta -> 0``, and broadcasting client 0 attains it (its fixed points are the stationary points of
``f_0``, not of ``F``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax import ABO, Broadcast, LoRAFactors, is_lora

__all__ = [
    "Linearization",
    "ConsistencyPoint",
    "call_operator",
    "linearize_operator",
    "limit_forms",
    "consistency_at",
    "mean_operator_defect",
    "validate_broadcast",
    "ConsistencyRate",
    "consistency_rate",
]

#: relative first-order defect below which consistency holds (jvp / finite differences)
JVP_TOL, FD_TOL = 1e-7, 1e-5
#: relative fixed-point defect below which the operator is a fixed point
FIXED_TOL = 1e-9
#: linearity error above which the broadcast product is taken as not differentiable at the point
LINEARITY_TOL = 1e-4


def mean_operator_defect(q: Any, p: Any) -> float:
    r"""Relative first-order defect of an operator that averages with weights ``q`` instead of ``p``.

    .. math:: \chi^2(q \| p)^{1/2} = \Big(\sum_j (q_j - p_j)^2 / p_j\Big)^{1/2}

    (our derivation, see the module docstring); ``q = e_0`` gives ``((1 - p_0) / p_0)^{1/2}``.

    Args:
      q: ``(m,)`` weights the operator uses.
      p: ``(m,)`` the clients' weights, all ``> 0``.

    Example:
      >>> round(mean_operator_defect([1, 0], [0.2, 0.8]), 6)
      2.0
    """
    q, p = np.asarray(q, float), np.asarray(p, float)
    return float(np.sqrt(np.sum((q - p) ** 2 / p)))


def validate_broadcast(broadcast: Any, clients: Any) -> None:
    """Checks what an operator returned against the clients it was given.

    ``broadcast.factors`` must have the clients' tree structure with a :class:`~abo_jax.LoRAFactors`
    at every LoRA node, each either one global copy (``b (d, r)``, ``a (r, k)``) or one per client
    (``b (m, d, r)``, ``a (m, r, k)``); ``base_delta`` is ``None`` or ``(d, k)`` / ``(m, d, k)``
    arrays.

    Raises:
      ValueError: naming what is wrong and what to return instead.
    """
    if not isinstance(broadcast, Broadcast):
        raise ValueError(
            f"operator: aggregate returned {type(broadcast).__name__} as the broadcast; its core "
            "must return (Broadcast(factors, base_delta), state, diagnostics)"
        )
    got, got_def = jax.tree.flatten(broadcast.factors, is_leaf=is_lora)
    want, want_def = jax.tree.flatten(clients, is_leaf=is_lora)
    if got_def != want_def:
        raise ValueError(
            f"operator: broadcast.factors has tree structure {got_def} ({len(got)} nodes), the "
            f"clients {want_def} ({len(want)} nodes); return factors with the clients' structure"
        )
    for i, (g, c) in enumerate(zip(got, want, strict=True)):
        if not is_lora(c):
            continue
        if not is_lora(g):
            raise ValueError(
                f"operator: broadcast.factors node #{i} is {type(g).__name__}, not LoRAFactors"
            )
        m, d, r = c.b.shape
        k = c.a.shape[-1]
        shapes = (tuple(np.shape(g.b)), tuple(np.shape(g.a)))
        if shapes not in (((d, r), (r, k)), ((m, d, r), (m, r, k))):
            raise ValueError(
                f"operator: broadcast.factors node #{i} has b {shapes[0]}, a {shapes[1]}; expected "
                f"one global copy b {(d, r)}, a {(r, k)} or one per client b {(m, d, r)}, "
                f"a {(m, r, k)} (the clients' shapes)"
            )
    if broadcast.base_delta is not None:
        for x in jax.tree.leaves(broadcast.base_delta):
            c = want[0] if want else None
            if c is not None and is_lora(c):
                m, d, _ = c.b.shape
                k = c.a.shape[-1]
                if tuple(np.shape(x)) not in ((d, k), (m, d, k)):
                    raise ValueError(
                        f"operator: base_delta leaf has shape {tuple(np.shape(x))}; expected "
                        f"{(d, k)} or {(m, d, k)}"
                    )


def call_operator(abo: ABO, clients: Any, weights: Any, state: Any):
    """``abo.aggregate`` with its output validated (:func:`validate_broadcast`).

    Raises:
      ValueError: the core returned ``None``, a wrong structure or wrong shapes.
    """
    try:
        out = abo.aggregate(clients, weights, state)
    except (TypeError, AttributeError) as e:
        if "NoneType" in str(e):
            raise ValueError(
                "operator: its core returned None (or None in place of the broadcast); a core "
                "must return (Broadcast(factors, base_delta), state, diagnostics)"
            ) from e
        raise
    if out is None or not isinstance(out, tuple) or len(out) != 3:
        raise ValueError(
            "operator: aggregate must return (broadcast, state, diagnostics), got "
            f"{type(out).__name__}"
        )
    validate_broadcast(out[0], clients)
    return out


def _per_client(x, m: int, ndim: int):
    return x if x.ndim == ndim + 1 else jnp.broadcast_to(x[None], (m, *x.shape))


def _outputs(abo: ABO, b, a, weights, state, scale: float):
    """Per-client effective product ``(m, d, k)`` and factors ``(m, d, r)``, ``(m, r, k)``."""
    m = b.shape[0]
    clients = {"layer0": LoRAFactors(b, a)}
    bc, _, _ = call_operator(abo, clients, weights, state)
    f = bc.factors["layer0"]
    p, q = _per_client(f.b, m, 2), _per_client(f.a, m, 2)
    prod = jnp.einsum("cdr,crk->cdk", p, q)
    if bc.base_delta is not None and jax.tree.leaves(bc.base_delta):
        prod = prod + _per_client(jax.tree.leaves(bc.base_delta)[0] / scale, m, 2)
    return prod, p, q


@dataclasses.dataclass(frozen=True)
class Linearization:
    """An operator's outputs and their derivative at a consensus point (float64 numpy).

    Attributes:
      prod0, p0, q0: outputs at ``delta = 0``: ``(m, d, k)``, ``(m, d, r)``, ``(m, r, k)``.
      jac_prod, jac_p, jac_q: derivatives along each basis drift, ``(n, m, d, k)`` etc.
      basis_b, basis_a: ``(n, m, d, r)`` and ``(n, m, r, k)``: the unit drift of each live
        coordinate (masked ranks and frozen factors have none).
      method: ``"jvp"`` or ``"finite differences"`` (jvp not finite or off the differences).
      fd_discrepancy: relative difference between jvp and central differences (nan if no jvp).
      linearity_error: relative error of the matrix against central differences along random
        directions.
    """

    prod0: np.ndarray
    p0: np.ndarray
    q0: np.ndarray
    jac_prod: np.ndarray
    jac_p: np.ndarray
    jac_q: np.ndarray
    basis_b: np.ndarray
    basis_a: np.ndarray
    method: str
    fd_discrepancy: float
    linearity_error: float


def _masks(ranks: np.ndarray, r: int) -> np.ndarray:
    return (np.arange(r)[None] < np.asarray(ranks)[:, None]).astype(float)  # (m, r)


def _rel(x, y) -> float:
    return float(np.max(np.abs(x - y), initial=0.0) / max(np.max(np.abs(y), initial=0.0), 1e-12))


_FUNCS: dict[tuple[int, float], tuple[ABO, dict]] = {}


def _functions(abo: ABO, scale: float) -> dict:
    """Jitted outputs, basis jvps and basis central differences of one operator (cached)."""
    key = (id(abo), float(scale))
    entry = _FUNCS.get(key)
    if entry is not None and entry[0] is abo:
        return entry[1]

    def g(xb, xa, sb, sa, w, state):
        return _outputs(abo, sb + xb, sa + xa, w, state, scale)

    def jvps(basis_b, basis_a, sb, sa, w, state):
        zb, za = jnp.zeros_like(sb), jnp.zeros_like(sa)
        one = lambda db, da: jax.jvp(lambda x, y: g(x, y, sb, sa, w, state), (zb, za), (db, da))[1]  # noqa: E731
        return jax.vmap(one)(basis_b, basis_a)

    def central(basis_b, basis_a, h, sb, sa, w, state):
        def one(db, da):
            plus = g(h * db, h * da, sb, sa, w, state)
            minus = g(-h * db, -h * da, sb, sa, w, state)
            return jax.tree.map(lambda x, y: (x - y) / (2 * h), plus, minus)

        return jax.vmap(one)(basis_b, basis_a)

    funcs = {"g": jax.jit(g), "jvps": jax.jit(jvps), "central": jax.jit(central)}
    _FUNCS[key] = (abo, funcs)
    return funcs


def linearize_operator(
    abo: ABO,
    b0: Any,
    a0: Any,
    weights: Any,
    *,
    ranks: Any = None,
    trainable: tuple[bool, bool] = (True, True),
    scale: float = 1.0,
    state: Any = None,
    fd_step: float = 1e-6,
    seed: int = 0,
) -> Linearization:
    """Linearizes ``delta -> (Pi(delta), P(delta), Q(delta))`` at a consensus point (float64).

    Args:
      abo: the operator.
      b0: ``(d, r)`` start; a0: ``(r, k)``.
      weights: ``(m,)``.
      ranks: ``(m,)`` client ranks (default all ``r``).
      trainable: which factors drift.
      scale: LoRA scale of ``base_delta``.
      state: operator state (default ``abo.init``).
      fd_step: central-difference step (relative to the start's size).
      seed: seed of the linearity check's directions.

    Returns:
      :class:`Linearization`.

    Cost: one jvp and two operator calls per live coordinate, ``n = m r (d + k)`` of them, and
    dense ``(m d k) x n`` matrices: meant for small consensus points (certify's are ``n <= 30``).
    """
    with jax.enable_x64(True):
        b0 = np.asarray(b0, np.float64)
        a0 = np.asarray(a0, np.float64)
        w = np.asarray(weights, np.float64)
        m, (d, r), k = w.shape[0], b0.shape, a0.shape[1]
        ranks = np.full(m, r) if ranks is None else np.asarray(ranks)
        mask = _masks(ranks, r)
        live_b = np.broadcast_to(mask[:, None, :] * trainable[0], (m, d, r))
        live_a = np.broadcast_to(mask[:, :, None] * trainable[1], (m, r, k))
        nb = m * d * r
        live = np.concatenate([live_b.ravel(), live_a.ravel()]) > 0
        eye = np.eye(live.size)[live]
        basis_b, basis_a = eye[:, :nb].reshape(-1, m, d, r), eye[:, nb:].reshape(-1, m, r, k)
        sb = jnp.asarray(b0[None] * mask[:, None, :])
        sa = jnp.asarray(a0[None] * mask[:, :, None])
        wj = jnp.asarray(w)
        if state is None:
            state = abo.init({"layer0": LoRAFactors(sb, sa)}, key=jax.random.key(0))
        f = _functions(abo, scale)
        zb, za = jnp.zeros((m, d, r)), jnp.zeros((m, r, k))
        out0 = [np.asarray(x) for x in f["g"](zb, za, sb, sa, wj, state)]
        size = max(1.0, float(np.abs(b0).max(initial=0)), float(np.abs(a0).max(initial=0)))
        h = fd_step * size
        bb, ba = jnp.asarray(basis_b), jnp.asarray(basis_a)
        # the basis and two random directions (the linearity check) in one batch: one compile
        rng = np.random.default_rng(seed)
        coef = rng.normal(size=(2, basis_b.shape[0]))
        db = jnp.concatenate([bb, jnp.asarray(np.tensordot(coef, basis_b, 1))])
        da = jnp.concatenate([ba, jnp.asarray(np.tensordot(coef, basis_a, 1))])
        n = basis_b.shape[0]
        both = [np.asarray(x) for x in f["central"](db, da, h, sb, sa, wj, state)]
        fd, direct = [x[:n] for x in both], both[0][n:]
        jac, method, discrepancy = fd, "finite differences", float("nan")
        try:
            jv = [np.asarray(x) for x in f["jvps"](bb, ba, sb, sa, wj, state)]
        except Exception:  # an operator jax cannot differentiate: central differences only
            jv = None
        if jv is not None and all(np.all(np.isfinite(x)) for x in jv):
            discrepancy = _rel(jv[0], fd[0])
            if discrepancy <= 1e-4:
                jac, method = jv, "jvp"
        lin_err = _rel(np.tensordot(coef, jac[0], 1), direct)
        return Linearization(*out0, *jac, basis_b, basis_a, method, discrepancy, lin_err)


def _op_norm(mat: np.ndarray) -> float:
    return float(np.linalg.norm(mat, 2)) if mat.size else 0.0


def _owner(lin: Linearization) -> np.ndarray:
    """``(n,)`` the client each basis drift belongs to."""
    return np.argmax(np.abs(lin.basis_b).sum((2, 3)) + np.abs(lin.basis_a).sum((2, 3)), axis=1)


def _weighted(x: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``(n, m, ...)`` derivative columns to an ``(m * prod, n)`` matrix in the ``p``-metric."""
    n, m = x.shape[:2]
    return (x * row.reshape(1, m, *([1] * (x.ndim - 2)))).reshape(n, -1).T * col[None]


@dataclasses.dataclass(frozen=True)
class ConsistencyPoint:
    r"""The consistency check at one consensus point.

    Attributes:
      start_kind: ``"standard"`` (``B_0 = 0``) or ``"generic"``.
      b0, a0, weights, ranks: the point (lists).
      fixed_point_defect: ``max_i \|Pi_i(0) - B_0 M_i A_0\|_max / max(\|B_0 M_i A_0\|_max, 1)``.
      strict_defect: ``\|Pi' - T\| / \|T\|`` (operator norms in the ``p``-metric).
      defect: the same after the best positive per-component rescaling (``= strict`` when none
        helps).
      rescaling: ``{"B": [...], "A": [...]}`` the fitted diagonal ``S`` (``None`` when ``S = I``
        or no positive rescaling removes the defect).
      method, fd_discrepancy, linearity_error: see :class:`Linearization`.
      direction: the worst drift ``{"U": (m, d, r), "V": (m, r, k)}``, unit in the metric.
      direction_defect: ``\|Pi(h) - Pi(0) - h T[x]\|_p / h`` of the real operator along it
        (float64, ``h`` = 1e-6 of the start's size): the witness re-checked without linearization.
      weak_limit: ``lim R_w / delta^2``, sup over unit drifts (``inf`` off a fixed point).
      strong_limit: ``lim (R_B + R_A) / delta^2``, sup over unit drifts (``inf`` when the factors
        are not a fixed point).
      weak_bound: ``\|A_0\|_2^2 + \|B_0\|_2^2`` (trained factors only): the bound on ``weak_limit``
        of a consistent operator with equal ranks (``nan`` otherwise).
      factor_mean: the factors' derivative is the weighted mean of the drifts (PS-like), so the
        strong limit is at most 1.
    """

    start_kind: str
    b0: list
    a0: list
    weights: list
    ranks: list
    fixed_point_defect: float
    strict_defect: float
    defect: float
    rescaling: dict | None
    method: str
    fd_discrepancy: float
    linearity_error: float
    direction: dict
    direction_defect: float
    weak_limit: float
    strong_limit: float
    weak_bound: float
    factor_mean: bool

    @property
    def tolerance(self) -> float:
        return JVP_TOL if self.method == "jvp" else FD_TOL

    @property
    def fixed_point(self) -> bool:
        return self.fixed_point_defect <= FIXED_TOL

    @property
    def differentiable(self) -> bool:
        """The derivative matrix predicts the real operator along random drifts."""
        return self.linearity_error <= LINEARITY_TOL

    @property
    def holds(self) -> bool:
        return self.fixed_point and self.differentiable and self.defect <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, v in out.items():
            if isinstance(v, float) and not np.isfinite(v):
                out[key] = str(v)
        out["holds"] = self.holds
        out["fixed_point"] = self.fixed_point
        out["differentiable"] = self.differentiable
        return out


def _fit_rescaling(jm: np.ndarray, parts: list[np.ndarray]):
    """Least-squares ``s`` in ``jm ~ sum_j s_j parts[j]``; undetermined components get 1."""
    x = np.stack([p.ravel() for p in parts], 1)
    norms = np.linalg.norm(x, axis=0)
    live = norms > 1e-12 * max(norms.max(initial=0.0), 1e-300)
    s = np.ones(len(parts))
    if live.any():
        s[live] = np.linalg.lstsq(x[:, live], jm.ravel(), rcond=None)[0]
    return s, live


def consistency_at(
    abo: ABO,
    b0: Any,
    a0: Any,
    weights: Any,
    *,
    start_kind: str = "generic",
    ranks: Any = None,
    trainable: tuple[bool, bool] = (True, True),
    scale: float = 1.0,
    state: Any = None,
    linearization: Linearization | None = None,
) -> ConsistencyPoint:
    r"""Fixed point, first-order defect and limiting constants at one consensus point.

    Args:
      abo: the operator.
      b0, a0: the start ``(d, r)``, ``(r, k)``.
      weights: ``(m,)``, all ``> 0``.
      start_kind: label.
      ranks: ``(m,)`` client ranks (default all ``r``).
      trainable: which factors drift.
      scale: LoRA scale of ``base_delta``.
      state: operator state (default ``abo.init``).
      linearization: reuse one from :func:`linearize_operator`.

    Returns:
      :class:`ConsistencyPoint`.

    Example:
      >>> import abo_jax
      >>> pt = consistency_at(abo_jax.product_sum(), np.ones((3, 1)), np.ones((1, 2)), [.5, .5])
      >>> pt.holds, round(pt.strong_limit, 6)
      (True, 1.0)
    """
    b0, a0 = np.asarray(b0, float), np.asarray(a0, float)
    w = np.asarray(weights, float)
    if w.ndim != 1 or np.any(w <= 0) or abs(w.sum() - 1) > 1e-6:
        raise ValueError(f"weights: consistency points need (m,) weights > 0 summing to 1, got {w}")
    w = w / w.sum()  # float32 weights sum to 1 only up to rounding
    m, r = w.shape[0], b0.shape[1]
    ranks = np.full(m, r) if ranks is None else np.asarray(ranks)
    lin = linearization or linearize_operator(
        abo, b0, a0, w, ranks=ranks, trainable=trainable, scale=scale, state=state
    )
    mask = _masks(ranks, r)
    bm = b0[None] * mask[:, None, :]  # B_0 M_i
    am = mask[:, :, None] * a0[None]  # M_i A_0
    target0 = np.einsum("cdr,crk->cdk", bm, am)
    fp = max(
        float(np.abs(lin.prod0[i] - target0[i]).max()) / max(float(np.abs(target0[i]).max()), 1.0)
        for i in range(m)
    )
    ub, va = lin.basis_b, lin.basis_a  # (n, m, d, r), (n, m, r, k)
    ubar = np.einsum("c,ncdr->ndr", w, ub)
    vbar = np.einsum("c,ncrk->nrk", w, va)
    # per-component pieces of T: column j of Ubar through M_i A_0, row j of Vbar through B_0 M_i
    t_b = [np.einsum("nd,c,k->ncdk", ubar[:, :, j], mask[:, j], a0[j]) for j in range(r)]
    t_a = [np.einsum("d,c,nk->ncdk", b0[:, j], mask[:, j], vbar[:, j]) for j in range(r)]
    t = sum(t_b) + sum(t_a)
    own = np.einsum("ncdr,rk->ncdk", ub, a0) + np.einsum("dr,ncrk->ncdk", b0, va)
    col, row = 1.0 / np.sqrt(w[_owner(lin)]), np.sqrt(w)
    mat = lambda x: _weighted(x, col, row)  # noqa: E731
    t_norm = max(_op_norm(mat(t)), 1e-300)
    strict = _op_norm(mat(lin.jac_prod - t)) / t_norm
    defect, rescaling, target = strict, None, t
    tol = JVP_TOL if lin.method == "jvp" else FD_TOL
    if strict > tol:
        s, live = _fit_rescaling(mat(lin.jac_prod), [mat(x) for x in t_b + t_a])
        fitted = sum(sj * x for sj, x in zip(s, t_b + t_a, strict=True))
        refit = _op_norm(mat(lin.jac_prod - fitted)) / t_norm
        if np.all(s[live] > 0) and refit <= tol:
            defect, target = refit, fitted
            rescaling = {"B": np.round(s[:r], 9).tolist(), "A": np.round(s[r:], 9).tolist()}
    defect_mat = mat(lin.jac_prod - target)
    _, _, vt = np.linalg.svd(defect_mat, full_matrices=False)
    y = vt[0] * col  # coordinates of the worst unit drift
    u_dir, v_dir = np.tensordot(y, ub, 1), np.tensordot(y, va, 1)
    # the witness re-checked on the real operator (float64 central difference, no linearization)
    f = _functions(abo, scale)
    size = max(1.0, float(np.abs(b0).max(initial=0)), float(np.abs(a0).max(initial=0)))
    h = 1e-6 * size
    if state is None:
        state = abo.init(
            {"layer0": LoRAFactors(jnp.asarray(bm), jnp.asarray(am))}, key=jax.random.key(0)
        )
    with jax.enable_x64(True):
        args = (jnp.asarray(bm), jnp.asarray(am), jnp.asarray(w), state)
        plus = np.asarray(f["g"](jnp.asarray(h * u_dir), jnp.asarray(h * v_dir), *args)[0])
        minus = np.asarray(f["g"](jnp.asarray(-h * u_dir), jnp.asarray(-h * v_dir), *args)[0])
    t_dir = np.tensordot(y, target, 1)
    resid = (plus - minus) / (2 * h) - t_dir
    direction_defect = float(np.sqrt(np.dot(w, np.sum(resid**2, (1, 2))))) / t_norm
    direction = {"U": np.round(u_dir, 12).tolist(), "V": np.round(v_dir, 12).tolist()}
    weak = _op_norm(mat(lin.jac_prod - own)) ** 2 if fp <= FIXED_TOL else float("inf")
    f_fixed = max(_rel(lin.p0, bm), _rel(lin.q0, am)) <= FIXED_TOL
    if f_fixed:
        strong = _op_norm(np.concatenate([mat(lin.jac_p - ub), mat(lin.jac_q - va)], 0)) ** 2
    else:
        strong = float("inf")
    mean_b = np.einsum("ndr,cr->ncdr", ubar, mask)
    mean_a = np.einsum("nrk,cr->ncrk", vbar, mask)
    factor_mean = f_fixed and max(_rel(lin.jac_p, mean_b), _rel(lin.jac_q, mean_a)) <= 1e-6
    equal_ranks = bool(np.all(ranks == r))
    bound = (
        trainable[1] * np.linalg.norm(b0, 2) ** 2 + trainable[0] * np.linalg.norm(a0, 2) ** 2
        if equal_ranks and strict <= tol
        else float("nan")
    )
    return ConsistencyPoint(
        start_kind=start_kind,
        b0=np.round(b0, 12).tolist(),
        a0=np.round(a0, 12).tolist(),
        weights=np.round(w, 12).tolist(),
        ranks=[int(x) for x in ranks],
        fixed_point_defect=float(fp),
        strict_defect=float(strict),
        defect=float(defect),
        rescaling=rescaling,
        method=lin.method,
        fd_discrepancy=lin.fd_discrepancy,
        linearity_error=lin.linearity_error,
        direction=direction,
        direction_defect=direction_defect,
        weak_limit=float(weak),
        strong_limit=float(strong),
        weak_bound=float(bound),
        factor_mean=bool(factor_mean),
    )


def limit_forms(
    lin: Linearization, b0: Any, a0: Any, weights: Any, u: Any, v: Any, *, ranks: Any = None
) -> tuple[float, float]:
    r"""``lim R_w / delta^2`` and ``lim (R_B + R_A) / delta^2`` along one drift ``x = (U, V)``.

    .. math::
        \lim_{\delta \to 0} \frac{R_w}{\delta^2} = \sum_i p_i \|\Pi_i'(0)[x] - (U_i M_i A_0 +
        B_0 M_i V_i)\|_F^2,\qquad
        \lim_{\delta \to 0} \frac{R_B + R_A}{\delta^2} = \sum_i p_i (\|P_i'(0)[x] - U_i\|_F^2 +
        \|Q_i'(0)[x] - V_i\|_F^2)

    (``inf`` when the product, resp. the factors, are not a fixed point). The sup of these over
    unit ``x`` are :attr:`ConsistencyPoint.weak_limit` and ``strong_limit``.

    Args:
      lin: from :func:`linearize_operator` at ``(b0, a0, weights, ranks)``.
      b0, a0: ``(d, r)``, ``(r, k)``.
      weights: ``(m,)``.
      u, v: ``(m, d, r)``, ``(m, r, k)`` (components off the live coordinates are ignored).
      ranks: ``(m,)`` (default all ``r``).

    Returns:
      ``(weak, strong)`` floats.
    """
    b0, a0, w = np.asarray(b0, float), np.asarray(a0, float), np.asarray(weights, float)
    m, r = w.shape[0], b0.shape[1]
    mask = _masks(np.full(m, r) if ranks is None else np.asarray(ranks), r)
    bm, am = b0[None] * mask[:, None, :], mask[:, :, None] * a0[None]
    y = np.tensordot(lin.basis_b, np.asarray(u), 3) + np.tensordot(lin.basis_a, np.asarray(v), 3)
    ub, va = np.tensordot(y, lin.basis_b, 1), np.tensordot(y, lin.basis_a, 1)
    own = np.einsum("cdr,rk->cdk", ub, a0) + np.einsum("dr,crk->cdk", b0, va)
    target0 = np.einsum("cdr,crk->cdk", bm, am)
    fixed = np.abs(lin.prod0 - target0).max() <= FIXED_TOL * max(np.abs(target0).max(), 1.0)
    weak = float("inf")
    if fixed:
        weak = float(np.dot(w, np.sum((np.tensordot(y, lin.jac_prod, 1) - own) ** 2, (1, 2))))
    strong = float("inf")
    if max(_rel(lin.p0, bm), _rel(lin.q0, am)) <= FIXED_TOL:
        dp = np.tensordot(y, lin.jac_p, 1) - ub
        dq = np.tensordot(y, lin.jac_q, 1) - va
        strong = float(np.dot(w, np.sum(dp**2, (1, 2)) + np.sum(dq**2, (1, 2))))
    return weak, strong


@dataclasses.dataclass(frozen=True)
class ConsistencyRate:
    """The constants of the rate bound under weak + consistency (our derivation, module docstring).

    ``(1/T) sum_t ||grad_{B,A} F(B_t, A_t)||^2 <= D / (eta T) + M eta`` for the global objective
    ``F = sum_i p_i f_i``, with ``D = (F_0 - F_inf) / E`` and
    ``M = (L (R + E^2 G^2 (C_A^2 + C_B^2)) + G (K E^2 G^2 + c_rho)) / E``.

    Attributes:
      d: ``D``.
      m: ``M``.
    """

    d: float
    m: float

    def bound(self, eta: float, rounds: int) -> float:
        """``D / (eta T) + M eta``."""
        return self.d / (float(eta) * int(rounds)) + self.m * float(eta)

    def best_eta(self, rounds: int) -> float:
        """The step size minimizing the bound, ``(D / (M T))^{1/2}`` (bound ``2 (D M / T)^{1/2}``)."""
        return float(np.sqrt(self.d / (self.m * int(rounds))))


def consistency_rate(
    *,
    weak_constant: float,
    remainder: float,
    smoothness: float,
    gradient_bound: float,
    local_steps: int,
    factor_bounds: tuple[float, float],
    initial_gap: float,
    local_remainder: float = 0.0,
) -> ConsistencyRate:
    """The rate constants ``D``, ``M`` of weak + consistency from a certificate's constants.

    Args:
      weak_constant: ``R``, the weak condition's constant (``certify``'s upper side, or the
        bounded-factor bound ``C_A^2 + C_B^2`` for a consistent operator with equal ranks).
      remainder: ``K`` with ``||Pi - Zbar|| <= K delta^2`` (``1/2`` for SP and PS on unit drifts;
        ``tests/properties/test_consistency_properties.py``).
      smoothness: ``L``, the smoothness of every ``f_i`` in the adapted weight.
      gradient_bound: ``G >= ||grad f_i||`` along the run.
      local_steps: ``E >= 1``, local gradient steps per round.
      factor_bounds: ``(C_B, C_A)``, bounds on the factors' norms along the run.
      initial_gap: ``F(B_0, A_0) - F_inf >= 0``.
      local_remainder: ``c_rho``, the second-order constant of the clients' mean factor step
        (``0`` for one local step of gradient descent on a quadratic; measure it otherwise).

    Raises:
      ValueError: a negative or non-finite constant, or ``local_steps < 1``, named.
    """
    values = {
        "weak_constant": weak_constant,
        "remainder": remainder,
        "smoothness": smoothness,
        "gradient_bound": gradient_bound,
        "initial_gap": initial_gap,
        "local_remainder": local_remainder,
        "factor_bounds[0]": factor_bounds[0],
        "factor_bounds[1]": factor_bounds[1],
    }
    for name, value in values.items():
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: must be finite and >= 0, got {value!r}")
    e = int(local_steps)
    if e < 1:
        raise ValueError(f"local_steps: must be >= 1, got {local_steps!r}")
    c_b, c_a = (float(c) for c in factor_bounds)
    g, drift = float(gradient_bound), e**2 * float(gradient_bound) ** 2
    m_prime = smoothness * (weak_constant + drift * (c_a**2 + c_b**2)) + g * (
        remainder * drift + local_remainder
    )
    return ConsistencyRate(d=float(initial_gap) / e, m=float(m_prime) / e)
