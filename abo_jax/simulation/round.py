"""A federated round jitted once: vmapped local training, the ABO, the broadcast, the base fold.

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from abo_jax.aggregation._base import ABO, broadcast_to_clients, weighted_sum
from abo_jax.data._shuffle import stable_partition
from abo_jax.data.client_data import ClientData
from abo_jax.lora import LoRAFactors, is_lora, mask_rank
from abo_jax.models._base import Model, Trainable
from abo_jax.simulation.client import (
    client_update,
    lora_train_mask,
    masked_cross_entropy,
    paper_sgd,
)
from abo_jax.simulation.sampling import ClientSampling, full_participation, participation_weights

__all__ = ["SimState", "Simulation", "make_simulation", "global_trainable"]

CLIENT_AXIS = "clients"
RUN_AXIS = "runs"


class SimState(NamedTuple):
    """Everything a run carries from round to round (a leading run axis ``S`` when ``num_runs``)."""

    round: jax.Array  # () int32: rounds completed
    key: jax.Array  # () typed PRNG key, consumed by the next round
    frozen: Any  # frozen base parameters (no client axis)
    clients: Trainable  # (m, ...) every client's starting point for the next round (the broadcast)
    abo_state: Any  # the operator's state
    opt_state: Any  # (m, ...) per-client optimizer state, or None (fresh optimizer every round)
    weights: jax.Array  # (m,) float: base client weights p_i (sum 1)
    lora_scale: jax.Array  # (m,) float: per-client LoRA scale s_i
    hparams: Any  # pytree of scalars handed to the optimizer factory ({} if unused)


class Simulation(NamedTuple):
    """A simulator: pure functions built by :func:`make_simulation`.

    Attributes:
      init: ``init(key, data, *, weights=None, hparams=None, lora_scale=None) -> SimState``.
      round: jitted ``round(state, data, inputs=None) -> (state, metrics)``.
      evaluate: jitted ``evaluate(state, x, y, inputs=None) -> {"accuracy", "loss"}`` of the
        global model; ``inputs`` is ``prepare_test(state, x)`` when available (else recomputed).
      prepare: ``prepare(state, data) -> inputs | None``: the per-example cache to pass to every
        round, or ``None`` when the round must recompute it (a base-correcting ABO, or
        ``precompute=False``).
      shard: ``shard(tree, kind) -> tree`` places ``kind="state" | "data" | "inputs"`` on the mesh
        (the client axis, or the run axis, split over devices); the identity without a mesh.
      round_step: the un-jitted round (for composing, e.g. under another vmap).
      num_runs: ``None`` or the size of the leading run axis.
      prepare_test: ``prepare_test(state, x) -> inputs | None``: the model's per-example cache of
        a test set ``x (n, ...)`` for :attr:`evaluate`, valid for the whole run under the same
        conditions as ``prepare`` (``None`` otherwise).
      rounds: jitted ``rounds(state, data, inputs=None, *, num_rounds) -> (state, metrics)``:
        ``num_rounds`` rounds in one ``jax.lax.scan`` (one dispatch, the state carried in place),
        each metric stacked with a leading round axis; the same numbers as calling ``round`` that
        many times. Traced once per ``num_rounds``.
    """

    init: Callable[..., SimState]
    round: Callable[..., tuple[SimState, dict[str, jax.Array]]]
    evaluate: Callable[..., dict[str, jax.Array]]
    prepare: Callable[..., Any]
    shard: Callable[..., Any]
    round_step: Callable[..., tuple[SimState, dict[str, jax.Array]]]
    num_runs: int | None = None
    rounds: Callable[..., tuple[SimState, dict[str, jax.Array]]] | None = None
    prepare_test: Callable[..., Any] | None = None


def global_trainable(clients: Trainable, weights: jax.Array, lora_scale: jax.Array) -> Trainable:
    """The global model of a round: the weighted mean of the clients' trainable trees, scale folded.

    ``B = sum_i p_i s_i B_i``, ``A = sum_i p_i A_i`` (apply with scale 1), dense leaves
    ``sum_i p_i W_i``. For a global operator (identical broadcast, equal scales) this is exactly the
    broadcast model; for personalized operators (FedSA-LoRA) it is the mean of the personal factors.

    Args:
      clients: ``Trainable`` with a leading client axis ``m``.
      weights: ``(m,)``.
      lora_scale: ``(m,)``.
    """

    def one(x):
        if is_lora(x):
            ws = (weights * lora_scale).astype(x.b.dtype)
            return LoRAFactors(
                b=jnp.einsum("c,c...->...", ws, x.b),
                a=jnp.einsum("c,c...->...", weights.astype(x.a.dtype), x.a),
            )
        return jnp.einsum("c,c...->...", weights.astype(x.dtype), x)

    return Trainable(
        lora=jax.tree.map(one, clients.lora, is_leaf=is_lora),
        extra=weighted_sum(clients.extra, weights),
    )


def _resolve_mask(trainable_mask: Any, abo_state: Any, round_index: jax.Array, lora: Any) -> Any:
    if isinstance(trainable_mask, str):
        if trainable_mask != "auto":
            raise ValueError(
                f"trainable_mask: expected 'auto', None, a tree or a function, got {trainable_mask!r}"
            )
        method = getattr(abo_state, "trainable_factors", None)
        mask = method() if callable(method) else None
    elif callable(trainable_mask):
        mask = trainable_mask(abo_state, round_index)
    else:
        mask = trainable_mask
    if is_lora(mask):  # one LoRAFactors(b=..., a=...) for every adapted layer
        mask = lora_train_mask(lora, b=mask.b, a=mask.a)
    return mask


def _check_data(data: ClientData) -> int:
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


def make_simulation(
    model: Model,
    abo: ABO,
    *,
    optimizer: optax.GradientTransformation
    | Callable[[Any], optax.GradientTransformation]
    | None = None,
    local_epochs: int = 1,
    batch_size: int = 64,
    sampling: ClientSampling | None = None,
    trainable_mask: Any = "auto",
    metrics_fn: Callable[[Any, jax.Array, Any], dict[str, jax.Array]] | None = None,
    client_ranks: Any = None,
    reset_optimizer: bool = True,
    precompute: bool = True,
    eval_mode: Literal["global", "personalized"] = "global",
    num_runs: int | None = None,
    mesh: Mesh | None = None,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    max_traces: int | None = None,
    train_only_sampled: bool = True,
    donate_state: bool = False,
    client_chunk: int | None = None,
) -> Simulation:
    """Builds a federated simulator for ``model`` aggregated by any ABO.

    A round: sample clients (weights of the others set to 0, the rest renormalized); train every
    client from its broadcast start with :func:`client_update`, ``jax.vmap``-ed over clients with the
    frozen base broadcast (``in_axes=None``); keep the start for non-sampled clients; aggregate
    ``trainable.lora`` with ``abo`` and ``trainable.extra`` (biases) with the plain weighted mean;
    fold ``broadcast.base_delta`` into the frozen base; start every client from the broadcast next
    round. The whole round is one ``jax.jit``; nothing in it depends on the round index's value, so
    it is traced once.

    Args:
      model: a :class:`~abo_jax.models.Model`.
      abo: any :class:`~abo_jax.ABO` (``abo.aggregate(clients, weights, state)``).
      optimizer: an optax transformation, or ``fn(hparams) -> transformation`` (so hyper-parameters
        in ``state.hparams`` may vary along the run axis); default :func:`paper_sgd`.
      local_epochs: local epochs ``E`` per round.
      batch_size: rows per local step.
      sampling: :func:`full_participation` (default), :func:`uniform_sampling`,
        :func:`bernoulli_sampling`.
      trainable_mask: which LoRA factors train this round: ``"auto"`` (default: the operator's
        ``abo_state.trainable_factors()`` when its state has that method, as FFA-LoRA's and
        RoLoRA's do, else all), ``None`` (all), a static tree like ``trainable.lora`` with scalar
        leaves (e.g. ``lora_train_mask(lora, a=False)``), or ``fn(abo_state, round) -> tree``
        evaluated inside the jitted round. A single ``LoRAFactors(b=..., a=...)`` of scalars
        applies to every layer. ``extra`` (biases) always trains.
      metrics_fn: ``fn(clients, weights, broadcast) -> dict of arrays`` evaluated inside the jitted
        round on the trained client LoRA tree (``(m, ...)``), the round's weights ``(m,)`` and the
        :class:`~abo_jax.Broadcast`; recorded per round (theory's mismatch functionals go here).
      client_ranks: ``None`` or ``(m,)`` ints: heterogeneous ranks by zero padding; at init every
        client's factors keep only their first ``r_i`` components (capped at each layer's rank).
        Pass the matching ``lora_scale`` to :attr:`Simulation.init` (e.g. ``alpha / r_i``).
      reset_optimizer: a fresh optimizer state for every client every round (as an FL client that
        builds its optimizer per round); False keeps per-client state in ``SimState.opt_state``.
      precompute: let :attr:`Simulation.prepare` cache the model's per-example work (e.g. the MLP's
        ``x @ W0.T``) once for the whole run.
      eval_mode: ``"global"``: evaluate :func:`global_trainable` (the broadcast for global
        operators, the mean personal factors for personalized ones); ``"personalized"``: every
        client's own broadcast model on the test set, loss and accuracy averaged with ``p``.
      num_runs: ``S`` independent runs (seeds, learning rates) sharing one jitted round: every
        state leaf gets a leading axis ``S``; ``init`` takes ``S`` keys and per-run ``hparams``.
      mesh: a ``jax.sharding.Mesh`` with one axis, named ``"clients"``: the client axis of data,
        inputs and per-client state is split over it (``m`` must be divisible by its size); or
        named ``"runs"`` (with ``num_runs`` divisible by its size): each device holds whole runs
        (seeds), the data is replicated, and the runs train side by side.
        On CPU, several host devices (``jax.config.update("jax_num_cpu_devices", n)`` before
        JAX starts) let the cores run devices' shares side by side (on 2 cores, against a
        one-device process: 1.4x per round for the paper's 10 clients, 2x for 1000 small ones;
        ``experiments/bench/RESULTS.md``).
      loss_fn: ``(logits, labels, mask) -> scalar`` (default masked mean cross-entropy).
      max_traces: if set, the round raises when traced more often (``chex.assert_max_traces``).
      train_only_sampled: with a fixed-count sampler (:func:`uniform_sampling`), train only the
        sampled clients (gathered, vmapped, scattered back) instead of all ``m`` with the others'
        results discarded; the numbers are the same either way.
      donate_state: donate the state's buffers to the jitted round (``donate_argnums=0``), so XLA
        can write the next state in place (less peak memory per client). The state passed in is
        then deleted: always continue from the returned state, as :func:`abo_jax.run` does, and
        never call ``round`` twice on the same state. Same numbers either way.
      client_chunk: train the clients in groups of this many, one group after another
        (``lax.map`` over groups, ``jax.vmap`` within), instead of all at once; with a ``mesh``,
        groups of each device's share. Bounds the activations held at once to a group's (peak
        memory) and, on CPU, keeps them in cache: the digits-sized MLP with 1000 clients trains
        1.2x faster in groups of 125 (``experiments/bench/vmap_vs_loop.py``); a few large
        clients train slower (paper MLP, 10 clients in groups of 5: 0.77x). The same numbers up
        to float32 rounding.

    Returns:
      A :class:`Simulation`.

    Example:
      >>> from abo_jax import paper_mlp, product_sum
      >>> sim = make_simulation(paper_mlp(64, (32, 32), ranks=2), product_sum())
      >>> # state = sim.init(jax.random.key(0), data); state, metrics = sim.round(state, data)
    """
    if int(local_epochs) <= 0:
        raise ValueError(f"local_epochs must be positive, got {local_epochs}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if eval_mode not in ("global", "personalized"):
        raise ValueError(f"eval_mode must be 'global' or 'personalized', got {eval_mode!r}")
    if num_runs is not None and int(num_runs) <= 0:
        raise ValueError(f"num_runs must be positive, got {num_runs}")
    if client_chunk is not None and int(client_chunk) <= 0:
        raise ValueError(f"client_chunk must be positive or None, got {client_chunk}")
    if mesh is not None and tuple(mesh.axis_names) not in ((CLIENT_AXIS,), (RUN_AXIS,)):
        raise ValueError(
            f"mesh: needs one axis, named {CLIENT_AXIS!r} (split the clients) or {RUN_AXIS!r} "
            f"(split the runs), got {mesh.axis_names}"
        )
    if mesh is not None and RUN_AXIS in mesh.axis_names:
        if num_runs is None or int(num_runs) % mesh.shape[RUN_AXIS]:
            raise ValueError(
                f"mesh: a {RUN_AXIS!r} axis of {mesh.shape[RUN_AXIS]} devices needs num_runs "
                f"divisible by it, got num_runs={num_runs}"
            )
    run_mesh = mesh if mesh is not None and RUN_AXIS in mesh.axis_names else None
    client_mesh = None if run_mesh is not None else mesh  # the mesh that splits the clients
    local_epochs, batch_size = int(local_epochs), int(batch_size)
    client_chunk = None if client_chunk is None else int(client_chunk)
    sampling = full_participation() if sampling is None else sampling
    optimizer = paper_sgd() if optimizer is None else optimizer
    make_optimizer = optimizer if callable(optimizer) and not hasattr(optimizer, "update") else None
    prepare_clients = jax.vmap(model.prepare, in_axes=(None, 0))

    def build_optimizer(hparams):
        return make_optimizer(hparams) if make_optimizer is not None else optimizer

    # ---- init ---------------------------------------------------------------------------------
    def init_one(key, data, weights, hparams, lora_scale):
        m = data.y.shape[0]
        k_model, k_abo, k_run = jax.random.split(key, 3)
        frozen, trainable = model.init(k_model)
        clients = broadcast_to_clients(trainable, m)
        if client_ranks is not None:
            ranks = jnp.asarray(client_ranks)
            clients = clients._replace(
                lora=jax.tree.map(
                    lambda f: mask_rank(f, jnp.minimum(ranks, f.rank)) if is_lora(f) else f,
                    clients.lora,
                    is_leaf=is_lora,
                )
            )
        abo_state = abo.init(clients.lora, key=k_abo)
        opt_state = None
        if not reset_optimizer:
            opt = build_optimizer(hparams)
            opt_state = jax.vmap(opt.init)(clients)
        return SimState(
            round=jnp.zeros((), jnp.int32),
            key=k_run,
            frozen=frozen,
            clients=clients,
            abo_state=abo_state,
            opt_state=opt_state,
            weights=weights,
            lora_scale=lora_scale,
            hparams=hparams,
        )

    init_jit = jax.jit(init_one)

    def init(key, data: ClientData, *, weights=None, hparams=None, lora_scale=None) -> SimState:
        m = _check_data(data)
        sampling.validate(m)
        if client_ranks is not None and np.shape(client_ranks) != (m,):
            raise ValueError(
                f"client_ranks: expected shape ({m},) (one per client), got {np.shape(client_ranks)}"
            )
        if make_optimizer is not None and hparams is None:
            raise ValueError("hparams: required when optimizer is a function of hparams")
        hparams = {} if hparams is None else jax.tree.map(np.asarray, hparams)
        sizes = np.asarray(data.sizes)
        if weights is None:
            if sizes.sum() <= 0:
                raise ValueError("data.sizes: all clients are empty")
            weights = sizes / sizes.sum()
        w = np.asarray(weights, np.float64)
        if w.shape != (m,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
            raise ValueError(f"weights: expected ({m},) non-negative summing to 1, got {w}")
        dtype = np.dtype(jnp.result_type(float))
        weights = w.astype(dtype)
        lora_scale = _per_client(1.0 if lora_scale is None else lora_scale, m, "lora_scale", dtype)
        # Data/model mismatches surface here with a clear message, not deep inside the round.
        frozen, trainable = jax.eval_shape(model.init, jax.random.key(0))
        try:
            batch = jax.ShapeDtypeStruct((1, *data.x.shape[2:]), data.x.dtype)
            logits = jax.eval_shape(
                lambda f, t, x: model.apply(f, t, model.prepare(f, x), 1.0),
                frozen,
                trainable,
                batch,
            )
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"data and model do not match: examples of shape {data.x.shape[2:]} -> {err}"
            ) from err
        if logits.ndim != 2:
            raise ValueError(f"model: expected logits (b, classes), got shape {logits.shape}")
        y = np.asarray(data.y)[np.asarray(data.mask)]
        if y.size and (y.min() < 0 or y.max() >= logits.shape[-1]):
            raise ValueError(
                f"data.y: labels must lie in [0, {logits.shape[-1]}) for this model, "
                f"got range [{y.min()}, {y.max()}]"
            )
        if num_runs is None:
            if jnp.ndim(key) != 0:
                raise ValueError("key: expected one PRNG key (num_runs is None)")
            return init_jit(key, data, weights, hparams, lora_scale)
        keys = key if jnp.ndim(key) == 1 else jax.random.split(key, num_runs)
        if keys.shape != (num_runs,):
            raise ValueError(f"key: expected one key or ({num_runs},) keys, got {keys.shape}")
        hp_axes = jax.tree.map(lambda h: 0 if np.ndim(h) else None, hparams)
        init_runs = jax.vmap(init_one, in_axes=(0, None, None, hp_axes, None))
        return jax.jit(init_runs)(keys, data, weights, hparams, lora_scale)

    # ---- the round ----------------------------------------------------------------------------
    def constrain(tree, axis):
        if client_mesh is None:
            return tree
        sharding = NamedSharding(client_mesh, P(*([None] * axis), CLIENT_AXIS))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def train_clients(train, per_client):
        """``jax.vmap(train)`` over the client axis, or in groups of ``client_chunk`` clients.

        Groups run one after another (``lax.map``), each vmapped. With a mesh, groups are formed
        inside every device's share of the clients, so each device trains its own groups and the
        client axis stays sharded. A last short group is filled with copies of real clients whose
        results are dropped (no NaN, no effect on the others).
        """
        m = jax.tree.leaves(per_client)[0].shape[0]
        shards = 1 if client_mesh is None else client_mesh.shape[CLIENT_AXIS]
        if m % shards:  # a gathered subset that does not split evenly: groups over all of it
            shards = 1
        per_shard = m // shards
        if client_chunk is None or client_chunk >= per_shard:
            return jax.vmap(train)(*per_client)
        size = client_chunk
        groups = -(-per_shard // size)
        pad = groups * size - per_shard

        def split(x):  # (m, ...) -> (groups, shards * size, ...), device-major in axis 1
            x = x.reshape(shards, per_shard, *x.shape[1:])
            if pad:
                x = jnp.concatenate([x, x[:, :pad]], axis=1)
            x = x.reshape(shards, groups, size, *x.shape[2:]).swapaxes(0, 1)
            x = x.reshape(groups, shards * size, *x.shape[3:])
            return constrain(x, 1) if shards > 1 else x

        def merge(x):  # the inverse of split, padding dropped
            x = x.reshape(groups, shards, size, *x.shape[2:]).swapaxes(0, 1)
            x = x.reshape(shards, groups * size, *x.shape[3:])[:, :per_shard]
            return x.reshape(m, *x.shape[2:])

        out = jax.lax.map(lambda group: jax.vmap(train)(*group), jax.tree.map(split, per_client))
        return jax.tree.map(merge, out)

    def round_one(state: SimState, data: ClientData, inputs=None):
        m = data.y.shape[0]
        keys = jax.random.split(state.key, m + 2)  # one PRNG kernel for every purpose
        k_next, k_sample, client_keys = keys[0], keys[1], keys[2:]
        taking_part = sampling.sample(k_sample, m)
        weights = participation_weights(state.weights, taking_part)
        if inputs is None:
            inputs = prepare_clients(state.frozen, data.x)
        mask_tree = _resolve_mask(trainable_mask, state.abo_state, state.round, state.clients.lora)
        opt = build_optimizer(state.hparams)

        def train(trainable, client_inputs, labels, mask, key, scale, opt_state):
            return client_update(
                model,
                opt,
                state.frozen,
                trainable,
                client_inputs,
                labels,
                mask,
                key,
                local_epochs=local_epochs,
                batch_size=batch_size,
                lora_scale=scale,
                trainable_mask=mask_tree,
                opt_state=opt_state,
                loss_fn=loss_fn,
            )

        per_client = (
            state.clients,
            inputs,
            data.y,
            data.mask,
            client_keys,
            state.lora_scale,
            state.opt_state,
        )
        count = sampling.count if train_only_sampled else None
        if count is None or count >= m:
            update = train_clients(train, per_client)

            def keep(new, old):
                shape = (m,) + (1,) * (new.ndim - 1)
                return jnp.where(taking_part.reshape(shape), new, old)

        else:
            # Train only the `count` sampled clients (fixed count: fixed shapes), each with the key
            # it would have had anyway, and scatter the results back.
            chosen = stable_partition(taking_part)[:count]
            update = train_clients(train, jax.tree.map(lambda x: x[chosen], per_client))

            def keep(new, old):
                return old.at[chosen].set(new)

            update = update._replace(
                train_loss=jnp.zeros((m,), update.train_loss.dtype)
                .at[chosen]
                .set(update.train_loss)
            )
        trained = jax.tree.map(keep, update.trainable, state.clients)
        opt_state = None
        if not reset_optimizer:
            opt_state = jax.tree.map(keep, update.opt_state, state.opt_state)
        broadcast, abo_state, diag = abo.aggregate(trained.lora, weights, state.abo_state)
        extra = broadcast_to_clients(weighted_sum(trained.extra, weights), m)
        frozen = model.fold(state.frozen, broadcast.base_delta)
        metrics = {
            "train_loss": jnp.sum(weights * update.train_loss.astype(weights.dtype)),
            "participants": jnp.sum(taking_part.astype(jnp.int32)),
            **{f"abo/{name}": value for name, value in diag.items()},
        }
        if metrics_fn is not None:
            extra_metrics = metrics_fn(trained.lora, weights, broadcast)
            clash = set(extra_metrics) & set(metrics)
            if clash:
                raise ValueError(f"metrics_fn: names {sorted(clash)} clash with built-in metrics")
            metrics.update(extra_metrics)
        new_state = SimState(
            round=state.round + 1,
            key=k_next,
            frozen=frozen,
            clients=constrain(Trainable(lora=broadcast.factors, extra=extra), 0),
            abo_state=abo_state,
            opt_state=constrain(opt_state, 0),
            weights=state.weights,
            lora_scale=state.lora_scale,
            hparams=state.hparams,
        )
        return new_state, metrics

    def evaluate_one(state: SimState, x, y, inputs=None):
        if inputs is None:
            inputs = model.prepare(state.frozen, x)
        if eval_mode == "global":
            trainable = global_trainable(state.clients, state.weights, state.lora_scale)
            logits = model.apply(state.frozen, trainable, inputs, 1.0)
            loss = masked_cross_entropy(logits, y, jnp.ones(y.shape, bool))
            acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(loss.dtype))
            return {"accuracy": acc, "loss": loss}

        def one_client(trainable, scale):
            logits = model.apply(state.frozen, trainable, inputs, scale)
            loss = masked_cross_entropy(logits, y, jnp.ones(y.shape, bool))
            return jnp.mean((jnp.argmax(logits, -1) == y).astype(loss.dtype)), loss

        acc, loss = jax.vmap(one_client)(state.clients, state.lora_scale)
        w = state.weights.astype(loss.dtype)
        return {"accuracy": jnp.sum(w * acc), "loss": jnp.sum(w * loss)}

    if num_runs is None:
        round_step = round_one
        evaluate = evaluate_one
        prepare_runs = prepare_clients
        prepare_test_runs = model.prepare
    else:
        round_step = jax.vmap(round_one, in_axes=(0, None, 0))

        def evaluate(state, x, y, inputs=None):
            return jax.vmap(evaluate_one, in_axes=(0, None, None, 0))(state, x, y, inputs)

        prepare_runs = jax.vmap(prepare_clients, in_axes=(0, None))
        prepare_test_runs = jax.vmap(model.prepare, in_axes=(0, None))

    def round_entry(state, data, inputs=None):
        return round_step(state, data, inputs)

    if max_traces is not None:
        round_entry = chex.assert_max_traces(round_entry, n=max_traces)
    donate = 0 if donate_state else ()
    round_jit = jax.jit(round_entry, donate_argnums=donate)

    def rounds_entry(state, data, inputs=None, *, num_rounds: int):
        if int(num_rounds) <= 0:
            raise ValueError(f"num_rounds must be positive, got {num_rounds}")
        # Measured on CPU (experiments/bench/experimental.py --suite rounds): 1.1x (paper MLP,
        # m = 10) to 1.26x (digits MLP, m = 1000) faster per round than a loop of jitted rounds.
        return jax.lax.scan(
            lambda s, _: round_step(s, data, inputs), state, None, length=int(num_rounds)
        )

    rounds_jit = jax.jit(rounds_entry, static_argnames="num_rounds", donate_argnums=donate)
    evaluate_jit = jax.jit(evaluate)
    prepare_jit = jax.jit(prepare_runs)
    prepare_test_jit = jax.jit(prepare_test_runs)

    def cache_is_fixed(state: SimState) -> bool:
        if not precompute or not model.caches:
            return False
        one = jax.tree.map(lambda x: x[0], state) if num_runs is not None else state
        bc, _, _ = jax.eval_shape(abo.aggregate, one.clients.lora, one.weights, one.abo_state)
        return not jax.tree.leaves(bc.base_delta)  # else the base moves: recompute every round

    def prepare(state: SimState, data: ClientData):
        return prepare_jit(state.frozen, data.x) if cache_is_fixed(state) else None

    def prepare_test(state: SimState, x):
        return prepare_test_jit(state.frozen, x) if cache_is_fixed(state) else None

    def shard(tree, kind: Literal["state", "data", "inputs"]):
        if tree is None:
            return tree
        if run_mesh is not None:  # every state and inputs leaf has the run axis first
            runs = NamedSharding(run_mesh, P(RUN_AXIS))
            if kind == "data":
                return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(run_mesh, P())), tree)
            if kind in ("state", "inputs"):
                return jax.tree.map(lambda x: jax.device_put(x, runs), tree)
            raise ValueError(f"shard: kind must be 'state', 'data' or 'inputs', got {kind!r}")
        if client_mesh is None:
            return tree
        size = client_mesh.shape[CLIENT_AXIS]
        run_axes = 0 if num_runs is None else 1
        replicated = NamedSharding(client_mesh, P())

        def split(x, axis):
            if x.shape[axis] % size:
                raise ValueError(
                    f"mesh: the client axis ({x.shape[axis]}) must be divisible by the number of "
                    f"devices on {CLIENT_AXIS!r} ({size})"
                )
            return jax.device_put(x, NamedSharding(client_mesh, P(*([None] * axis), CLIENT_AXIS)))

        if kind == "data":
            return jax.tree.map(lambda x: split(x, 0), tree)
        if kind == "inputs":
            return jax.tree.map(lambda x: split(x, run_axes), tree)
        if kind == "state":
            rep = lambda t: jax.tree.map(lambda x: jax.device_put(x, replicated), t)
            return tree._replace(
                round=rep(tree.round),
                key=rep(tree.key),
                frozen=rep(tree.frozen),
                clients=jax.tree.map(lambda x: split(x, run_axes), tree.clients),
                abo_state=rep(tree.abo_state),
                opt_state=jax.tree.map(lambda x: split(x, run_axes), tree.opt_state),
                weights=rep(tree.weights),
                lora_scale=rep(tree.lora_scale),
                hparams=rep(tree.hparams),
            )
        raise ValueError(f"shard: kind must be 'state', 'data' or 'inputs', got {kind!r}")

    return Simulation(
        init=init,
        round=round_jit,
        evaluate=evaluate_jit,
        prepare=prepare,
        shard=shard,
        round_step=round_step,
        num_runs=num_runs,
        rounds=rounds_jit,
        prepare_test=prepare_test,
    )
