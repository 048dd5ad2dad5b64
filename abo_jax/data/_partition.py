"""Partitioners: split a labelled data set over ``m`` federated clients.

Every partitioner takes the labels ``(n,)`` and returns a :class:`Partition` (per-client index
arrays, sizes, class histogram). Randomness is deterministic from a ``jax.random`` key: the key
draws 128 bits (``jax.random.bits``) that seed a ``numpy.random.Generator`` (PCG64), which does the
data-dependent work (shuffles, Dirichlet draws) on the host. Same key, same partition; an ``int``
is accepted as shorthand for ``jax.random.key(int)``.

References:
  McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data
  (shards of sorted labels), arXiv:1602.05629.
  Hsu, Qi, Brown, Measuring the Effects of Non-Identical Data Distribution for Federated Visual
  Classification (Dirichlet label skew), arXiv:1909.06335.
  Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated Learning
  (one class per client), arXiv:2508.01348.
  Li, Diao, Chen, He, Federated Learning on Non-IID Data Silos: An Experimental Study (quantity
  skew), arXiv:2102.02079.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Partition",
    "one_class_per_client",
    "shards",
    "dirichlet",
    "iid",
    "quantity_skew",
    "make_partition",
]


class Partition(NamedTuple):
    """Which examples each client holds.

    Attributes:
      indices: tuple of ``m`` int64 arrays; ``indices[i]`` are client i's example indices into the
        data set, sorted ascending (every partitioner here uses each index at most once).
      sizes: ``(m,)`` int32, ``n_i = len(indices[i])``.
      class_histogram: ``(m, num_classes)`` int64, the count of each class at each client.
      scheme: a short description, e.g. ``"dirichlet(alpha=0.1)"`` (used as a plot title).
    """

    indices: tuple[np.ndarray, ...]  # m arrays of int64 indices
    sizes: np.ndarray  # (m,) int32
    class_histogram: np.ndarray  # (m, num_classes) int64
    scheme: str

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return self.class_histogram.shape[1]


def _labels_and_classes(labels: Any, num_classes: int | None) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {y.shape}")
    if y.size == 0:
        raise ValueError("labels is empty: nothing to partition")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, found {y.min()}")
    inferred = int(y.max()) + 1
    if num_classes is None:
        num_classes = inferred
    elif num_classes < inferred:
        raise ValueError(f"num_classes={num_classes} but labels go up to {inferred - 1}")
    return y.astype(np.int64), int(num_classes)


def _numpy_rng(key: Any) -> np.random.Generator:
    if isinstance(key, int | np.integer):
        key = jax.random.key(int(key))
    bits = np.asarray(jax.random.bits(key, (4,), jnp.uint32))
    return np.random.default_rng([int(b) for b in bits])


def _check_num_clients(num_clients: int) -> int:
    if int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    return int(num_clients)


def make_partition(
    indices: list[np.ndarray] | tuple[np.ndarray, ...],
    labels: Any,
    *,
    num_classes: int | None = None,
    scheme: str = "custom",
) -> Partition:
    """Builds a :class:`Partition` from per-client index arrays (for custom partitioners).

    Args:
      indices: ``m`` integer arrays of example indices into ``labels``.
      labels: ``(n,)`` integer labels.
      num_classes: number of classes (default ``max(labels) + 1``).
      scheme: a short description.

    Returns:
      The partition with sorted indices, sizes and class histogram.
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    out = []
    for idx in indices:
        idx = np.sort(np.asarray(idx, dtype=np.int64).reshape(-1))
        if idx.size and (idx[0] < 0 or idx[-1] >= y.shape[0]):
            raise ValueError(f"indices must lie in [0, {y.shape[0]}), got [{idx[0]}, {idx[-1]}]")
        out.append(idx)
    sizes = np.array([i.size for i in out], dtype=np.int32)
    flat = np.concatenate(out) if out else np.zeros(0, np.int64)
    client_of = np.repeat(np.arange(len(out)), sizes)
    hist = np.zeros((len(out), num_classes), dtype=np.int64)
    np.add.at(hist, (client_of, y[flat]), 1)
    return Partition(tuple(out), sizes, hist, scheme)


