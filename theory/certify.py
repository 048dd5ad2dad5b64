r"""``certify``: check an aggregation-broadcast operator against the theory without a training run.

**Our formalization** of the conditions of Chen et al., arXiv:2508.01348 (DESIGN.md, "Convergence
theory as code"). Three kinds of checks:

1. **Exact identities** 1-9 of DESIGN.md on random float64 inputs. Which apply is decided by what the
   operator returns on generic inputs: *global* (every client receives the same factors), *PS-like*
   (the factors are the averages ``(\bar B, \bar A)``), *SP-like* (global, no ``base_delta``, and the
   product depends on the clients' products only). Each identity is reported as ``holds``,
   ``violated`` or ``n/a`` with its largest relative error.
2. **Conditions as drift -> 0.** Clients are a common start plus perturbations of size ``delta``
   (``B_i = B_0 + delta U_i``, ``A_i = A_0 + delta V_i`` with ``sum_i p_i (\|U_i\|^2 + \|V_i\|^2)
   = 1``), which is what a round of local training with step ``eta`` does (``delta ~ eta E G``).
   The weak condition holds when ``sup R_w / delta^2`` stays bounded as ``delta -> 0``, the strong
   one when ``sup (R_B + R_A) / delta^2`` does. The sup over inputs is searched by Hypothesis
   (starts: the standard ``B_0 = 0`` and generic ones; a violation is an input whose ratio grows by
   ``x100`` when ``delta`` shrinks ``x100``, and Hypothesis shrinks it to a minimal counterexample)
   and by gradient ascent (``jax.grad``) over the perturbation directions at each ``delta`` of a
   geometric sweep, decided by :func:`theory.conditions.growth_verdict`. Each constant is reported
   from both sides: the search's worst ratio (a lower bound on the sup, re-computed in float64) and
   the exact limit ``delta -> 0`` at the worst start found (the operator norm of the linearized
   operator, :mod:`theory.consistency`), with the bounded-factor closed form where one applies.
3. **First-order consistency** (:func:`check_consistency`): fixed point and the derivative of the
   broadcast product against the weighted mean of the clients', exact by linearization at
   consensus points. Weak or strong holding without it does not mean convergence to a stationary
   point of ``F = sum_i p_i f_i``; the report's verdict lines say so.

Before any search the operator is run on two small inputs and its output checked (a
:class:`abo_jax.Broadcast` with the clients' tree, factors as one global copy or one per client):
an operator returning ``None``, another structure or other shapes is rejected with a
``ValueError`` naming the problem. Heterogeneous-rank factories are certified through
:func:`with_client_ranks` (by name: ``hetlora``, ``rbla``, ``flexlora``).

A ``base_delta`` counts in the product: the effective broadcast product is ``P Q + base_delta / s``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample, Unsatisfiable

from abo_jax import ABO, LoRAFactors
from abo_jax.aggregation import EmptyState, broadcast_to_clients
from abo_jax.aggregation.registry import LORA_OPERATORS, RANKED_OPERATORS
from abo_jax.lora import lora_leaves
from theory import strategies
from theory.conditions import BOUNDED, INSUFFICIENT, UNBOUNDED, GrowthEvidence, growth_verdict
from theory.consistency import (
    ConsistencyPoint,
    call_operator,
    consistency_at,
    limit_forms,
    linearize_operator,
)
from theory.functionals import strong_mismatch, weak_mismatch

__all__ = [
    "HOLDS",
    "VIOLATED",
    "NOT_APPLICABLE",
    "KNOWN_OPERATORS",
    "IdentityCheck",
    "ConditionCheck",
    "CertifyReport",
    "certify",
    "check_identities",
    "available_operators",
    "resolve_operator",
    "ConsistencyCheck",
    "check_consistency",
    "default_client_ranks",
    "with_client_ranks",
]

HOLDS, VIOLATED, NOT_APPLICABLE = "holds", "violated", "n/a"

#: the operators certify knows by name: abo_jax's registry of LoRA operators
KNOWN_OPERATORS = tuple(LORA_OPERATORS)

IDENTITY_NAMES = {
    1: "R_w = R_w* + ||PQ - Zbar||^2",
    2: "SP: ||Zbar - PQ||^2 = tail_r",
    3: "SP: R_w <= R_w(PS)",
    4: "PS: Zbar - PQ = covariance form",
    5: "PS: R_B = R_B*, R_A = R_A*",
    6: "strong implies weak (per client)",
    7: "product-only (gauge invariant)",
    8: "exactness cases",
    9: "permutation invariance",
}


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------


def default_client_ranks(m: int, r: int) -> np.ndarray:
    """Heterogeneous ranks certify gives ``m`` clients of padded rank ``r``: ``max(1, r - i)``.

    Client 0 holds every component, the others fewer: ``(3, 2) -> [2, 1, 1]``; equal ranks when
    ``r = 1`` or ``m = 1``.
    """
    return np.maximum(1, r - np.arange(m)).astype(np.int64)


#: id(wrapper) -> (wrapper, ranks function) for operators built by :func:`with_client_ranks`
_RANKED: dict[int, tuple[ABO, Callable[[int, int], np.ndarray]]] = {}


def with_client_ranks(
    factory: Callable[[Any], ABO],
    ranks: Callable[[int, int], Any] = default_client_ranks,
) -> ABO:
    """A heterogeneous-rank operator for any number of clients, for :func:`certify`.

    ``factory(client_ranks)`` (``abo_jax.hetlora``, ``rbla``, ``flexlora``) fixes ``m`` through its
    ranks; certify needs the operator at several ``m``. The wrapper builds
    ``factory(ranks(m, min(r, d, k)))`` at trace time from the clients' shapes (first LoRA layer)
    and certify masks every client to its rank (``B_i M_i``, ``M_i A_i``) before comparing.

    Args:
      factory: ``client_ranks -> ABO`` (stateless).
      ranks: ``(m, r) -> (m,)`` integer ranks ``1 <= r_i <= r`` (default
        :func:`default_client_ranks`).

    Returns:
      An :class:`abo_jax.ABO`.
    """
    built: dict[tuple[int, ...], ABO] = {}

    def operator_for(clients) -> ABO:
        f = lora_leaves(clients)[0]
        m, d, r = f.b.shape[-3:]
        key = tuple(int(x) for x in np.asarray(ranks(m, min(r, d, f.a.shape[-1]))))
        if key not in built:
            built[key] = factory(list(key))
        return built[key]

    def init(clients=None, *, key=None):
        return operator_for(clients).init(clients, key=key) if clients is not None else EmptyState()

    def aggregate(clients, weights, state, **kw):
        return operator_for(clients).aggregate(clients, weights, state, **kw)

    abo = ABO(init, aggregate)
    _RANKED[id(abo)] = (abo, ranks)
    return abo


def _ranks_fn(abo: ABO) -> Callable[[int, int], np.ndarray] | None:
    entry = _RANKED.get(id(abo))
    return entry[1] if entry is not None and entry[0] is abo else None


def _ranks(abo: ABO, m: int, r: int) -> np.ndarray:
    fn = _ranks_fn(abo)
    return np.full(m, r, np.int64) if fn is None else np.asarray(fn(m, r), np.int64)


def _mask(b: np.ndarray, a: np.ndarray, ranks: np.ndarray):
    """Clients truncated to their ranks: ``B_i M_i``, ``M_i A_i`` (numpy or jax arrays)."""
    mask = (np.arange(b.shape[-1])[None] < np.asarray(ranks)[:, None]).astype(float)
    return b * mask[:, None, :], a * mask[:, :, None]


def _trainable_in(abo: ABO, state) -> tuple[bool, bool]:
    """Which factors clients train in ``state``: ``abo.traits.trainable`` where the operator
    declares traits, else the state's ``trainable_factors()`` (both when neither says)."""
    traits = getattr(abo, "traits", None)
    fn = getattr(traits, "trainable", None)
    try:
        t = fn(state) if fn is not None else None
    except Exception:  # a trait written for another state type: fall back to the state's method
        t = None
    if t is None:
        method = getattr(state, "trainable_factors", None)
        if method is None:
            return True, True
        t = method()
    return bool(np.asarray(t.b)), bool(np.asarray(t.a))


