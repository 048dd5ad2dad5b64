"""``make_simulation``: the usual composition of a federated round, in one call.

:func:`~abo_jax.federated_round` builds one run's round from values; :func:`~abo_jax.over_runs`,
:func:`~abo_jax.on_mesh`, :func:`~abo_jax.client_groups`, :func:`~abo_jax.jit_round` and
:func:`~abo_jax.scan_rounds` wrap it. ``make_simulation`` applies them in the right order from
keyword options and returns a :class:`Simulation` (the jitted round, its un-jitted step and the
multi-round scan), the form :func:`abo_jax.run` and the experiments use.

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import optax
from jax.sharding import Mesh

from abo_jax.aggregation._base import ABO
from abo_jax.models._base import Model
from abo_jax.simulation.client import masked_cross_entropy
from abo_jax.simulation.client_map import auto_clients
from abo_jax.simulation.evaluation import global_trainable
from abo_jax.simulation.federated import (
    SimState,
    client_groups,
    federated_round,
)
from abo_jax.simulation.sampling import ClientSampling
from abo_jax.simulation.wrappers import (
    CLIENT_AXIS,
    _check_mesh,
    jit_round,
    on_mesh,
    over_runs,
    scan_rounds,
)

__all__ = ["SimState", "Simulation", "make_simulation", "global_trainable"]


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
      rounds: jitted ``rounds(state, data, inputs=None, *, num_rounds) -> (state, metrics)``:
        ``num_rounds`` rounds in one ``jax.lax.scan`` (one dispatch, the state carried in place),
        each metric stacked with a leading round axis; the same numbers as calling ``round`` that
        many times. Traced once per ``num_rounds``.
      prepare_test: ``prepare_test(state, x) -> inputs | None``: the model's per-example cache of
        a test set ``x (n, ...)`` for :attr:`evaluate`, valid for the whole run under the same
        conditions as ``prepare`` (``None`` otherwise).
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
    eval_mode: Literal["global", "personalized"] | None = None,
    num_runs: int | None = None,
    mesh: Mesh | None = None,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    max_traces: int | None = None,
    train_only_sampled: bool = True,
    donate_state: bool = False,
    client_chunk: int | None = None,
) -> Simulation:
    """Builds a federated simulator for ``model`` aggregated by any ABO (a composed round).

    The same as ``jit_round(on_mesh(over_runs(federated_round(...), num_runs), mesh),
    donate=donate_state)`` with ``map_clients=client_groups(client_chunk, mesh)`` (each step only
    when its option is given), plus the multi-round scan ``rounds``.

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
      client_ranks: ``None`` (default: the operator's declared ranks, ``abo.traits.client_ranks``,
        e.g. ``hetlora(ranks)``) or the same ranks again (others raise); at init every client's
        factors keep only their first ``r_i`` components (capped at each layer's rank). The LoRA
        scales default to the operator's too (``alpha / r_i``).
      reset_optimizer: a fresh optimizer state for every client every round (as an FL client that
        builds its optimizer per round); False keeps per-client state in ``SimState.opt_state``.
      precompute: let :attr:`Simulation.prepare` cache the model's per-example work (e.g. the MLP's
        ``x @ W0.T``) once for the whole run.
      eval_mode: ``None`` (default): as the operator declares (``abo.traits.personalized``);
        ``"global"``: evaluate :func:`global_trainable` (the broadcast for global operators, the
        mean personal factors for personalized ones); ``"personalized"``: every client's own
        broadcast model on the test set, loss and accuracy averaged with ``p``.
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
      client_chunk: ``None`` (default): :func:`~abo_jax.simulation.auto_clients` chooses from the
        shapes (one vmap when the clients' working set fits the cache, else groups sized to it);
        or train the clients in groups of this many, one group after another
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
    if eval_mode not in (None, "global", "personalized"):
        raise ValueError(f"eval_mode must be 'global' or 'personalized', got {eval_mode!r}")
    if num_runs is not None and int(num_runs) <= 0:
        raise ValueError(f"num_runs must be positive, got {num_runs}")
    if client_chunk is not None and int(client_chunk) <= 0:
        raise ValueError(f"client_chunk must be positive or None, got {client_chunk}")
    if mesh is not None:
        _check_mesh(mesh, None if num_runs is None else int(num_runs))
    client_mesh = mesh if mesh is not None and CLIENT_AXIS in mesh.axis_names else None
    map_clients = auto_clients(client_mesh)  # vmap, or groups sized to the cache, by the shapes
    if client_chunk is not None:
        map_clients = client_groups(client_chunk, client_mesh)
    rnd = federated_round(
        model,
        abo,
        optimizer=optimizer,
        local_epochs=local_epochs,
        batch_size=batch_size,
        sampling=sampling,
        trainable_mask=trainable_mask,
        metrics_fn=metrics_fn,
        client_ranks=client_ranks,
        reset_optimizer=reset_optimizer,
        precompute=precompute,
        personalized=None if eval_mode is None else eval_mode == "personalized",
        loss_fn=loss_fn,
        train_only_sampled=train_only_sampled,
        map_clients=map_clients,
    )
    if num_runs is not None:
        rnd = over_runs(rnd, num_runs)
    if mesh is not None:
        rnd = on_mesh(rnd, mesh)
    step = rnd.apply
    jitted = jit_round(rnd, donate=donate_state, max_traces=max_traces)

    def rounds(state, data, inputs=None, *, num_rounds: int):
        return scan_rounds(rnd, num_rounds).apply(state, data, inputs)

    rounds_jit = jax.jit(
        rounds, static_argnames="num_rounds", donate_argnums=0 if donate_state else ()
    )
    return Simulation(
        init=jitted.init,
        round=jitted.apply,
        evaluate=jitted.evaluate,
        prepare=jitted.prepare,
        shard=jitted.shard,
        round_step=step,
        num_runs=jitted.num_runs,
        rounds=rounds_jit,
        prepare_test=jitted.prepare_test,
    )
