"""Hypothesis strategies for stacked LoRA factors, client weights and perturbation sets.

For users testing their own aggregation-broadcast operators (ABOs) the same way abo-jax tests its
own (``tests/properties/``)::

    from hypothesis import given
    from theory import strategies as abo_st

    @given(abo_st.client_sets())
    def test_my_operator_is_permutation_invariant(case):
        clients, weights = case.clients, case.weights
        ...

All arrays are float64 numpy arrays converted to ``jax.numpy`` (enable ``jax_enable_x64`` to keep
them float64). Shapes follow DESIGN.md: ``b (m, d, r)``, ``a (m, r, k)``, weights ``(m,)``.
Values are drawn by Hypothesis (not from a seeded RNG), so failing examples shrink to small, readable
arrays (zeros, ones, few clients, rank 1).

Reference: Chen et al., arXiv:2508.01348 (the operators and conditions these strategies exercise;
our formalization, see ``theory``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from abo_jax import LoRAFactors
from abo_jax.lora import mask_rank

__all__ = [
    "Shape",
    "ClientSet",
    "PerturbationSet",
    "elements",
    "shapes",
    "arrays",
    "lora_factors",
    "weights",
    "client_sets",
    "heterogeneous_client_sets",
    "perturbation_sets",
]


class Shape(NamedTuple):
    """One layer's sizes."""

    m: int  # clients
    d: int  # out
    k: int  # in
    r: int  # rank, 1 <= r <= min(d, k)


class ClientSet(NamedTuple):
    """Stacked client factors and their weights."""

    clients: Any  # {"layer0": LoRAFactors(b (m, d, r), a (m, r, k)), ...}
    weights: jnp.ndarray  # (m,) float64, >= 0, sums to 1
    ranks: Any  # {"layer0": (m,) int} live ranks per client (all r unless heterogeneous)


class PerturbationSet(NamedTuple):
    """Clients at ``start + delta * direction_i`` (what a round of local training produces)."""

    start: Any  # {"layer0": LoRAFactors(b (d, r), a (r, k))} common starting point
    directions: Any  # {"layer0": LoRAFactors(b (m, d, r), a (m, r, k))}, sum_i p_i ||dir_i||^2 = 1
    weights: jnp.ndarray  # (m,)
    delta: float  # perturbation size (the root-mean-square drift)
    start_kind: str  # "standard" (B = 0, peft init) or "generic"

    @property
    def clients(self) -> Any:
        """``start + delta * direction`` per client, every leaf ``(m, ...)``."""
        return {
            name: LoRAFactors(
                b=s.b[None] + self.delta * self.directions[name].b,
                a=s.a[None] + self.delta * self.directions[name].a,
            )
            for name, s in self.start.items()
        }


def elements(bound: float = 2.0) -> st.SearchStrategy[float]:
    """Finite float64 values in ``[-bound, bound]`` (no subnormals), shrinking towards 0."""
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def shapes(
    *,
    min_clients: int = 1,
    max_clients: int = 4,
    max_dim: int = 5,
    max_rank: int = 3,
) -> st.SearchStrategy[Shape]:
    """Layer sizes ``(m, d, k, r)`` with ``1 <= r <= min(d, k, max_rank)``."""

    @st.composite
    def draw_shape(draw):
        m = draw(st.integers(min_clients, max_clients))
        d = draw(st.integers(1, max_dim))
        k = draw(st.integers(1, max_dim))
        r = draw(st.integers(1, min(d, k, max_rank)))
        return Shape(m, d, k, r)

    return draw_shape()


def arrays(shape: tuple[int, ...], bound: float = 2.0) -> st.SearchStrategy[np.ndarray]:
    """A float64 numpy array of ``shape`` with entries from :func:`elements`."""
    return hnp.arrays(np.float64, shape, elements=elements(bound))