def _trainable(abo: ABO) -> tuple[bool, bool]:
    """Which factors clients train under this operator at its initial state (FFA-LoRA freezes
    ``A``; RoLoRA alternates and starts with ``B``)."""
    probe = {"layer0": LoRAFactors(jnp.zeros((2, 3, 1)), jnp.ones((2, 1, 3)))}
    return _trainable_in(abo, abo.init(probe, key=jax.random.key(0)))


def _freeze(b: np.ndarray, a: np.ndarray, trainable: tuple[bool, bool]):
    """Clients' copies of a frozen factor are identical (client 0's)."""
    if not trainable[0]:
        b = np.broadcast_to(b[:1], b.shape).copy()
    if not trainable[1]:
        a = np.broadcast_to(a[:1], a.shape).copy()
    return b, a


def _factory(name: str) -> Callable[[], ABO] | None:
    factory = LORA_OPERATORS.get(name)
    if factory is None or name not in RANKED_OPERATORS:
        return factory
    return lambda: with_client_ranks(factory)


def _probe(abo: ABO) -> None:
    b = np.arange(6.0).reshape(2, 3, 1) / 6
    a = np.arange(6.0).reshape(2, 1, 3) / 5 + 1
    b, a = _freeze(b, a, _trainable(abo))
    clients = {"layer0": LoRAFactors(jnp.asarray(b), jnp.asarray(a))}
    bc, _, _ = abo.aggregate(
        clients, jnp.array([0.5, 0.5]), abo.init(clients, key=jax.random.key(0))
    )
    jax.block_until_ready(bc)


def available_operators(*, include_ranked: bool = False) -> dict[str, Callable[[], ABO]]:
    """The operators of :data:`KNOWN_OPERATORS` present in ``abo_jax`` and usable with defaults.

    An operator counts when its factory takes no required argument and it aggregates a tiny stacked
    client tree; operators still being written are left out. With ``include_ranked`` the
    heterogeneous-rank factories of :data:`RANKED_OPERATORS` are included, wrapped by
    :func:`with_client_ranks` (default ranks; their ranks belong to client positions, so they are
    not permutation invariant).
    """
    out = {}
    for name in KNOWN_OPERATORS:
        if name in RANKED_OPERATORS and not include_ranked:
            continue
        factory = _factory(name)
        if factory is None:
            continue
        try:
            _probe(factory())
        except Exception:  # an operator that cannot run with defaults is not certifiable by name
            continue
        out[name] = factory
    return out


def resolve_operator(spec: str) -> tuple[str, ABO]:
    """An operator from a name (``"sum_product"``) or ``"module:function"`` (factory or ABO).

    Raises:
      ValueError: unknown name, missing module or attribute, or not an :class:`abo_jax.ABO`.
    """
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"operator {spec!r}: cannot import ({e})") from e
        abo = obj if isinstance(obj, ABO) else obj() if callable(obj) else None
        if not isinstance(abo, ABO):
            raise ValueError(f"operator {spec!r}: expected an ABO or a factory returning one")
        return spec, abo
    factory = _factory(spec) if spec in KNOWN_OPERATORS else None
    if factory is None:
        raise ValueError(
            f"operator {spec!r}: unknown; use one of "
            f"{sorted(available_operators(include_ranked=True))} "
            "or 'module:function'"
        )
    return spec, factory()


# ---------------------------------------------------------------------------------------------
# Exact identities
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdentityCheck:
    """One DESIGN.md identity on one operator."""

    number: int
    name: str
    status: str  # "holds", "violated" or "n/a"
    max_rel_error: float  # largest relative error over the cases (nan when n/a)
    note: str = ""


_JITTED: dict[int, tuple[ABO, Callable]] = {}


def _aggregate(abo: ABO, clients, weights, state):
    """``abo.aggregate`` jitted once per operator (one compile per shape), eager if it cannot jit."""
    entry = _JITTED.get(id(abo))
    if entry is None or entry[0] is not abo:
        entry = (abo, jax.jit(lambda c, w, s: abo.aggregate(c, w, s)))
        _JITTED[id(abo)] = entry
    try:
        return entry[1](clients, weights, state)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
        return abo.aggregate(clients, weights, state)


def _apply(abo: ABO, b: np.ndarray, a: np.ndarray, w: np.ndarray, scale: float):
    """Runs the operator on one layer; returns ``P (m,d,r)``, ``Q (m,r,k)``, delta/s or None."""
    clients = {"layer0": LoRAFactors(jnp.asarray(b), jnp.asarray(a))}
    if not np.all(np.isfinite(b)) or not np.all(np.isfinite(a)):
        raise ValueError("clients: contain NaN or Inf values")
    state = abo.init(clients, key=jax.random.key(0))
    bc, _, _ = _aggregate(abo, clients, jnp.asarray(w), state)
    f = jax.tree.leaves(bc.factors, is_leaf=lambda x: isinstance(x, LoRAFactors))[0]
    p, q = np.asarray(f.b), np.asarray(f.a)
    m = b.shape[0]
    if p.ndim == 2:
        p, q = np.broadcast_to(p, (m, *p.shape)), np.broadcast_to(q, (m, *q.shape))
    delta = None
    if bc.base_delta is not None and jax.tree.leaves(bc.base_delta):
        x = np.asarray(jax.tree.leaves(bc.base_delta)[0]) / scale
        delta = x if x.ndim == 3 else np.broadcast_to(x, (m, *x.shape))
    return p, q, delta


