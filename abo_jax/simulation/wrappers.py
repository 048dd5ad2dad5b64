"""Wrappers that take a :class:`~abo_jax.FederatedRound` and return one of the same type.

Runs side by side (:func:`over_runs`), devices (:func:`on_mesh`), jit with buffer donation
(:func:`jit_round`) and several rounds per dispatch (:func:`scan_rounds`) compose::

    rnd = federated_round(model, abo)                    # one run, pure functions
    rnd = on_mesh(over_runs(rnd, 3), mesh)               # 3 seeds, clients split over devices
    rnd = jit_round(rnd, donate=True)                    # one compiled round
    history, state = aj.run(rnd, data, test, rounds=300, key=keys)

Client groups are chosen where the clients are trained: ``federated_round(...,
map_clients=client_groups(size, mesh))``.
"""

from __future__ import annotations

import chex
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from abo_jax.distributed import place
from abo_jax.simulation._checks import check_key
from abo_jax.simulation.federated import FederatedRound

__all__ = ["over_runs", "on_mesh", "jit_round", "scan_rounds", "CLIENT_AXIS", "RUN_AXIS"]

CLIENT_AXIS = "clients"
RUN_AXIS = "runs"


def over_runs(rnd: FederatedRound, num_runs: int) -> FederatedRound:
    """``num_runs`` independent runs (seeds, learning rates) of ``rnd`` in one program.

    Every state leaf gets a leading axis ``S = num_runs``; the data is shared. ``init`` takes one
    key (split into ``S``) or ``(S,)`` keys, and ``hparams`` whose array leaves have the run axis
    (scalars are shared). Metrics and evaluations carry the run axis first.
    """
    if rnd.num_runs is not None:
        raise ValueError("over_runs: the round already has a run axis")
    num_runs = int(num_runs)
    if num_runs <= 0:
        raise ValueError(f"num_runs must be positive, got {num_runs}")
    base_check = rnd.check_init

    def check_init(key, data, weights, hparams, lora_scale):
        key = check_key(key, num_runs)
        keys = key if jax.numpy.ndim(key) == 1 else jax.random.split(key, num_runs)
        if keys.shape != (num_runs,):
            raise ValueError(f"key: expected one key or ({num_runs},) keys, got {keys.shape}")
        _, weights, hparams, lora_scale = base_check(keys[0], data, weights, hparams, lora_scale)
        return keys, weights, hparams, lora_scale

    def init_state(keys, data, weights, hparams, lora_scale):
        hp_axes = jax.tree.map(lambda h: 0 if np.ndim(h) else None, hparams)
        one = jax.vmap(rnd.init_state, in_axes=(0, None, None, hp_axes, None))
        return one(keys, data, weights, hparams, lora_scale)

    def apply(state, data, inputs=None):
        return jax.vmap(rnd.apply, in_axes=(0, None, 0))(state, data, inputs)

    def evaluate(state, x, y, inputs=None):
        return jax.vmap(rnd.evaluate, in_axes=(0, None, None, 0))(state, x, y, inputs)

    return rnd._replace(
        init_state=init_state,
        check_init=check_init,
        apply=apply,
        prepare=jax.vmap(rnd.prepare, in_axes=(0, None)),
        evaluate=evaluate,
        prepare_test=jax.vmap(rnd.prepare_test, in_axes=(0, None)),
        num_runs=num_runs,
    )


def _check_mesh(mesh: Mesh, num_runs: int | None) -> str:
    if tuple(mesh.axis_names) not in ((CLIENT_AXIS,), (RUN_AXIS,)):
        raise ValueError(
            f"mesh: needs one axis, named {CLIENT_AXIS!r} (split the clients) or {RUN_AXIS!r} "
            f"(split the runs), got {mesh.axis_names}"
        )
    axis = mesh.axis_names[0]
    if axis == RUN_AXIS and (num_runs is None or num_runs % mesh.shape[RUN_AXIS]):
        raise ValueError(
            f"mesh: a {RUN_AXIS!r} axis of {mesh.shape[RUN_AXIS]} devices needs num_runs "
            f"divisible by it, got num_runs={num_runs} (apply over_runs first)"
        )
    return axis


def _shard_runs(mesh: Mesh):
    def shard(tree, kind):
        if tree is None:
            return tree
        if kind in ("data", "test"):
            return jax.tree.map(lambda x: place(x, NamedSharding(mesh, P())), tree)
        if kind in ("state", "inputs"):  # every state and inputs leaf has the run axis first
            return jax.tree.map(lambda x: place(x, NamedSharding(mesh, P(RUN_AXIS))), tree)
        raise ValueError(f"shard: kind must be 'state', 'data', 'inputs' or 'test', got {kind!r}")

    return shard