def lora_factors(shape: Shape, bound: float = 2.0) -> st.SearchStrategy[LoRAFactors]:
    """Stacked factors ``b (m, d, r)``, ``a (m, r, k)`` of one layer."""
    m, d, k, r = shape
    return st.builds(
        lambda b, a: LoRAFactors(jnp.asarray(b), jnp.asarray(a)),
        arrays((m, d, r), bound),
        arrays((m, r, k), bound),
    )


def weights(m: int, kind: str = "any") -> st.SearchStrategy[jnp.ndarray]:
    """Client weights ``(m,)``, ``>= 0``, summing to 1.

    Args:
      m: number of clients.
      kind: ``"uniform"`` (``1/m``), ``"dirichlet"`` (``Dir(alpha)`` with ``alpha`` drawn in
        ``[0.1, 10]``), ``"zeros"`` (positive integers with some clients at 0, at least one not),
        ``"integers"`` (``n_i / sum n`` with ``n_i`` in 1..10, shrinks to uniform) or ``"any"``.
    """
    if kind == "uniform":
        return st.just(jnp.full((m,), 1.0 / m))
    if kind == "dirichlet":

        def dirichlet(alpha, seed):
            w = np.random.default_rng(seed).dirichlet(np.full(m, alpha)).clip(1e-12)
            return jnp.asarray(w / w.sum())

        return st.builds(dirichlet, st.floats(0.1, 10.0), st.integers(0, 2**32 - 1))
    if kind == "integers":
        return st.lists(st.integers(1, 10), min_size=m, max_size=m).map(
            lambda n: jnp.asarray(np.asarray(n, float) / sum(n))
        )
    if kind == "zeros":
        return (
            st.lists(st.integers(0, 5), min_size=m, max_size=m)
            .filter(any)
            .map(lambda n: jnp.asarray(np.asarray(n, float) / sum(n)))
        )
    if kind == "any":
        return st.one_of(
            weights(m, "integers"), weights(m, "uniform"), weights(m, "dirichlet"),
            weights(m, "zeros"),
        )  # fmt: skip
    raise ValueError(
        f"kind: expected 'uniform', 'dirichlet', 'integers', 'zeros' or 'any', got {kind!r}"
    )


def client_sets(
    *,
    layers: int = 1,
    min_clients: int = 1,
    max_clients: int = 4,
    max_dim: int = 5,
    max_rank: int = 3,
    weight_kind: str = "any",
    bound: float = 2.0,
    shape: st.SearchStrategy[Shape] | None = None,
) -> st.SearchStrategy[ClientSet]:
    """Stacked client factors for ``layers`` layers (named ``layer0``, ...) and weights.

    All layers share the client count ``m``; each layer draws its own ``(d, k, r)``.

    Args:
      layers: number of adapted layers.
      min_clients, max_clients, max_dim, max_rank: size limits.
      weight_kind: see :func:`weights`.
      bound: entries lie in ``[-bound, bound]``.
      shape: a strategy of :class:`Shape` used instead of the size limits (the first layer's ``m``
        is kept for every layer). A few fixed shapes keep jitted code to one compile per shape.
    """

    @st.composite
    def draw_set(draw):
        if shape is not None:
            first = draw(shape)
            m = first.m
        else:
            first, m = None, draw(st.integers(min_clients, max_clients))
        clients, ranks = {}, {}
        for i in range(layers):
            if shape is not None:
                s = first if i == 0 else draw(shape)._replace(m=m)
            else:
                s = draw(shapes(min_clients=m, max_clients=m, max_dim=max_dim, max_rank=max_rank))
            clients[f"layer{i}"] = draw(lora_factors(s, bound))
            ranks[f"layer{i}"] = jnp.full((m,), s.r)
        return ClientSet(clients, draw(weights(m, weight_kind)), ranks)

    return draw_set()