def _product(p, q, delta):
    prod = np.einsum("cdr,crk->cdk", p, q)
    return prod if delta is None else prod + delta


def _rel(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(
        np.max(np.abs(x - y), initial=0.0) / max(1e-300, np.max(np.abs(y), initial=0.0), 1.0)
    )


def _zbar(b, a, w):
    return np.einsum("c,cdr,crk->dk", w, b, a)


def _r_w(prod, b, a, w):
    return float(np.dot(w, np.sum((prod - np.einsum("cdr,crk->cdk", b, a)) ** 2, axis=(1, 2))))


def check_identities(
    abo: ABO, *, cases: int = 3, seed: int = 0, scale: float = 1.0, tol: float = 1e-8
) -> tuple[list[IdentityCheck], dict[str, bool]]:
    """Checks DESIGN.md identities 1-9 that apply to ``abo`` on random float64 inputs.

    Args:
      abo: the operator.
      cases: random input sets (shapes ``m=3, d=6, k=5, r=2`` and ``m=4, d=4, k=7, r=1``).
      seed: numpy seed.
      scale: LoRA scale ``s`` of ``base_delta``.
      tol: relative tolerance for "holds".

    Returns:
      ``(checks, traits)``: one :class:`IdentityCheck` per identity, and the traits used to decide
      applicability (``global``, ``ps_like``, ``sp_like``, ``product_only``, ``exact_in_product``).
    """
    rng = np.random.default_rng(seed)
    shapes = [(3, 6, 5, 2), (4, 4, 7, 1)]
    errs: dict[int, list[float]] = {i: [] for i in range(1, 10)}
    traits = {"global": True, "ps_like": True, "product_only": True, "exact_in_product": True,
              "base_delta": False}  # fmt: skip
    notes: dict[int, str] = {}
    data = []
    trainable = _trainable(abo)
    frozen = not all(trainable)
    ranked = _ranks_fn(abo) is not None
    for c in range(cases):
        m, d, k, r = shapes[c % len(shapes)]
        b, a = _freeze(rng.normal(size=(m, d, r)), rng.normal(size=(m, r, k)), trainable)
        b, a = _mask(b, a, _ranks(abo, m, r))
        w = rng.dirichlet(np.ones(m))
        p, q, delta = _apply(abo, b, a, w, scale)
        prod = _product(p, q, delta)
        zbar = _zbar(b, a, w)
        bbar, abar = np.einsum("c,cdr->dr", w, b), np.einsum("c,crk->rk", w, a)
        glob = (
            _rel(p, np.broadcast_to(p[:1], p.shape)) < 1e-12
            and _rel(q, np.broadcast_to(q[:1], q.shape)) < 1e-12
        )
        glob = glob and (
            delta is None or _rel(delta, np.broadcast_to(delta[:1], delta.shape)) < 1e-12
        )
        traits["global"] &= glob
        traits["base_delta"] |= delta is not None
        traits["ps_like"] &= (
            glob and _rel(p[0], bbar) < tol and _rel(q[0], abar) < tol and delta is None
        )
        traits["exact_in_product"] &= _rel(prod, np.broadcast_to(zbar, prod.shape)) < tol
        # a per-client gauge would unfreeze a frozen factor (or mix masked components): identity 7
        # does not apply then
        g = (
            np.broadcast_to(np.eye(r), (m, r, r))
            if frozen or ranked
            else np.eye(r)[None] + 0.3 * rng.normal(size=(m, r, r))
        )
        p2, q2, d2 = _apply(
            abo,
            np.einsum("cdr,crs->cds", b, g),
            np.einsum("crs,csk->crk", np.linalg.inv(g), a),
            w,
            scale,
        )
        err7 = _rel(_product(p2, q2, d2), prod)
        errs[7].append(err7)
        traits["product_only"] &= err7 < tol
        perm = rng.permutation(m)
        p3, q3, d3 = _apply(abo, b[perm], a[perm], w[perm], scale)
        errs[9].append(_rel(_product(p3, q3, d3), prod[perm]))
        data.append((b, a, w, p, q, delta, prod, zbar, bbar, abar))
    traits["frozen_factor"] = frozen
    traits["heterogeneous_ranks"] = ranked
    # untested when frozen or ranked
    traits["product_only"] = traits["product_only"] and not frozen and not ranked
    traits["sp_like"] = (
        traits["global"]
        and not traits["base_delta"]
        and traits["product_only"]
        and not traits["ps_like"]
    )

    applies = {
        1: traits["global"], 2: traits["sp_like"], 3: traits["sp_like"], 4: traits["ps_like"],
        5: traits["ps_like"], 6: traits["global"], 7: not (frozen or ranked), 8: traits["global"],
        9: not ranked,  # ranks belong to client positions: a permutation changes the operator
    }  # fmt: skip
    for b, a, w, p, q, _delta, prod, zbar, bbar, abar in data:
        m, _, r = b.shape
        if applies[1]:
            r_w = _r_w(prod, b, a, w)
            r_star = _r_w(np.broadcast_to(zbar, prod.shape), b, a, w)
            errs[1].append(abs(r_w - r_star - np.sum((prod[0] - zbar) ** 2)) / max(r_w, 1e-300))
        if applies[2]:
            s = np.linalg.svd(zbar, compute_uv=False)
            tail = np.sum(s[r:] ** 2)
            errs[2].append(abs(np.sum((zbar - prod[0]) ** 2) - tail) / max(tail, 1e-12 * s[0] ** 2))
        if applies[3]:
            r_ps = _r_w(np.broadcast_to(bbar @ abar, prod.shape), b, a, w)
            errs[3].append(max(0.0, _r_w(prod, b, a, w) - r_ps) / r_ps)
        if applies[4]:
            cov = np.einsum("c,cdr,crk->dk", w, b - bbar, a - abar)
            errs[4].append(_rel(zbar - prod[0], cov))
        if applies[5]:
            rb = np.dot(w, np.sum((p - b) ** 2, (1, 2)))
            rb_star = np.dot(w, np.sum((bbar - b) ** 2, (1, 2)))
            ra = np.dot(w, np.sum((q - a) ** 2, (1, 2)))
            ra_star = np.dot(w, np.sum((abar - a) ** 2, (1, 2)))
            # relative to the factors' size: a frozen factor has R* = 0 exactly
            size = np.dot(w, np.sum(b**2, (1, 2)) + np.sum(a**2, (1, 2)))
            errs[5].append(max(abs(rb - rb_star), abs(ra - ra_star)) / size)
        if applies[6]:
            pq = p[0] @ q[0]
            for i in range(m):
                lhs = np.linalg.norm(pq - b[i] @ a[i])
                rhs = np.linalg.norm(p[0] - b[i]) * np.linalg.norm(q[0], 2) + np.linalg.norm(
                    b[i], 2
                ) * np.linalg.norm(q[0] - a[i])
                errs[6].append(max(0.0, lhs - rhs) / max(rhs, 1e-300))
        if applies[8]:
            same_b, same_a = np.broadcast_to(b[:1], b.shape), np.broadcast_to(a[:1], a.shape)
            p1, q1, d1 = _apply(abo, same_b, same_a, w, scale)
            scale0 = np.sum((b[0] @ a[0]) ** 2)
            errs[8].append(_r_w(_product(p1, q1, d1), same_b, same_a, w) / scale0)
            p1, q1, d1 = _apply(abo, b[:1], a[:1], np.ones(1), scale)
            errs[8].append(_rel(_product(p1, q1, d1)[0], b[0] @ a[0]))
            if traits["ps_like"] or traits["sp_like"]:
                p1, q1, d1 = _apply(abo, b, same_a, w, scale)
                errs[8].append(_rel(_product(p1, q1, d1)[0], _zbar(b, same_a, w)))
            if traits["ps_like"]:
                p1, q1, d1 = _apply(abo, same_b, a, w, scale)
                errs[8].append(_rel(_product(p1, q1, d1)[0], _zbar(same_b, a, w)))
    notes[7] = (
        "expected to fail for factor-averaging (PS-like) operators" if traits["ps_like"] else ""
    )
    notes[8] = "identical clients give R_w = 0; one client exact" + (
        "; shared A (and B for PS) exact" if traits["ps_like"] or traits["sp_like"] else ""
    )
    checks = []
    for i in range(1, 10):
        if not applies[i]:
            checks.append(IdentityCheck(i, IDENTITY_NAMES[i], NOT_APPLICABLE, float("nan"), ""))
            continue
        err = float(max(errs[i])) if errs[i] else 0.0
        # identity 2/4 compare squared norms / matrices built from SVDs: allow the SVD's accuracy
        limit = tol * (1e2 if i in (2, 3) else 1.0)
        checks.append(
            IdentityCheck(
                i, IDENTITY_NAMES[i], HOLDS if err <= limit else VIOLATED, err, notes.get(i, "")
            )
        )
    return checks, traits


# ---------------------------------------------------------------------------------------------
# Conditions as drift -> 0
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConditionCheck:
    """The weak or strong condition on an operator, as the drift ``delta -> 0``.

    Attributes:
      condition: ``"weak"`` or ``"strong"``.
      status: ``"holds"``, ``"violated"`` or ``"insufficient evidence"``.
      constant: estimated ``sup R / delta^2`` when it holds (``inf`` when violated).
      evidence: the gradient-ascent sweep (:class:`theory.conditions.GrowthEvidence`).
      hypothesis_examples: inputs Hypothesis tried.
      counterexample: when violated, the minimal input found (shapes, start, weights, directions,
        ratios at the two deltas), else ``None``.
      two_sided: both sides of the constant (see :func:`_two_sided`): ``lower`` (the search's
        witness ratio at the smallest ``delta``, a lower bound on the sup), ``lower_float64`` (the
        witness re-computed in float64 numpy), ``limit_at_witness`` (the exact limit of the
        witness direction's ratio as ``delta -> 0``), ``upper`` (the exact limiting constant at the
        witness start: the sup over unit directions of the linearized ratio), ``bound`` (the
        bounded-factor closed form at that start where one applies, else ``None``), ``gap``
        (``upper - lower``), ``witness`` (start, weights, ranks, direction, ``delta``).
    """

    condition: str
    status: str
    constant: float
    evidence: GrowthEvidence
    hypothesis_examples: int
    counterexample: dict | None
    two_sided: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "status": self.status,
            "constant": self.constant if np.isfinite(self.constant) else str(self.constant),
            "evidence": self.evidence.to_dict(),
            "hypothesis_examples": self.hypothesis_examples,
            "counterexample": self.counterexample,
            "two_sided": _jsonable(self.two_sided),
        }


