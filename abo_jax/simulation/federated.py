"""The federated round as a value: ``federated_round(...)`` returns pure functions of one run.

In the manner of optax's ``GradientTransformation`` and fedjax's ``FederatedAlgorithm``, a round is
a small NamedTuple of pure functions built from values: the model, the ABO, the optimizer and the
local update (written for ONE client, ``jax.vmap``-ed here). Runs, meshes, jit, buffer donation and
multi-round scans are wrappers (:mod:`abo_jax.simulation.wrappers`) that take a round and return one
of the same type; :func:`abo_jax.run` drives any of them (:func:`abo_jax.make_simulation` builds the
usual composition in one call).

What the round needs to know about the operator it reads from :attr:`ABO.traits`: which factors
train (``traits.trainable``), whether the base moves (``traits.corrects_base``: the per-example
cache is then recomputed every round), whether the broadcast is personal (evaluation), the clients'
ranks and LoRA scales. A caller who states one of them differently gets a clear error.

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348. Design: DESIGN.md, "Simulator".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from abo_jax.aggregation._base import ABO, Broadcast, broadcast_to_clients, check_broadcast_form
from abo_jax.data._shuffle import stable_partition
from abo_jax.data.client_data import ClientData
from abo_jax.distributed import local_values
from abo_jax.lora import is_lora, mask_rank
from abo_jax.models._base import Model, Trainable
from abo_jax.simulation._checks import check_key, check_metrics
from abo_jax.simulation.client import (
    client_update as one_client_update,
)
from abo_jax.simulation.client import (
    lora_train_mask,
    masked_cross_entropy,
    paper_sgd,
)
from abo_jax.simulation.client_map import default_map_clients
from abo_jax.simulation.evaluation import make_evaluate
from abo_jax.simulation.sampling import ClientSampling, full_participation, participation_weights

__all__ = [
    "SimState",
    "FederatedRound",
    "federated_round",
    "vmap_clients",
    "client_groups",
    "streamed_groups",
    "StreamedGroups",
]


class SimState(NamedTuple):
    """Everything a run carries from round to round (a leading run axis ``S`` under ``over_runs``)."""

    round: jax.Array  # () int32: rounds completed
    key: jax.Array  # () typed PRNG key, consumed by the next round
    frozen: Any  # frozen base parameters (no client axis)
    clients: Trainable  # the next round's start: one copy when abo.traits.one_start, else (m, ...)
    abo_state: Any  # the operator's state
    opt_state: Any  # (m, ...) per-client optimizer state, or None (fresh optimizer every round)
    weights: jax.Array  # (m,) float: base client weights p_i (sum 1)
    lora_scale: jax.Array  # (m,) float: per-client LoRA scale s_i
    hparams: Any  # pytree of scalars handed to the optimizer factory ({} if unused)


class FederatedRound(NamedTuple):
    """One federated round as pure functions (built by :func:`federated_round`, then wrapped).

    Attributes:
      init_state: ``init_state(key, data, weights, hparams, lora_scale) -> SimState``: the pure
        initial state from checked arguments (see :meth:`init`).
      check_init: ``check_init(key, data, weights, hparams, lora_scale) -> (key, weights, hparams,
        lora_scale)``: the host-side checks of :meth:`init`, with clear errors (data against the
        model and the operator's traits, weights, scales, keys).
      apply: ``apply(state, data, inputs=None) -> (state, metrics)``: one round (``n`` rounds with
        metrics stacked on a leading round axis after :func:`~abo_jax.scan_rounds`).
      prepare: ``prepare(state, data) -> inputs | None``: the per-example cache to pass to every
        round, or ``None`` when the round must recompute it (the operator corrects the base, or the
        model caches nothing).
      evaluate: ``evaluate(state, x, y, inputs=None) -> {"accuracy", "loss"}`` of the model the
        operator makes (global, or each client's own for a personalized operator).
      prepare_test: ``prepare_test(state, x) -> inputs | None``: the cache of a test set for
        :attr:`evaluate`, valid for the whole run under the same conditions as :attr:`prepare`.
      shard: ``shard(tree, kind) -> tree`` places ``kind="state" | "data" | "inputs" | "test"``
        on the round's mesh (:func:`~abo_jax.on_mesh`); the identity without one.
      num_runs: ``None``, or the size of the leading run axis of every state leaf
        (:func:`~abo_jax.over_runs`).
      abo: the operator.
    """

    init_state: Callable[..., SimState]
    check_init: Callable[..., tuple]
    apply: Callable[..., tuple[SimState, dict[str, jax.Array]]]
    prepare: Callable[..., Any]
    evaluate: Callable[..., dict[str, jax.Array]]
    prepare_test: Callable[..., Any]
    shard: Callable[..., Any]
    num_runs: int | None
    abo: ABO

    def init(self, key, data: ClientData, *, weights=None, hparams=None, lora_scale=None):
        """The initial state: ``init_state`` of the checked arguments.

        Args:
          key: one typed PRNG key (``jax.random.key(seed)``); with a run axis, one key (split) or
            ``(num_runs,)`` keys.
          data: the :class:`~abo_jax.ClientData` ``(m, n_max, ...)``.
          weights: ``(m,)`` client weights ``p`` (default: proportional to ``data.sizes``).
          hparams: pytree of scalars (or ``(num_runs,)`` arrays) for ``optimizer(hparams)``.
          lora_scale: a scalar or ``(m,)`` scales; default the operator's (``abo.traits``) or 1.
        """
        args = self.check_init(key, data, weights, hparams, lora_scale)
        # Jitted, so a start repeated for the clients (to shape the operator's state) is never
        # materialized when nothing keeps it: memory for a million clients, the same numbers.
        return jax.jit(self.init_state)(args[0], data, *args[1:])


def vmap_clients(train: Callable, per_client: tuple) -> Any:
    """Every client at once: ``jax.vmap(train)`` over the client axis (:func:`auto_clients` picks it
    when the clients' working set fits the cache)."""
    return jax.vmap(train)(*per_client)


def client_groups(size: int, mesh=None) -> Callable[[Callable, tuple], Any]:
    """Train the clients in groups of ``size``, one group after another (``lax.map`` over groups).

    Pass the result as ``federated_round(..., map_clients=client_groups(size))``. Bounds the
    activations held at once to a group's (peak memory) and on CPU keeps them in cache: the
    digits-sized MLP with 1000 clients trains 1.2x faster in groups of 125; a few large clients
    train slower (paper MLP, 10 clients in groups of 5: 0.77x) (``experiments/bench/RESULTS.md``).
    The same numbers up to float32 rounding.

    With a ``("clients",)`` ``mesh`` the groups are formed inside every device's share of the
    clients, so each device trains its own groups and the client axis stays sharded. A last short
    group is filled with copies of real clients whose results are dropped (no NaN, no effect).

    Args:
      size: clients per group (positive).
      mesh: ``None`` or the ``("clients",)`` mesh the round runs on (see :func:`~abo_jax.on_mesh`).
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"client_groups: size must be positive, got {size}")
    devices = 1 if mesh is None else mesh.shape[mesh.axis_names[0]]
    spec = None if mesh is None else jax.sharding.NamedSharding(mesh, _client_spec(mesh, 1))

    def map_clients(train, per_client):
        m = jax.tree.leaves(per_client)[0].shape[0]
        shards = devices if m % devices == 0 else 1  # a gathered subset that does not split evenly
        per_shard = m // shards
        if size >= per_shard:
            return jax.vmap(train)(*per_client)
        groups = -(-per_shard // size)
        pad = groups * size - per_shard

        def split(x):  # (m, ...) -> (groups, shards * size, ...), device-major in axis 1
            x = x.reshape(shards, per_shard, *x.shape[1:])
            if pad:
                x = jnp.concatenate([x, x[:, :pad]], axis=1)
            x = x.reshape(shards, groups, size, *x.shape[2:]).swapaxes(0, 1)
            x = x.reshape(groups, shards * size, *x.shape[3:])
            return jax.lax.with_sharding_constraint(x, spec) if shards > 1 else x

        def merge(x):  # the inverse of split, padding dropped
            x = x.reshape(groups, shards, size, *x.shape[2:]).swapaxes(0, 1)
            x = x.reshape(shards, groups * size, *x.shape[3:])[:, :per_shard]
            return x.reshape(m, *x.shape[2:])

        out = jax.lax.map(lambda group: jax.vmap(train)(*group), jax.tree.map(split, per_client))
        return jax.tree.map(merge, out)

    return map_clients


class StreamedGroups(NamedTuple):
    """A ``map_clients`` value that aggregates while it trains (see :func:`streamed_groups`)."""

    size: int  # clients per group


def streamed_groups(size: int) -> StreamedGroups:
    """Train the clients in groups of ``size`` and aggregate each group as it finishes.

    Pass it as ``federated_round(..., map_clients=streamed_groups(size))`` with an operator that has
    a streamed form (``abo.streamed``: :func:`~abo_jax.product_sum`, :func:`~abo_jax.sum_product`,
    :func:`~abo_jax.fedavg_full`). Each group's weighted sums are added to the operator's as soon as
    the group has trained, so a round holds the client data, one group's working set and the sums,
    never the ``m`` trained trees; with ``precompute=False`` the per-example cache is computed per
    group too. The same numbers as :func:`client_groups` up to float32 summation order (SP takes
    the dense SVD of the accumulated ``Zbar``). Every client trains (one outside the round has
    weight 0); the optimizer is fresh every round; ``metrics_fn``, which needs every client's
    factors, is not available. It is written for one device: on a client mesh its groups are cut
    across the devices' shares (use :func:`client_groups` with the mesh there).

    Args:
      size: clients per group (positive).
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"streamed_groups: size must be positive, got {size}")
    return StreamedGroups(size=size)


def _check_streamed(abo: ABO, *, reset_optimizer: bool, metrics_fn: Any) -> None:
    if abo.streamed is None:
        raise ValueError(
            "map_clients=streamed_groups(...): the operator has no streamed form (abo.streamed); "
            "use product_sum(), sum_product() or fedavg_full(), or client_groups(size)"
        )
    if not reset_optimizer:
        raise ValueError(
            "map_clients=streamed_groups(...) keeps no per-client optimizer state: use "
            "reset_optimizer=True, or client_groups(size)"
        )
    if metrics_fn is not None:
        raise ValueError(
            "map_clients=streamed_groups(...): metrics_fn needs every client's trained factors, "
            "which a streamed round never holds; use client_groups(size) to record them"
        )


def _client_spec(mesh, axis: int):
    return jax.sharding.PartitionSpec(*([None] * axis), mesh.axis_names[0])


def check_data(data: ClientData) -> int:
    """Checks the shapes of a :class:`~abo_jax.ClientData`; returns ``m``."""
    if not isinstance(data, ClientData):
        raise ValueError(f"data: expected a ClientData, got {type(data).__name__}")
    if data.y.ndim != 2:
        raise ValueError(f"data.y: expected (m, n_max) labels, got shape {data.y.shape}")
    m, n_max = data.y.shape
    if data.x.ndim < 3 or data.x.shape[:2] != (m, n_max):
        raise ValueError(
            f"data.x: expected (m, n_max, ...) = ({m}, {n_max}, ...), got shape {data.x.shape}"
        )
    if data.mask.shape != (m, n_max):
        raise ValueError(f"data.mask: expected ({m}, {n_max}), got {data.mask.shape}")
    if data.sizes.shape != (m,):
        raise ValueError(f"data.sizes: expected ({m},), got {data.sizes.shape}")
    return int(m)


def _per_client(value: Any, m: int, name: str, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype)
    if arr.ndim == 0:
        return np.full((m,), arr)
    if arr.shape != (m,):
        raise ValueError(
            f"{name}: expected a scalar or shape ({m},) (one per client), got {arr.shape}"
        )
    return arr


def _same(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y) for x, y in zip(la, lb, strict=True)
    )


def resolve_client_ranks(abo: ABO, client_ranks: Any) -> Any:
    """The clients' ranks: the operator's declared ones; a different ``client_ranks`` is an error."""
    declared = abo.traits.client_ranks
    if client_ranks is None:
        return declared
    if declared is not None and not _same(declared, client_ranks):
        raise ValueError(
            f"client_ranks: {np.asarray(client_ranks).tolist()} contradicts the operator's "
            f"declared ranks {jax.tree.map(lambda r: np.asarray(r).tolist(), declared)}; give the "
            "ranks once, to the operator (e.g. hetlora(ranks)), and leave client_ranks out"
        )
    return client_ranks


def _check_model(model: Model, data: ClientData) -> None:
    """Data/model mismatches surface here with a clear message, not deep inside the round."""
    frozen, trainable = jax.eval_shape(model.init, jax.random.key(0))
    try:
        batch = jax.ShapeDtypeStruct((1, *data.x.shape[2:]), data.x.dtype)
        logits = jax.eval_shape(
            lambda f, t, x: model.apply(f, t, model.prepare(f, x), 1.0), frozen, trainable, batch
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"data and model do not match: examples of shape {data.x.shape[2:]} -> {err}"
        ) from err
    if logits.ndim != 2:
        raise ValueError(f"model: expected logits (b, classes), got shape {logits.shape}")
    y = local_values(data.y)[local_values(data.mask).astype(bool)]  # this process's clients
    if y.size and (y.min() < 0 or y.max() >= logits.shape[-1]):
        raise ValueError(
            f"data.y: labels must lie in [0, {logits.shape[-1]}) for this model, "
            f"got range [{y.min()}, {y.max()}]"
        )


def _init_weights(data: ClientData, weights: Any, m: int, dtype) -> np.ndarray:
    sizes = np.asarray(data.sizes)
    if weights is None:
        if sizes.sum() <= 0:
            raise ValueError("data.sizes: all clients are empty")
        weights = sizes / sizes.sum()
    w = np.asarray(weights, np.float64)
    if w.shape != (m,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
        raise ValueError(f"weights: expected ({m},) non-negative summing to 1, got {w}")
    return w.astype(dtype)


def _init_scale(abo: ABO, lora_scale: Any, m: int, dtype) -> np.ndarray:
    declared = abo.traits.lora_scale
    if lora_scale is None:
        return _per_client(1.0 if declared is None else declared, m, "lora_scale", dtype)
    scale = _per_client(lora_scale, m, "lora_scale", dtype)
    if declared is not None:
        want = _per_client(declared, m, "the operator's lora_scale", dtype)
        if not np.allclose(scale, want):
            raise ValueError(
                f"lora_scale: {scale.tolist()} contradicts the scale the operator assumes "
                f"({want.tolist()}); give it once, to the operator (e.g. fedex(scale) or "
                "hetlora(ranks, alpha)), and leave lora_scale out"
            )
    return scale


def _mask_client_ranks(lora: Any, client_ranks: Any) -> Any:
    """Every client's factors keep only their first ``r_i`` components (capped at each rank)."""
    nodes, treedef = jax.tree.flatten(lora, is_leaf=is_lora)
    factors = [x for x in nodes if is_lora(x)]
    per_layer = (
        [client_ranks] * len(factors)
        if isinstance(client_ranks, np.ndarray)
        else jax.tree.leaves(client_ranks)
    )
    ranks = iter(per_layer)
    out = [
        mask_rank(x, jnp.minimum(jnp.asarray(next(ranks)), x.rank)) if is_lora(x) else x
        for x in nodes
    ]
    return jax.tree.unflatten(treedef, out)


def _resolve_mask(trainable_mask: Any, abo: ABO, abo_state: Any, round_index, lora: Any) -> Any:
    if isinstance(trainable_mask, str):
        if trainable_mask != "auto":
            raise ValueError(
                f"trainable_mask: expected 'auto', None, a tree or a function, got {trainable_mask!r}"
            )
        mask = abo.traits.trainable(abo_state)
    elif callable(trainable_mask):
        mask = trainable_mask(abo_state, round_index)
    else:
        mask = trainable_mask
    if is_lora(mask):  # one LoRAFactors(b=..., a=...) for every adapted layer
        mask = lora_train_mask(lora, b=mask.b, a=mask.a)
    return mask


class _Spec(NamedTuple):
    """The round's static parts, checked once (see :func:`federated_round` for their meaning)."""

    model: Model
    abo: ABO
    optimizer: Any
    make_optimizer: Callable | None
    update: Callable
    local_epochs: int
    batch_size: int
    sampling: ClientSampling
    trainable_mask: Any
    metrics_fn: Callable | None
    client_ranks: Any
    reset_optimizer: bool
    loss_fn: Callable
    train_only_sampled: bool
    map_clients: Callable

    def build_optimizer(self, hparams):
        return self.make_optimizer(hparams) if self.make_optimizer is not None else self.optimizer


def _make_init_state(spec: _Spec) -> Callable[..., SimState]:
    model, abo = spec.model, spec.abo

    def init_state(key, data, weights, hparams, lora_scale):
        m = data.y.shape[0]
        k_model, k_abo, k_run = jax.random.split(key, 3)
        frozen, trainable = model.init(k_model)
        per_client = broadcast_to_clients(trainable, m)
        if spec.client_ranks is not None:
            lora = _mask_client_ranks(per_client.lora, spec.client_ranks)
            per_client = per_client._replace(lora=lora)
        opt_state = None
        if not spec.reset_optimizer:
            opt_state = jax.vmap(spec.build_optimizer(hparams).init)(per_client)
        return SimState(
            round=jnp.zeros((), jnp.int32),
            key=k_run,
            frozen=frozen,
            clients=trainable if abo.traits.one_start else per_client,
            abo_state=abo.init(per_client, key=k_abo),
            opt_state=opt_state,
            weights=weights,
            lora_scale=lora_scale,
            hparams=hparams,
        )

    return init_state


def _check_declared_traits(spec: _Spec, init_state, *args) -> None:
    """What the operator does must be what it declares (checked on shapes, nothing computed)."""

    one_start = spec.abo.traits.one_start

    def aggregate_once(*args):
        state = init_state(*args)
        m = state.weights.shape[0]
        clients = broadcast_to_clients(state.clients, m) if one_start else state.clients
        return clients, spec.abo.aggregate(clients, state.weights, state.abo_state)[0]

    clients, broadcast = jax.eval_shape(aggregate_once, *args)
    # A hand-written ABO(init, aggregate) is not checked by make_abo: its form is checked here.
    check_broadcast_form(clients, broadcast.factors, one_copy=one_start)
    if jax.tree.leaves(broadcast.base_delta) and not spec.abo.traits.corrects_base:
        raise ValueError(
            "abo: the operator returns a base_delta but does not declare it; build it with "
            "make_abo(..., traits=Traits(corrects_base=True)) so the round recomputes the "
            "per-example cache of the moving base"
        )


def _make_check_init(spec: _Spec, init_state: Callable) -> Callable[..., tuple]:
    def check_init(key, data: ClientData, weights, hparams, lora_scale):
        m = check_data(data)
        spec.sampling.validate(m)
        ranks = spec.client_ranks
        if isinstance(ranks, np.ndarray) and ranks.shape != (m,):
            raise ValueError(
                f"client_ranks: expected shape ({m},) (one per client), got {ranks.shape}"
            )
        if spec.make_optimizer is not None and hparams is None:
            raise ValueError("hparams: required when optimizer is a function of hparams")
        hparams = {} if hparams is None else jax.tree.map(np.asarray, hparams)
        dtype = np.dtype(jnp.result_type(float))
        weights = _init_weights(data, weights, m, dtype)
        lora_scale = _init_scale(spec.abo, lora_scale, m, dtype)
        _check_model(spec.model, data)
        key = check_key(key)  # one typed key; None, a seed or a wrong shape named
        _check_declared_traits(spec, init_state, key, data, weights, hparams, lora_scale)
        return key, weights, hparams, lora_scale

    return check_init


def _local_training(spec: _Spec, state: SimState) -> Callable:
    """``train_from(start, inputs, labels, mask, key, scale, opt_state)``: ONE client's update."""
    mask_tree = _resolve_mask(
        spec.trainable_mask, spec.abo, state.abo_state, state.round, state.clients.lora
    )
    opt = spec.build_optimizer(state.hparams)

    def train_from(trainable, client_inputs, labels, mask, key, scale, opt_state):
        return spec.update(
            spec.model,
            opt,
            state.frozen,
            trainable,
            client_inputs,
            labels,
            mask,
            key,
            local_epochs=spec.local_epochs,
            batch_size=spec.batch_size,
            lora_scale=scale,
            trainable_mask=mask_tree,
            opt_state=opt_state,
            loss_fn=spec.loss_fn,
        )

    return train_from


def _train_round_clients(spec: _Spec, state: SimState, data: ClientData, inputs, keys, taking_part):
    """Local training of every client (or only the sampled ones) and the kept results."""
    m = data.y.shape[0]
    train_from = _local_training(spec, state)
    per_client = (inputs, data.y, data.mask, keys, state.lora_scale, state.opt_state)
    if spec.abo.traits.one_start:  # one start for everyone: shared by the vmap, not copied
        starts = broadcast_to_clients(state.clients, m)

        def train(*rest):
            return train_from(state.clients, *rest)

    else:
        starts, train = state.clients, train_from
        per_client = (state.clients, *per_client)
    count = spec.sampling.count if spec.train_only_sampled else None
    if count is None or count >= m:
        update = spec.map_clients(train, per_client)

        def keep(new, old):
            return jnp.where(taking_part.reshape((m,) + (1,) * (new.ndim - 1)), new, old)

    else:
        # Train only the `count` sampled clients (fixed count: fixed shapes), each with the key it
        # would have had anyway, and scatter the results back.
        chosen = stable_partition(taking_part)[:count]
        update = spec.map_clients(train, jax.tree.map(lambda x: x[chosen], per_client))

        def keep(new, old):
            return old.at[chosen].set(new)

        losses = jnp.zeros((m,), update.train_loss.dtype).at[chosen].set(update.train_loss)
        update = update._replace(train_loss=losses)
    trained = jax.tree.map(keep, update.trainable, starts)
    opt_state = None
    if not spec.reset_optimizer:
        opt_state = jax.tree.map(keep, update.opt_state, state.opt_state)
    return trained, opt_state, update.train_loss


def _train_and_aggregate_in_groups(
    spec: _Spec, state: SimState, data: ClientData, inputs, keys, weights, prepare_clients
):
    """Trains the clients group after group, adding each group's sums to ``abo.streamed``.

    A round then holds one group's trained trees (and its per-example cache when ``inputs`` is
    ``None``), never the ``m`` of them. The last group, when ``size`` does not divide ``m``, is
    read from ``m - size`` on; the clients it repeats get weight 0 there.
    """
    m = data.y.shape[0]
    size = min(spec.map_clients.size, m)
    groups = -(-m // size)
    streamed = spec.abo.streamed
    train_from = _local_training(spec, state)
    source = data.x if inputs is None else inputs
    per_client = (source, data.y, data.mask, keys, state.lora_scale, weights)

    def body(g, carry):
        sums, losses = carry
        start = jnp.minimum(g * size, m - size)
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)
        x, y, mask, k, scale, w = jax.tree.map(take, per_client)
        fresh = start + jnp.arange(size) >= g * size  # not already counted by the group before
        group_inputs = prepare_clients(state.frozen, x) if inputs is None else x
        train = lambda *rest: train_from(state.clients, *rest, None)
        update = jax.vmap(train)(group_inputs, y, mask, k, scale)
        sums = streamed.add(sums, update.trainable, jnp.where(fresh, w, jnp.zeros_like(w)))
        old = jax.lax.dynamic_slice_in_dim(losses, start, size)
        new = jnp.where(fresh, update.train_loss.astype(losses.dtype), old)
        return sums, jax.lax.dynamic_update_slice_in_dim(losses, new, start, axis=0)

    sums = streamed.zeros(state.clients)
    losses = jnp.zeros((m,), jnp.result_type(float))
    sums, losses = jax.lax.fori_loop(0, groups, body, (sums, losses))
    broadcast, abo_state, diag = streamed.finish(sums, weights, state.abo_state, state.clients)
    return broadcast, abo_state, diag, losses


def _make_apply(spec: _Spec, prepare_clients: Callable) -> Callable:
    model, abo = spec.model, spec.abo

    def apply(state: SimState, data: ClientData, inputs=None):
        m = data.y.shape[0]
        keys = jax.random.split(state.key, m + 2)  # one PRNG kernel for every purpose
        k_next, k_sample, client_keys = keys[0], keys[1], keys[2:]
        taking_part = spec.sampling.sample(k_sample, m)
        weights = participation_weights(state.weights, taking_part)
        if isinstance(spec.map_clients, StreamedGroups):
            broadcast, abo_state, diag, losses = _train_and_aggregate_in_groups(
                spec, state, data, inputs, client_keys, weights, prepare_clients
            )
            trained, opt_state = None, None
        else:
            if inputs is None:
                inputs = prepare_clients(state.frozen, data.x)
            trained, opt_state, losses = _train_round_clients(
                spec, state, data, inputs, client_keys, taking_part
            )
            # The whole trainable tree travels through the operator (dense leaves such as biases
            # are FedAvg-ed by it), so its byte counts include everything a client sends.
            broadcast, abo_state, diag = abo.aggregate(trained, weights, state.abo_state)
        delta = broadcast.base_delta
        lora_broadcast = Broadcast(
            factors=broadcast.factors.lora, base_delta=None if delta is None else delta.lora
        )
        metrics = {
            "train_loss": jnp.sum(weights * losses.astype(weights.dtype)),
            "participants": jnp.sum(taking_part.astype(jnp.int32)),
            **{f"abo/{name}": value for name, value in diag.items()},
        }
        if spec.metrics_fn is not None:
            extra = spec.metrics_fn(trained.lora, weights, lora_broadcast)
            metrics.update(check_metrics(extra, reserved=metrics))
        new_state = state._replace(
            round=state.round + 1,
            key=k_next,
            frozen=model.fold(state.frozen, lora_broadcast.base_delta),
            clients=broadcast.factors,  # one copy for a global operator (its declared form)
            abo_state=abo_state,
            opt_state=opt_state,
        )
        return new_state, metrics

    return apply


def federated_round(
    model: Model,
    abo: ABO,
    *,
    optimizer: optax.GradientTransformation
    | Callable[[Any], optax.GradientTransformation]
    | None = None,
    client_update: Callable[..., Any] = one_client_update,
    local_epochs: int = 1,
    batch_size: int = 64,
    sampling: ClientSampling | None = None,
    trainable_mask: Any = "auto",
    metrics_fn: Callable[[Any, jax.Array, Any], dict[str, jax.Array]] | None = None,
    client_ranks: Any = None,
    reset_optimizer: bool = True,
    precompute: bool = True,
    personalized: bool | None = None,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    train_only_sampled: bool = True,
    map_clients: Callable[[Callable, tuple], Any] = default_map_clients,
) -> FederatedRound:
    """One federated round of ``model`` aggregated by ``abo``, as pure functions of one run.

    A round: sample clients (weights of the others set to 0, the rest renormalized); train every
    client from its broadcast start with ``client_update`` mapped over the clients by
    ``map_clients`` (the frozen base shared, not copied); keep the start for non-sampled clients;
    aggregate the whole :class:`~abo_jax.Trainable` tree with ``abo`` (its LoRA factors by the
    operator's rule, dense leaves such as biases FedAvg-ed by it, so its ``bytes_up`` /
    ``bytes_down`` count everything that travels); fold ``broadcast.base_delta`` into the frozen
    base; start every client from the broadcast next round. Nothing depends on the round index's value, so a jitted round is traced once.

    Args:
      model: a :class:`~abo_jax.models.Model`.
      abo: any :class:`~abo_jax.ABO`; its :class:`~abo_jax.Traits` say which factors train, whether
        the base moves, the ranks and the LoRA scales.
      optimizer: an optax transformation, or ``fn(hparams) -> transformation`` (so hyperparameters
        in ``state.hparams`` may vary along a run axis); default :func:`~abo_jax.paper_sgd`.
      client_update: the local training of ONE client, with the signature of
        :func:`~abo_jax.client_update` (the default): swap the local update here.
      local_epochs: local epochs ``E`` per round.
      batch_size: rows per local step.
      sampling: :func:`~abo_jax.simulation.full_participation` (default), :func:`~abo_jax.uniform_sampling`,
        :func:`~abo_jax.simulation.bernoulli_sampling`.
      trainable_mask: which LoRA factors train: ``"auto"`` (default: ``abo.traits.trainable``),
        ``None`` (all), a static tree like ``trainable.lora`` with scalar leaves, or
        ``fn(abo_state, round) -> tree`` evaluated inside the round. A single
        ``LoRAFactors(b=..., a=...)`` of scalars applies to every layer. ``extra`` always trains.
      metrics_fn: ``fn(clients, weights, broadcast) -> dict of arrays`` evaluated inside the round
        on the trained client LoRA tree ``(m, ...)``, the round's weights ``(m,)`` and the
        :class:`~abo_jax.Broadcast` (theory's mismatch functionals go here).
      client_ranks: ``None`` (the operator's declared ranks, ``abo.traits.client_ranks``) or the
        same ranks again; different ones raise. At init every client's factors keep only their
        first ``r_i`` components.
      reset_optimizer: a fresh optimizer state for every client every round (as an FL client that
        builds its optimizer per round); False keeps per-client state in ``SimState.opt_state``.
      precompute: let ``prepare`` cache the model's per-example work once for the whole run.
      personalized: evaluate every client's own model (loss and accuracy averaged with ``p``)
        instead of the global one; ``None`` (default) follows ``abo.traits.personalized``.
      loss_fn: ``(logits, labels, mask) -> scalar`` (default masked mean cross-entropy).
      train_only_sampled: with a fixed-count sampler, train only the sampled clients (gathered,
        mapped, scattered back); the same numbers either way.
      map_clients: ``(train, per_client) -> results``: how the one-client ``train`` runs over the
        client axis: :func:`~abo_jax.simulation.auto_clients` (default: one vmap when the clients'
        working set fits the cache, as LoRA clients over a shared base do, else client groups
        sized to it, as full-weight clients need), :func:`vmap_clients` or :func:`client_groups`;
        or :func:`streamed_groups`, which aggregates each group as it finishes.

    Returns:
      A :class:`FederatedRound` of un-jitted functions: wrap it with :func:`~abo_jax.jit_round`
      (and :func:`~abo_jax.over_runs`, :func:`~abo_jax.on_mesh`, :func:`~abo_jax.scan_rounds`).

    Example:
      >>> from abo_jax import paper_mlp, product_sum
      >>> rnd = federated_round(paper_mlp(64, (32, 32), ranks=2), product_sum())
      >>> # state = rnd.init(jax.random.key(0), data); state, metrics = rnd.apply(state, data)
    """
    if int(local_epochs) <= 0:
        raise ValueError(f"local_epochs must be positive, got {local_epochs}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not callable(client_update):
        raise ValueError(f"client_update: expected a function, got {type(client_update).__name__}")
    if isinstance(map_clients, StreamedGroups):
        _check_streamed(abo, reset_optimizer=reset_optimizer, metrics_fn=metrics_fn)
    optimizer = paper_sgd() if optimizer is None else optimizer
    make_optimizer = optimizer if callable(optimizer) and not hasattr(optimizer, "update") else None
    spec = _Spec(
        model=model,
        abo=abo,
        optimizer=optimizer,
        make_optimizer=make_optimizer,
        update=client_update,
        local_epochs=int(local_epochs),
        batch_size=int(batch_size),
        sampling=full_participation() if sampling is None else sampling,
        trainable_mask=trainable_mask,
        metrics_fn=metrics_fn,
        client_ranks=resolve_client_ranks(abo, client_ranks),
        reset_optimizer=bool(reset_optimizer),
        loss_fn=loss_fn,
        train_only_sampled=bool(train_only_sampled),
        map_clients=map_clients,
    )
    prepare_clients = jax.vmap(model.prepare, in_axes=(None, 0))
    init_state = _make_init_state(spec)
    fixed_cache = bool(precompute and model.caches and not abo.traits.corrects_base)
    personal = abo.traits.personalized if personalized is None else bool(personalized)
    return FederatedRound(
        init_state=init_state,
        check_init=_make_check_init(spec, init_state),
        apply=_make_apply(spec, prepare_clients),
        prepare=lambda state, data: prepare_clients(state.frozen, data.x) if fixed_cache else None,
        evaluate=make_evaluate(model, personalized=personal, one_start=abo.traits.one_start),
        prepare_test=lambda state, x: model.prepare(state.frozen, x) if fixed_cache else None,
        shard=lambda tree, kind: tree,
        num_runs=None,
        abo=abo,
    )