def one_class_per_client(
    labels: Any,
    *,
    num_clients: int | None = None,
    num_classes: int | None = None,
    key: Any = None,
) -> Partition:
    """The paper's pathological non-IID split: each client holds a single class.

    With ``m = num_classes`` clients, client ``i`` holds every example of class ``i``. With
    ``m = g * num_classes`` clients, each class is split into ``g`` near-equal parts and clients
    ``g c, ..., g c + g - 1`` hold class ``c``.

    Args:
      labels: ``(n,)`` integer labels.
      num_clients: ``m``, a multiple of ``num_classes`` (default ``num_classes``).
      num_classes: number of classes (default ``max(labels) + 1``).
      key: ``jax.random`` key (or int) shuffling each class before it is split into ``g`` parts;
        ``None`` splits in index order. Irrelevant when ``g = 1``.

    Returns:
      The :class:`Partition`.

    Raises:
      ValueError: ``m`` is not a multiple of ``num_classes`` or a class has fewer than ``g``
        examples (a client would be empty).

    Example:
      >>> p = one_class_per_client(np.array([0, 1, 1, 2, 0, 2]))
      >>> p.sizes.tolist()
      [2, 2, 2]

    References:
      Chen et al., arXiv:2508.01348 (10 clients, one class each).
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    m = _check_num_clients(num_classes if num_clients is None else num_clients)
    if m % num_classes:
        raise ValueError(
            f"one_class_per_client needs num_clients to be a multiple of num_classes={num_classes}, "
            f"got {m}"
        )
    g = m // num_classes
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < g:
        c = int(np.argmin(counts))
        raise ValueError(
            f"class {c} has {counts[c]} examples, fewer than the {g} clients it must be split over"
        )
    rng = None if key is None else _numpy_rng(key)
    parts = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if rng is not None and g > 1:
            idx = rng.permutation(idx)
        parts += np.array_split(idx, g)
    return make_partition(parts, y, num_classes=num_classes, scheme=f"one class per client (m={m})")


def shards(
    labels: Any,
    *,
    num_clients: int,
    num_shards_per_client: int = 2,
    key: Any,
    num_classes: int | None = None,
) -> Partition:
    """Shards of label-sorted data (McMahan et al.): each client gets a few class-pure-ish shards.

    The examples are sorted by label (ties in random order), cut into
    ``num_clients * num_shards_per_client`` contiguous shards of near-equal size, and the shards
    are dealt to clients in random order. Every example is used exactly once.

    Args:
      labels: ``(n,)`` integer labels.
      num_clients: ``m``.
      num_shards_per_client: shards per client (2 in McMahan et al.).
      key: ``jax.random`` key (or int).
      num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
      The :class:`Partition`.

    References:
      McMahan et al., arXiv:1602.05629.
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    m = _check_num_clients(num_clients)
    if num_shards_per_client < 1:
        raise ValueError(f"num_shards_per_client must be >= 1, got {num_shards_per_client}")
    total = m * num_shards_per_client
    if total > y.shape[0]:
        raise ValueError(f"{total} shards requested but only {y.shape[0]} examples")
    rng = _numpy_rng(key)
    perm = rng.permutation(y.shape[0])
    order = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(order, total)
    deal = rng.permutation(total).reshape(m, num_shards_per_client)
    parts = [np.concatenate([pieces[s] for s in row]) for row in deal]
    return make_partition(
        parts,
        y,
        num_classes=num_classes,
        scheme=f"shards ({num_shards_per_client} per client, m={m})",
    )