def _jsonable(x: Any) -> Any:
    """Non-finite floats as strings, arrays as lists (JSON has neither)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(np.round(x.astype(float), 12).tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else str(float(x))
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def _mismatch_np(abo, case: strategies.PerturbationSet, delta: float, scale: float):
    """``(R_w, R_B + R_A)`` of the case at ``delta`` in float64 numpy (clients masked to ranks)."""
    f = case.start["layer0"]
    dirs = case.directions["layer0"]
    b = np.asarray(f.b)[None] + delta * np.asarray(dirs.b)
    a = np.asarray(f.a)[None] + delta * np.asarray(dirs.a)
    b, a = _mask(b, a, _ranks(abo, b.shape[0], b.shape[2]))
    w = np.asarray(case.weights)
    p, q, dl = _apply(abo, b, a, w, scale)
    r_w = _r_w(_product(p, q, dl), b, a, w)
    r_s = float(np.dot(w, np.sum((p - b) ** 2, (1, 2)) + np.sum((q - a) ** 2, (1, 2))))
    return r_w, r_s


def _restrict(case: strategies.PerturbationSet, trainable: tuple[bool, bool]):
    """The case with frozen factors unperturbed (renormalized); ``None`` if nothing moves."""
    if all(trainable):
        return case
    dirs = case.directions["layer0"]
    u = np.asarray(dirs.b) * trainable[0]
    v = np.asarray(dirs.a) * trainable[1]
    w = np.asarray(case.weights)
    norm2 = float(np.dot(w, (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    if norm2 == 0.0:
        return None
    dirs = LoRAFactors(jnp.asarray(u / np.sqrt(norm2)), jnp.asarray(v / np.sqrt(norm2)))
    return case._replace(directions={"layer0": dirs})


def _describe(case: strategies.PerturbationSet, ratios: tuple[float, float], deltas) -> dict:
    f, dirs = case.start["layer0"], case.directions["layer0"]
    m, d, r = dirs.b.shape
    tolist = lambda x: np.round(np.asarray(x, float), 12).tolist()
    return {
        "shape": {"m": int(m), "d": int(d), "k": int(dirs.a.shape[2]), "r": int(r)},
        "start_kind": case.start_kind,
        "start": {"B0": tolist(f.b), "A0": tolist(f.a)},
        "weights": tolist(case.weights),
        "directions": {"U": tolist(dirs.b), "V": tolist(dirs.a)},
        "deltas": list(deltas),
        "ratios": list(ratios),
    }


def _ascent_fn(abo: ABO, condition: str, scale: float, trainable: tuple[bool, bool]):
    def objective(raw, start, weights, delta, state, mask):
        # drifts of frozen factors and of components beyond a client's rank are zero
        raw = LoRAFactors(
            raw.b * float(trainable[0]) * mask[:, None, :],
            raw.a * float(trainable[1]) * mask[:, :, None],
        )
        norm2 = jnp.dot(weights, jnp.sum(raw.b**2, (1, 2)) + jnp.sum(raw.a**2, (1, 2)))
        dirs = jax.tree.map(lambda x: x / jnp.sqrt(norm2), raw)
        b = start.b[None] * mask[:, None, :] + delta * dirs.b
        a = start.a[None] * mask[:, :, None] + delta * dirs.a
        clients = {"layer0": LoRAFactors(b, a)}
        bc, _, _ = abo.aggregate(clients, weights, state)
        if condition == "weak":
            value = weak_mismatch(clients, weights, bc, scale=scale).total
        else:
            rb, ra = strong_mismatch(clients, weights, bc)
            value = rb.total + ra.total
        return jnp.log(value + 1e-300) - 2 * jnp.log(delta)

    return jax.jit(jax.value_and_grad(objective))


def _unit_direction(raw: LoRAFactors, weights, trainable, mask) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(raw.b) * trainable[0] * mask[:, None, :]
    v = np.asarray(raw.a) * trainable[1] * mask[:, :, None]
    norm = np.sqrt(np.dot(np.asarray(weights), (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    return u / norm, v / norm


def _ascent_sweep(abo, condition, deltas, *, restarts, steps, seed, scale):
    """Worst ratio per delta from gradient ascent over the directions, two kinds of start.

    Returns:
      ``(worst (len(deltas),), witness)``: the witness is the input of the worst ratio at the
      smallest ``delta`` (start, weights, ranks, unit direction).
    """
    # Starts from one stream, restarts from another: a thorough run tries a superset of a fast one.
    rng, rng_dirs = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    m, d, k, r = 3, 4, 3, 2
    trainable = _trainable(abo)
    fn = _ascent_fn(abo, condition, scale, trainable)
    ranks = _ranks(abo, m, r)
    mask = (np.arange(r)[None] < ranks[:, None]).astype(float)
    worst = np.zeros(len(deltas))
    witness = None
    for kind in ("standard", "generic"):
        a0 = rng.uniform(-1, 1, size=(r, k)) / np.sqrt(k)
        b0 = np.zeros((d, r)) if kind == "standard" else rng.normal(size=(d, r)) / np.sqrt(r)
        start = LoRAFactors(jnp.asarray(b0), jnp.asarray(a0))
        weights = jnp.asarray(rng.dirichlet(np.ones(m)))
        probe = {"layer0": LoRAFactors(*_mask(*broadcast_to_clients((b0, a0), m), ranks))}
        state = abo.init(probe, key=jax.random.key(seed))
        for _ in range(restarts):
            raw0 = LoRAFactors(
                jnp.asarray(rng_dirs.normal(size=(m, d, r))),
                jnp.asarray(rng_dirs.normal(size=(m, r, k))),
            )
            for j, delta in enumerate(deltas):
                raw, lr, best, best_raw = raw0, 0.5, -np.inf, raw0
                for _ in range(steps):
                    val, g = fn(raw, start, weights, jnp.asarray(delta), state, jnp.asarray(mask))
                    val = float(val)
                    if np.isfinite(val) and val > best:
                        best, best_raw = val, raw
                    gn = float(jnp.sqrt(sum(jnp.sum(x**2) for x in g)))
                    if not np.isfinite(gn) or gn == 0.0:
                        break
                    raw = jax.tree.map(lambda x, y, c=lr / gn: x + c * y, raw, g)
                    lr *= 0.93
                ratio = float(np.exp(best)) if np.isfinite(best) else 0.0
                if j == len(deltas) - 1 and (witness is None or ratio > witness["ratio"]):
                    u, v = _unit_direction(best_raw, weights, trainable, mask)
                    witness = {"start_kind": kind, "B0": b0, "A0": a0,
                               "weights": np.asarray(weights), "ranks": ranks, "U": u, "V": v,
                               "delta": float(delta), "ratio": ratio, "state": state}  # fmt: skip
                worst[j] = max(worst[j], ratio)
    return worst, witness


def _hypothesis_search(abo, condition, *, max_examples, scale, d1=1e-2, d2=1e-4, growth=100.0):
    """Hypothesis search for an input whose ratio grows x``growth`` as delta shrinks d1 -> d2."""
    seen = {"n": 0, "max_ratio": 0.0}
    idx = 0 if condition == "weak" else 1
    trainable = _trainable(abo)

    def grows(case) -> bool:
        seen["n"] += 1
        case = _restrict(case, trainable)
        if case is None:
            return False
        try:
            r1 = _mismatch_np(abo, case, d1, scale)[idx] / d1**2
            r2 = _mismatch_np(abo, case, d2, scale)[idx] / d2**2
        except Exception:  # an input the operator cannot handle is not a counterexample
            return False
        if not (np.isfinite(r1) and np.isfinite(r2)):
            return False
        seen["max_ratio"] = max(seen["max_ratio"], r1, r2)
        return r2 > growth * max(r1, 1e-300) and r2 > 1e-6

    # A few fixed shapes (one compile each), smallest first so that shrinking prefers them.
    shapes = st.sampled_from(
        [strategies.Shape(*s) for s in ((1, 1, 1, 1), (2, 1, 1, 1), (2, 2, 2, 1), (3, 3, 2, 2))]
    )
    strategy = strategies.perturbation_sets(delta=d1, start="any", shape=shapes)
    cfg = settings(
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    try:
        case = find(strategy, grows, settings=cfg)
    except (NoSuchExample, Unsatisfiable):
        return None, seen
    case = _restrict(case, trainable)
    ratios = tuple(_mismatch_np(abo, case, dl, scale)[idx] / dl**2 for dl in (d1, d2))
    return _describe(case, ratios, (d1, d2)), seen


def _two_sided(abo, condition: str, witness: dict | None, scale: float) -> dict | None:
    r"""Both sides of the constant at the search's witness (our construction).

    The lower side is the witness's ratio (any input's ratio is a lower bound on the sup). The
    upper side is exact in the limit: at the witness's start the ratio tends, as ``delta -> 0``, to
    a quadratic form in the unit direction (:func:`theory.consistency.limit_forms`), whose sup is
    a squared operator norm of the linearized operator (:class:`theory.consistency.ConsistencyPoint`
    ``weak_limit`` / ``strong_limit``). Under bounded factors a consistent operator with equal ranks
    has ``weak upper <= \|A_0\|_2^2 + \|B_0\|_2^2 <= C_A^2 + C_B^2`` and factor averaging has
    ``strong upper = 1`` (``bound``).
    """
    if witness is None:
        return None
    trainable = _trainable_in(abo, witness["state"])
    lin = linearize_operator(abo, witness["B0"], witness["A0"], witness["weights"],
                             ranks=witness["ranks"], trainable=trainable, scale=scale,
                             state=witness["state"])  # fmt: skip
    point = consistency_at(abo, witness["B0"], witness["A0"], witness["weights"],
                           start_kind=witness["start_kind"], ranks=witness["ranks"],
                           trainable=trainable, scale=scale, state=witness["state"],
                           linearization=lin)  # fmt: skip
    forms = limit_forms(lin, witness["B0"], witness["A0"], witness["weights"], witness["U"],
                        witness["V"], ranks=witness["ranks"])  # fmt: skip
    idx = 0 if condition == "weak" else 1
    start = {"layer0": LoRAFactors(jnp.asarray(witness["B0"]), jnp.asarray(witness["A0"]))}
    dirs = {"layer0": LoRAFactors(jnp.asarray(witness["U"]), jnp.asarray(witness["V"]))}
    case = strategies.PerturbationSet(start, dirs, jnp.asarray(witness["weights"]),
                                      witness["delta"], witness["start_kind"])  # fmt: skip
    dl = witness["delta"]
    recheck = _mismatch_np(abo, case, dl, scale)[idx] / dl**2
    upper = point.weak_limit if condition == "weak" else point.strong_limit
    if condition == "weak":
        bound = point.weak_bound if np.isfinite(point.weak_bound) else None
        c_ab = float(np.sum(witness["A0"] ** 2) * trainable[0] + np.sum(witness["B0"] ** 2)
                     * trainable[1]) if bound is not None else None  # fmt: skip
    else:
        bound, c_ab = (1.0 if point.factor_mean else None), None
    return {
        "lower": witness["ratio"],
        "lower_float64": float(recheck),
        "limit_at_witness": forms[idx],
        "upper": upper,
        "bound": bound,
        "bound_c": c_ab,
        "gap": upper - witness["ratio"],
        "method": lin.method,
        "witness": {k: witness[k] for k in
                    ("start_kind", "B0", "A0", "weights", "ranks", "U", "V", "delta")},
    }  # fmt: skip


def _condition(abo, condition, *, deltas, restarts, steps, examples, seed, scale) -> ConditionCheck:
    counterexample, seen = _hypothesis_search(abo, condition, max_examples=examples, scale=scale)
    worst, witness = _ascent_sweep(
        abo, condition, deltas, restarts=restarts, steps=steps, seed=seed, scale=scale
    )
    try:
        two_sided = _two_sided(abo, condition, witness, scale)
    except (
        ValueError,
        FloatingPointError,
        np.linalg.LinAlgError,
    ):  # linearization impossible there
        two_sided = None
    ev = growth_verdict("R_w" if condition == "weak" else "R_B+R_A", deltas, worst)
    if counterexample is not None:
        status, constant = VIOLATED, float("inf")
    elif ev.verdict == UNBOUNDED:
        status, constant = VIOLATED, float("inf")
        counterexample = {"source": "gradient ascent (not shrunk)", "deltas": list(ev.scales),
                          "ratios": list(ev.ratios)}  # fmt: skip
    elif ev.verdict == BOUNDED:
        status, constant = HOLDS, float(max(ev.constant, seen["max_ratio"]))
    else:
        status, constant = INSUFFICIENT, float(max(ev.constant, seen["max_ratio"]))
    return ConditionCheck(condition, status, constant, ev, seen["n"], counterexample, two_sided)


# ---------------------------------------------------------------------------------------------
# First-order consistency
# ---------------------------------------------------------------------------------------------

#: consensus shapes ``(m, d, k, r)``, smallest first (the first violated point is the witness)
CONSISTENCY_SHAPES = ((2, 1, 1, 1), (3, 3, 2, 2))


def _consistency_weights(m: int) -> list[np.ndarray]:
    """Uniform, then non-uniform weights (an unweighted mean passes only the first)."""
    skew = {2: [0.7, 0.3], 3: [0.5, 0.3, 0.2]}.get(m, np.arange(1, m + 1) / (m * (m + 1) / 2))
    return [np.full(m, 1.0 / m), np.asarray(skew, float)]


@dataclasses.dataclass(frozen=True)
class ConsistencyCheck:
    """First-order consistency of an operator (:mod:`theory.consistency`), exact by linearization.

    Attributes:
      status: ``"holds"`` (a fixed point with ``Pi' = T`` at every point, up to a positive
        per-component rescaling where ``rescaled``) or ``"violated"``.
      fixed_point: ``"holds"`` / ``"violated"``: ``Pi(0) = B_0 M_i A_0`` at every point.
      defect: the largest relative first-order defect over the points (after rescaling).
      strict_defect: the same at ``S = I``.
      fixed_point_defect: the largest relative fixed-point defect.
      rescaled: some point needed a rescaling ``S != I`` (heterogeneous ranks, RBLA).
      points: every :class:`theory.consistency.ConsistencyPoint` checked, in order.
      witness: when violated, the first violated point (smallest shape first), with its shape, the
        reason, and the worst drift direction, else ``None``.
      note: what the verdict means for this operator.
    """

    status: str
    fixed_point: str
    defect: float
    strict_defect: float
    fixed_point_defect: float
    rescaled: bool
    points: list[ConsistencyPoint]
    witness: dict | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "status": self.status,
            "fixed_point": self.fixed_point,
            "defect": self.defect,
            "strict_defect": self.strict_defect,
            "fixed_point_defect": self.fixed_point_defect,
            "rescaled": self.rescaled,
            "witness": self.witness,
            "note": self.note,
            "points": [p.to_dict() for p in self.points],
        })  # fmt: skip


def _reason(pt: ConsistencyPoint) -> str:
    if not pt.fixed_point:
        return "not a fixed point: Pi(0) != B_0 M_i A_0"
    if not pt.differentiable:
        return "the broadcast product is not differentiable at the point"
    return "first-order defect: Pi'(0) != the weighted mean of the clients' derivatives"


def check_consistency(
    abo: ABO, *, seed: int = 0, scale: float = 1.0, personalized: bool | None = None
) -> ConsistencyCheck:
    """Checks fixed point and first-order consistency at consensus points (exact, float64).

    Points: :data:`CONSISTENCY_SHAPES` x (uniform, non-uniform weights) x (the standard ``B_0 = 0``
    start, a generic one), at the operator's own ranks (:func:`with_client_ranks`) and in each
    phase of the factors it trains (RoLoRA: ``B`` then ``A``). The witness is the first violated
    point in that order: the smallest shape, the simplest weights and start that show it.

    Args:
      abo: the operator.
      seed: seed of the starts.
      scale: LoRA scale ``s`` of ``base_delta``.
      personalized: the operator keeps per-client factors (default: ``abo.traits.personalized``
        where declared); only changes the note.

    Returns:
      :class:`ConsistencyCheck`.
    """
    points, witness = [], None
    for shape in CONSISTENCY_SHAPES:
        m, d, k, r = shape
        rng = np.random.default_rng([seed, *shape])  # a shape's starts do not depend on the others
        ranks = _ranks(abo, m, r)
        a0 = rng.uniform(0.5, 1.5, size=(r, k)) * rng.choice([-1.0, 1.0], size=(r, k))
        starts = [("standard", np.zeros((d, r))), ("generic", rng.normal(size=(d, r)))]
        probe = {"layer0": LoRAFactors(*_mask(jnp.ones((m, d, r)), jnp.ones((m, r, k)), ranks))}
        state0 = abo.init(probe, key=jax.random.key(seed))
        phases = [state0]
        state1 = call_operator(abo, probe, jnp.full(m, 1.0 / m), state0)[1]
        if _trainable_in(abo, state1) != _trainable_in(abo, state0):
            phases.append(state1)
        for weights in _consistency_weights(m):
            for kind, b0 in starts:
                for state in phases:
                    pt = consistency_at(abo, b0, a0, weights, start_kind=kind, ranks=ranks,
                                        trainable=_trainable_in(abo, state), scale=scale,
                                        state=state)  # fmt: skip
                    points.append(pt)
                    if witness is None and not pt.holds:
                        witness = {
                            "shape": {"m": m, "d": d, "k": k, "r": r},
                            "reason": _reason(pt),
                            "start_kind": kind,
                            "start": {"B0": pt.b0, "A0": pt.a0},
                            "weights": pt.weights,
                            "ranks": pt.ranks,
                            "trainable": list(_trainable_in(abo, state)),
                            "fixed_point_defect": pt.fixed_point_defect,
                            "defect": pt.defect,
                            "direction_defect": pt.direction_defect,
                            "direction": pt.direction,
                        }
    holds = witness is None
    fixed = all(p.fixed_point for p in points)
    rescaled = any(p.rescaling is not None for p in points)
    if personalized is None:
        personalized = bool(getattr(getattr(abo, "traits", None), "personalized", False))
    if holds:
        note = "consistent: weak/strong verdicts speak of the global objective F = sum_i p_i f_i"
        if rescaled:
            note += " (a preconditioned step: per-component rescaling, same stationary points)"
    elif personalized:
        note = ("personalized operator: no global model to be consistent with; weak/strong say "
                "nothing about stationary points of F")  # fmt: skip
    else:
        note = ("WARNING: weak/strong holding does not mean convergence to a stationary point of "
                "F = sum_i p_i f_i (the broadcast's first-order step is not F's)")  # fmt: skip
    return ConsistencyCheck(
        status=HOLDS if holds else VIOLATED,
        fixed_point=HOLDS if fixed else VIOLATED,
        defect=float(max(p.defect for p in points)),
        strict_defect=float(max(p.strict_defect for p in points)),
        fixed_point_defect=float(max(p.fixed_point_defect for p in points)),
        rescaled=rescaled,
        points=points,
        witness=witness,
        note=note,
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CertifyReport:
    """What :func:`certify` found on one operator."""

    operator: str
    identities: list[IdentityCheck]
    traits: dict[str, bool]
    weak: ConditionCheck
    strong: ConditionCheck
    consistency: ConsistencyCheck

    def verdict(self) -> list[str]:
        """What the three verdicts together say (warning lines first)."""
        w, s, c = self.weak.status, self.strong.status, self.consistency.status
        lines = []
        if c == VIOLATED and HOLDS in (w, s):
            held = " and ".join(n for n, x in (("weak", w), ("strong", s)) if x == HOLDS)
            verb = "hold" if " and " in held else "holds"
            lines.append(
                f"WARNING: {held} {verb} but first-order consistency is violated: this does NOT "
                "mean convergence to a stationary point of F = sum_i p_i f_i "
                f"({self.consistency.witness['reason'] if self.consistency.witness else ''})"
            )
        elif c == VIOLATED:
            lines.append("first-order consistency violated: no convergence to stationary points "
                         "of F = sum_i p_i f_i follows from the conditions")  # fmt: skip
        if c == HOLDS and w == HOLDS:
            lines.append(
                "weak + consistency: the rate bound D/(eta T) + M eta for the global objective "
                "applies (theory.consistency; our derivation)"
            )
        if c == HOLDS and s == HOLDS:
            lines.append(
                "strong + consistency: the global factors themselves stay with the clients"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "traits": self.traits,
            "identities": [
                {
                    **dataclasses.asdict(c),
                    "max_rel_error": None if np.isnan(c.max_rel_error) else c.max_rel_error,
                }
                for c in self.identities
            ],
            "weak": self.weak.to_dict(),
            "strong": self.strong.to_dict(),
            "consistency": self.consistency.to_dict(),
            "verdict": self.verdict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def markdown_row(self) -> str:
        """One row of the README's certify table: verdicts and both sides of the constants."""

        def cond(c: ConditionCheck) -> str:
            t = c.two_sided
            if c.status != HOLDS or t is None:
                return c.status
            out = f"holds, {_g(t['lower'])} / {_g(t['upper'])}"
            return out + (f" (bound {t['bound']:.3g})" if t["bound"] is not None else "")

        k = self.consistency
        if k.status == HOLDS:
            cons = "holds" + (" (rescaled)" if k.rescaled else "")
        elif k.fixed_point == VIOLATED:
            cons = f"**violated**: not a fixed point (defect {k.fixed_point_defect:.3g})"
        else:
            cons = f"**violated**: {k.witness['reason'].split(':')[0]} {k.defect:.3g}"
        return f"| `{self.operator}` | {cond(self.weak)} | {cond(self.strong)} | {cons} |"

    def table(self) -> str:
        """A table a person can read."""
        kinds = [
            k
            for k in (
                "global",
                "ps_like",
                "sp_like",
                "product_only",
                "exact_in_product",
                "base_delta",
            )
            if self.traits.get(k)
        ]
        lines = [f"operator: {self.operator}   traits: {', '.join(kinds) or 'none'}", ""]
        lines.append(f"{'#':<3}{'identity':<36}{'status':<10}max rel error")
        for c in self.identities:
            err = "" if np.isnan(c.max_rel_error) else f"{c.max_rel_error:.2e}"
            lines.append(f"{c.number:<3}{c.name:<36}{c.status:<10}{err:<10} {c.note}".rstrip())
        lines += ["", f"{'condition':<10}{'status':<23}{'constant':<12}{'slope':<8}sup R/delta^2 at delta = "
                  + ", ".join(f"{s:.0e}" for s in self.weak.evidence.scales)]  # fmt: skip
        for c in (self.weak, self.strong):
            const = f"{c.constant:.3g}" if np.isfinite(c.constant) else "inf"
            ratios = ", ".join(f"{x:.3g}" for x in c.evidence.ratios)
            lines.append(
                f"{c.condition:<10}{c.status:<23}{const:<12}{c.evidence.slope:<8.2f}{ratios}"
            )
        lines += ["", "two-sided constants at the search's worst start (lower: witness ratio at "
                  "the smallest delta; upper: exact limit delta -> 0 by linearization)",
                  f"{'condition':<10}{'lower':<11}{'float64':<11}{'upper':<11}{'gap':<11}"
                  "bound (bounded factors)"]  # fmt: skip
        for c in (self.weak, self.strong):
            t = c.two_sided
            if t is None:
                continue
            bound = "-" if t["bound"] is None else f"{t['bound']:.4g}"
            if t.get("bound_c") is not None:
                bound += f" <= C_A^2 + C_B^2 = {t['bound_c']:.4g}"
            lines.append(f"{c.condition:<10}{_g(t['lower']):<11}{_g(t['lower_float64']):<11}"
                         f"{_g(t['upper']):<11}{_g(t['gap']):<11}{bound}")  # fmt: skip
        k = self.consistency
        lines += ["", f"consistency: {k.status}   fixed point: {k.fixed_point}   "
                  f"defect {k.defect:.3g} (strict {k.strict_defect:.3g}, fixed point "
                  f"{k.fixed_point_defect:.3g}) over {len(k.points)} consensus points"
                  + ("; per-component rescaling" if k.rescaled else "")]  # fmt: skip
        if k.witness is not None:
            wt = k.witness
            sh = wt["shape"]
            lines.append(
                f"consistency witness: m={sh['m']} d={sh['d']} k={sh['k']} r={sh['r']} ranks="
                f"{wt['ranks']}, {wt['start_kind']} start B0={wt['start']['B0']} "
                f"A0={_short(wt['start']['A0'])}, weights={wt['weights']}: {wt['reason']} "
                f"(defect {wt['defect']:.3g}, re-checked on the operator {wt['direction_defect']:.3g})"
            )
        lines.append(k.note)
        for c in (self.weak, self.strong):
            if c.counterexample is not None:
                lines += [
                    "",
                    f"{c.condition} counterexample: {_format_counterexample(c.counterexample)}",
                ]
        verdict = self.verdict()
        if verdict:
            lines += ["", *verdict]
        return "\n".join(lines)