def _shard_clients(mesh: Mesh, run_axes: int, per_client: frozenset):
    size = mesh.shape[CLIENT_AXIS]
    replicated = NamedSharding(mesh, P())

    def split(x, axis):
        if x.shape[axis] % size:
            raise ValueError(
                f"mesh: the client axis ({x.shape[axis]}) must be divisible by the number of "
                f"devices on {CLIENT_AXIS!r} ({size})"
            )
        return place(x, NamedSharding(mesh, P(*([None] * axis), CLIENT_AXIS)))

    def shard(tree, kind):
        if tree is None:
            return tree
        if kind == "data":
            return jax.tree.map(lambda x: split(x, 0), tree)
        if kind == "test":  # the test examples split over the devices when they divide evenly
            even = all(x.shape[0] % size == 0 for x in jax.tree.leaves(tree))
            put = (lambda x: split(x, 0)) if even else (lambda x: place(x, replicated))
            return jax.tree.map(put, tree)
        if kind == "inputs":
            return jax.tree.map(lambda x: split(x, run_axes), tree)
        if kind != "state":
            raise ValueError(
                f"shard: kind must be 'state', 'data', 'inputs' or 'test', got {kind!r}"
            )
        return tree._replace(
            **{
                name: jax.tree.map(
                    (lambda x: split(x, run_axes))
                    if name in per_client
                    else (lambda x: place(x, replicated)),
                    getattr(tree, name),
                )
                for name in tree._fields
            }
        )

    return shard


def on_mesh(rnd: FederatedRound, mesh: Mesh) -> FederatedRound:
    """``rnd`` on the devices of ``mesh`` (one axis).

    ``("clients",)``: the client axis of data, inputs and per-client state is split over the
    devices (``m`` divisible by their number) and the round keeps the next broadcast split. Build
    the round with a mapping that knows the mesh: ``map_clients=auto_clients(mesh)`` (what
    :func:`~abo_jax.make_simulation` passes) or ``client_groups(size, mesh)``; the default
    ``auto_clients()`` does not know it, and when it forms groups they gather every device's
    clients onto each device (memory per device then stops falling with the devices).
    ``("runs",)``: each device holds whole runs (apply after :func:`over_runs`, ``num_runs``
    divisible by the devices); the data is replicated. On CPU, several host devices
    (``jax.config.update("jax_num_cpu_devices", n)`` before JAX starts) let the cores run the
    devices' shares side by side (on 2 cores against one device: 1.4x per round for the paper's 10
    clients, 2x for 1000 small ones; ``experiments/bench/RESULTS.md``).

    The mesh may span the devices of several processes (JAX's distributed runtime,
    :mod:`abo_jax.distributed`): each process then places only its own devices' pieces, and the
    aggregation's sums over clients run as collectives across processes, with the numbers of one
    process holding all the devices.

    Use the returned ``shard(tree, kind)`` to place the state, data, inputs and the test set
    (``kind="test"``: its examples split over the client devices when they divide evenly, else
    replicated; on 2 CPU devices a Fashion-MNIST evaluation takes 12.5 ms split against 16.0 ms on
    one device and 29.0 ms unplaced); :func:`abo_jax.run` does.
    """
    axis = _check_mesh(mesh, rnd.num_runs)
    if axis == RUN_AXIS:
        return rnd._replace(shard=_shard_runs(mesh))
    run_axes = 0 if rnd.num_runs is None else 1
    keep_split = NamedSharding(mesh, P(*([None] * run_axes), CLIENT_AXIS))
    base_apply = rnd.apply
    # One start shared by every client stays replicated; per-client starts are split.
    per_client = frozenset({"opt_state"} if rnd.abo.traits.one_start else {"clients", "opt_state"})

    def apply(state, data, inputs=None):
        new_state, metrics = base_apply(state, data, inputs)
        constrain = lambda t: jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, keep_split), t
        )
        return new_state._replace(
            **{name: constrain(getattr(new_state, name)) for name in per_client}
        ), metrics

    return rnd._replace(apply=apply, shard=_shard_clients(mesh, run_axes, per_client))


def scan_rounds(rnd: FederatedRound, num_rounds: int) -> FederatedRound:
    """``apply`` runs ``num_rounds`` rounds in one ``jax.lax.scan`` (one dispatch under jit).

    The state is carried in place; each metric is stacked with a leading round axis. The same
    numbers as applying ``rnd`` that many times. Measured on CPU
    (``experiments/bench/variants.py --suite rounds``): 1.1x (paper MLP, m = 10) to 1.26x
    (digits MLP, m = 1000) faster per round than a loop of jitted rounds.
    """
    num_rounds = int(num_rounds)
    if num_rounds <= 0:
        raise ValueError(f"num_rounds must be positive, got {num_rounds}")
    base_apply = rnd.apply

    def apply(state, data, inputs=None):
        return jax.lax.scan(
            lambda s, _: base_apply(s, data, inputs), state, None, length=num_rounds
        )

    return rnd._replace(apply=apply)


def jit_round(
    rnd: FederatedRound, *, donate: bool = False, max_traces: int | None = None
) -> FederatedRound:
    """Every function of ``rnd`` jitted (the state's buffers donated to ``apply`` if ``donate``).

    Args:
      rnd: the round (wrapped or not).
      donate: donate the state to ``apply`` (``donate_argnums=0``) so XLA can write the next state
        in place (less peak memory per client). The state passed in is then deleted: always
        continue from the returned state, as :func:`abo_jax.run` does. Same numbers either way.
      max_traces: if set, ``apply`` raises when traced more often (``chex.assert_max_traces``).
    """
    apply = rnd.apply
    if max_traces is not None:
        apply = chex.assert_max_traces(apply, n=int(max_traces))
    return rnd._replace(
        init_state=jax.jit(rnd.init_state),
        apply=jax.jit(apply, donate_argnums=0 if donate else ()),
        prepare=jax.jit(rnd.prepare),
        evaluate=jax.jit(rnd.evaluate),
        prepare_test=jax.jit(rnd.prepare_test),
    )