def dirichlet(
    labels: Any,
    *,
    num_clients: int,
    alpha: float,
    key: Any,
    num_classes: int | None = None,
    min_size: int = 1,
    max_tries: int = 1000,
) -> Partition:
    """Dirichlet label skew: each class is spread over clients by ``q_c ~ Dir(alpha 1_m)``.

    For each class ``c`` (its examples shuffled), proportions ``q_c`` are drawn and the class is cut
    at ``round(cumsum(q_c) n_c)``. Small ``alpha`` concentrates each class on few clients (strong
    skew); large ``alpha`` tends to IID. If some client gets fewer than ``min_size`` examples, all
    proportions are redrawn (deterministically, from the same generator), up to ``max_tries`` times.
    Every example is used exactly once.

    Args:
      labels: ``(n,)`` integer labels.
      num_clients: ``m``.
      alpha: concentration, finite and ``> 0`` (for the ``alpha -> inf`` limit use :func:`iid`).
      key: ``jax.random`` key (or int).
      num_classes: number of classes (default ``max(labels) + 1``).
      min_size: smallest acceptable client size (``0`` accepts empty clients).
      max_tries: redraws before giving up with a ValueError.

    Returns:
      The :class:`Partition`.

    References:
      Hsu, Qi, Brown, arXiv:1909.06335.
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    m = _check_num_clients(num_clients)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"dirichlet: alpha must be a number > 0, got {alpha!r}") from None
    if np.isinf(alpha) and alpha > 0:
        raise ValueError(
            "dirichlet: alpha=inf is the IID limit, which Dir(alpha) cannot draw; use "
            "iid(labels, num_clients=..., key=...) for an IID split, or a large finite alpha "
            "(e.g. 1e3) for a near-IID one"
        )
    if not alpha > 0:
        raise ValueError(
            f"dirichlet: alpha must be a finite number > 0 (small: strong label skew, large: "
            f"near IID), got {alpha}"
        )
    if min_size * m > y.shape[0]:
        raise ValueError(
            f"min_size={min_size} for {m} clients needs more than {y.shape[0]} examples"
        )
    rng = _numpy_rng(key)
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(m)]
        for idx in by_class:
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            q = rng.dirichlet(np.full(m, float(alpha)))
            cuts = np.round(np.cumsum(q)[:-1] * idx.size).astype(np.int64)
            for i, piece in enumerate(np.split(idx, cuts)):
                parts[i].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(p.size for p in merged) >= min_size:
            return make_partition(
                merged, y, num_classes=num_classes, scheme=f"dirichlet(alpha={alpha:g}, m={m})"
            )
    raise ValueError(
        f"dirichlet: no draw in {max_tries} tries gave every client >= {min_size} examples; "
        "lower min_size, raise alpha, or use fewer clients"
    )


def iid(labels: Any, *, num_clients: int, key: Any, num_classes: int | None = None) -> Partition:
    """IID split: a random permutation cut into ``m`` near-equal parts (sizes differ by <= 1).

    Args:
      labels: ``(n,)`` integer labels (used for the histogram only).
      num_clients: ``m``.
      key: ``jax.random`` key (or int).
      num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
      The :class:`Partition`.
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    m = _check_num_clients(num_clients)
    if m > y.shape[0]:
        raise ValueError(f"{m} clients but only {y.shape[0]} examples")
    perm = _numpy_rng(key).permutation(y.shape[0])
    return make_partition(
        np.array_split(perm, m), y, num_classes=num_classes, scheme=f"iid (m={m})"
    )


def quantity_skew(
    labels: Any,
    *,
    num_clients: int,
    beta: float,
    key: Any,
    num_classes: int | None = None,
    min_size: int = 1,
    max_tries: int = 1000,
) -> Partition:
    """Quantity skew: client sizes drawn from ``q ~ Dir(beta 1_m)``, examples dealt at random.

    The examples are shuffled and cut at ``round(cumsum(q) n)``, so the label mix of every client
    is IID in expectation while the sizes ``n_i`` are skewed (small ``beta``: a few large clients;
    large ``beta``: near-equal sizes). If some client gets fewer than ``min_size`` examples, ``q``
    is redrawn (deterministically, from the same generator), up to ``max_tries`` times. Every
    example is used exactly once.

    Args:
      labels: ``(n,)`` integer labels (used for the histogram only).
      num_clients: ``m``.
      beta: concentration, finite and ``> 0``.
      key: ``jax.random`` key (or int).
      num_classes: number of classes (default ``max(labels) + 1``).
      min_size: smallest acceptable client size (``0`` accepts empty clients).
      max_tries: redraws before giving up with a ValueError.

    Returns:
      The :class:`Partition`.

    Example:
      >>> p = quantity_skew(np.arange(100) % 2, num_clients=4, beta=0.5, key=0)
      >>> int(p.sizes.sum())
      100

    References:
      Li, Diao, Chen, He, arXiv:2102.02079 (section 4.3, quantity skew).
    """
    y, num_classes = _labels_and_classes(labels, num_classes)
    m = _check_num_clients(num_clients)
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"quantity_skew: beta must be a number > 0, got {beta!r}") from None
    if not (beta > 0 and np.isfinite(beta)):
        raise ValueError(
            f"quantity_skew: beta must be a finite number > 0 (small: skewed sizes, large: "
            f"near-equal sizes; for equal sizes use iid), got {beta}"
        )
    if min_size * m > y.shape[0]:
        raise ValueError(
            f"min_size={min_size} for {m} clients needs more than {y.shape[0]} examples"
        )
    rng = _numpy_rng(key)
    for _ in range(max_tries):
        perm = rng.permutation(y.shape[0])
        q = rng.dirichlet(np.full(m, beta))
        cuts = np.round(np.cumsum(q)[:-1] * y.shape[0]).astype(np.int64)
        parts = np.split(perm, cuts)
        if min(p.size for p in parts) >= min_size:
            return make_partition(
                parts, y, num_classes=num_classes, scheme=f"quantity skew (beta={beta:g}, m={m})"
            )
    raise ValueError(
        f"quantity_skew: no draw in {max_tries} tries gave every client >= {min_size} examples; "
        "lower min_size, raise beta, or use fewer clients"
    )