def _g(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else "inf"


def _short(x: Any) -> str:
    return str(np.round(np.asarray(x, float), 3).tolist())


def _format_counterexample(ce: dict) -> str:
    if "shape" not in ce:
        return f"{ce.get('source', '')}: ratios {ce.get('ratios')} at deltas {ce.get('deltas')}"
    sh = ce["shape"]
    (d1, d2), (r1, r2) = ce["deltas"], ce["ratios"]
    return (
        f"(shrunk by Hypothesis) m={sh['m']} d={sh['d']} k={sh['k']} r={sh['r']}, "
        f"{ce['start_kind']} start B0={ce['start']['B0']} A0={ce['start']['A0']}, "
        f"weights={ce['weights']}, directions U={ce['directions']['U']} V={ce['directions']['V']}; "
        f"R/delta^2 = {r1:.3g} at delta={d1:g} -> {r2:.3g} at delta={d2:g}"
    )


def certify(
    abo: ABO | str,
    *,
    name: str | None = None,
    thorough: bool = False,
    seed: int = 0,
    scale: float = 1.0,
    deltas: tuple[float, ...] | None = None,
) -> CertifyReport:
    r"""Checks an operator's identities, weak and strong conditions and consistency (no training).

    The weak and strong verdicts come with two-sided constants (:class:`ConditionCheck`
    ``two_sided``); the consistency verdict (:func:`check_consistency`) says whether they speak of
    the global objective: weak or strong holding **without** consistency does not mean convergence
    to a stationary point of ``F = sum_i p_i f_i`` (an operator broadcasting client 0's factors
    satisfies both), and the report's verdict lines say so.

    Args:
      abo: an :class:`abo_jax.ABO`, a known name (``"sum_product"``) or ``"module:function"``.
      name: label for the report (default: the name given or ``"operator"``).
      thorough: more Hypothesis examples, restarts, ascent steps and a longer ``delta`` sweep.
      seed: seed of the random inputs and ascent restarts (Hypothesis is derandomized).
      scale: LoRA scale ``s`` of the operator's ``base_delta``.
      deltas: the perturbation sizes of the sweep (default ``1e-1, 1e-2, 1e-3``; thorough adds
        ``1e-4``).

    Returns:
      :class:`CertifyReport`; ``report.table()`` for people, ``report.to_json()`` for machines.

    Example:
      >>> report = certify("product_sum")
      >>> report.weak.status, report.strong.status, report.consistency.status
      ('holds', 'holds', 'holds')

    References:
      Chen et al., arXiv:2508.01348 (our formalization of the weak and strong conditions).
    """
    if isinstance(abo, str):
        label, abo = resolve_operator(abo)
        name = name or label
    if not isinstance(abo, ABO):
        raise ValueError(f"abo: expected an ABO (or a name), got {type(abo).__name__}")
    traits = getattr(abo, "traits", None)
    if getattr(traits, "client_ranks", None) is not None and _ranks_fn(abo) is None:
        raise ValueError(
            "abo: declares fixed client_ranks (one m); certify needs the operator at several m: "
            "pass theory.certify.with_client_ranks(factory) for a factory client_ranks -> ABO"
        )
    if deltas is None:
        deltas = (1e-1, 1e-2, 1e-3, 1e-4) if thorough else (1e-1, 1e-2, 1e-3)
    if any(not (np.isfinite(x) and x > 0) for x in deltas):
        raise ValueError(f"deltas: must be finite and > 0, got {deltas}")
    with jax.enable_x64(True):
        _validate_operator(abo)
        checks, traits = check_identities(abo, cases=6 if thorough else 2, seed=seed, scale=scale)
        kw = dict(deltas=tuple(deltas), restarts=4 if thorough else 1, steps=60 if thorough else 20,
                  examples=400 if thorough else 40, seed=seed, scale=scale)  # fmt: skip
        weak = _condition(abo, "weak", **kw)
        strong = _condition(abo, "strong", **kw)
        personal = not traits["global"] and not traits["heterogeneous_ranks"]
        consistency = check_consistency(abo, seed=seed, scale=scale, personalized=personal)
    return CertifyReport(name or "operator", checks, traits, weak, strong, consistency)


def _validate_operator(abo: ABO) -> None:
    """Runs the operator on two small inputs (a global and a per-client-shaped one) and checks
    what it returns (:func:`theory.consistency.validate_broadcast`), before any search.

    Raises:
      ValueError: naming the problem (None returned, wrong structure, missing client axis...).
    """
    for m, d, k, r in ((2, 3, 2, 1), (3, 4, 3, 2)):
        b = np.linspace(0.1, 1.0, m * d * r).reshape(m, d, r)
        a = np.linspace(1.0, 2.0, m * r * k).reshape(m, r, k)
        b, a = _mask(*_freeze(b, a, _trainable(abo)), _ranks(abo, m, r))
        clients = {"layer0": LoRAFactors(jnp.asarray(b), jnp.asarray(a))}
        call_operator(abo, clients, jnp.full(m, 1.0 / m), abo.init(clients, key=jax.random.key(0)))