def heterogeneous_client_sets(
    *,
    min_clients: int = 2,
    max_clients: int = 4,
    max_dim: int = 5,
    max_rank: int = 3,
    shape: st.SearchStrategy[Shape] | None = None,
) -> st.SearchStrategy[ClientSet]:
    """Clients with their own ranks ``r_i <= r``, zero-padded to ``r`` by :func:`abo_jax.lora.mask_rank`.

    The ``ranks`` field holds each client's live rank (HetLoRA, RBLA, FlexLoRA layouts). ``shape``
    replaces the size limits as in :func:`client_sets`.
    """

    @st.composite
    def draw_set(draw):
        if shape is not None:
            s = draw(shape)
            m = s.m
        else:
            m = draw(st.integers(min_clients, max_clients))
            s = draw(shapes(min_clients=m, max_clients=m, max_dim=max_dim, max_rank=max_rank))
        client_ranks = jnp.asarray(draw(st.lists(st.integers(1, s.r), min_size=m, max_size=m)))
        f = mask_rank(draw(lora_factors(s)), client_ranks)
        return ClientSet({"layer0": f}, draw(weights(m)), {"layer0": client_ranks})

    return draw_set()


def perturbation_sets(
    *,
    delta: float | st.SearchStrategy[float] = 1e-2,
    start: str = "any",
    min_clients: int = 1,
    max_clients: int = 4,
    max_dim: int = 4,
    max_rank: int = 2,
    weight_kind: str = "integers",
    shape: st.SearchStrategy[Shape] | None = None,
) -> st.SearchStrategy[PerturbationSet]:
    """Clients as small perturbations of a common start, as one round of local training makes them.

    Directions are normalized so that the weighted mean-square drift
    ``sum_i p_i (||B_i - B_0||^2 + ||A_i - A_0||^2)`` equals ``delta^2`` (an all-zero draw is
    replaced by a unit change of the first entry of ``A``).

    Args:
      delta: perturbation size (a number or a strategy).
      start: ``"standard"`` (``B_0 = 0`` and a drawn ``A_0``, the peft init), ``"generic"`` (both
        drawn) or ``"any"``.
      min_clients, max_clients, max_dim, max_rank: size limits (one layer, named ``layer0``).
      weight_kind: see :func:`weights`.
      shape: a strategy of :class:`Shape` to use instead of the size limits (e.g. a few fixed
        shapes, so that jitted code compiles once per shape).
    """
    if start not in ("standard", "generic", "any"):
        raise ValueError(f"start: expected 'standard', 'generic' or 'any', got {start!r}")

    @st.composite
    def draw_set(draw):
        s = draw(shape) if shape is not None else draw(
            shapes(min_clients=min_clients, max_clients=max_clients, max_dim=max_dim,
                   max_rank=max_rank)
        )  # fmt: skip
        kind = draw(st.sampled_from(["generic", "standard"])) if start == "any" else start
        a0 = draw(arrays((s.r, s.k)))
        b0 = np.zeros((s.d, s.r)) if kind == "standard" else draw(arrays((s.d, s.r)))
        w = draw(weights(s.m, weight_kind))
        db = draw(arrays((s.m, s.d, s.r)))
        da = draw(arrays((s.m, s.r, s.k)))
        norm2 = float(np.dot(np.asarray(w), (db**2).sum((1, 2)) + (da**2).sum((1, 2))))
        if norm2 == 0.0:
            da = da.copy()
            da[:, 0, 0] = 1.0
            norm2 = float(np.sum(np.asarray(w)))
        scale = 1.0 / np.sqrt(norm2)
        dlt = draw(delta) if isinstance(delta, st.SearchStrategy) else float(delta)
        return PerturbationSet(
            start={"layer0": LoRAFactors(jnp.asarray(b0), jnp.asarray(a0))},
            directions={"layer0": LoRAFactors(jnp.asarray(db * scale), jnp.asarray(da * scale))},
            weights=w,
            delta=dlt,
            start_kind=kind,
        )

    return draw_set()
