"""Several processes, one program: JAX's multi-controller runtime for the simulator.

Under ``jax.distributed.initialize`` every process runs the same program; ``jax.devices()`` lists
the devices of all processes and a ``Mesh`` over them is *global*: a round on
``on_mesh(rnd, mesh)`` trains each process's share of the clients on its own devices and the
operator's aggregation runs as collectives over the mesh (gloo on CPU, NCCL on GPU, ICI on TPU).
Each process holds only its clients' data (:func:`client_data_from_shares`); metrics and
evaluations come out replicated, the same on every process; :func:`abo_jax.simulation.save_checkpoint`
gathers the state on every process and process 0 alone writes it.

Start a program with :func:`distributed_from_env`: it initializes the runtime from the variables
``python -m abo_jax.launch`` sets (one host: ``ABO_JAX_COORDINATOR``, ``ABO_JAX_NUM_PROCESSES``,
``ABO_JAX_PROCESS_ID``, ``ABO_JAX_CPU_DEVICES``), or with JAX's cluster auto-detection (Slurm,
Open MPI's ``mpirun``, Cloud TPU slices) when ``ABO_JAX_DISTRIBUTED=auto``, and does nothing when
neither is set (one process, as before). README, "Several processes".

The helpers below are collectives where they say so: every process must call them, in the same
order (as every process runs the same program).

Reference: JAX, "Introduction to multi-controller JAX"; FAX (Rush et al., arXiv:2403.07128) runs
federated computations on the same runtime.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "ENV",
    "distributed_from_env",
    "process_count",
    "process_index",
    "is_primary",
    "multiprocess",
    "fetch",
    "broadcast_from_primary",
    "process_clients",
    "client_data_from_shares",
    "local_values",
    "global_digests",
    "place",
]

#: The variables :func:`distributed_from_env` reads (``python -m abo_jax.launch`` sets the first
#: four; ``ABO_JAX_DISTRIBUTED=auto`` asks for JAX's cluster auto-detection instead).
ENV = {
    "coordinator": "ABO_JAX_COORDINATOR",  # host:port of process 0's coordinator service
    "num_processes": "ABO_JAX_NUM_PROCESSES",
    "process_id": "ABO_JAX_PROCESS_ID",
    "cpu_devices": "ABO_JAX_CPU_DEVICES",  # CPU devices per process (jax_num_cpu_devices)
    "mode": "ABO_JAX_DISTRIBUTED",  # "auto": jax.distributed.initialize() detects the cluster
    "timeout": "ABO_JAX_INIT_TIMEOUT",  # seconds to wait for every process to join (default 120)
}


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def distributed_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Joins JAX's distributed runtime as the environment says; returns whether it did.

    Call it first thing in a program, before any JAX computation (it also sets the number of CPU
    devices per process, which must act before JAX starts). Without ``ABO_JAX_COORDINATOR`` or
    ``ABO_JAX_DISTRIBUTED`` it does nothing (a single-process run), so a program calls it
    unconditionally.

    Args:
      environ: the variables to read (default ``os.environ``; see :data:`ENV`).

    Returns:
      True when this process joined a multi-process run (``jax.process_count()`` processes).

    Raises:
      ValueError: a variable is malformed or some are missing (named, with the fix).

    Example:
      >>> import abo_jax as aj
      >>> aj.distributed_from_env({})  # nothing set: one process
      False
    """
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():  # called again in the same process
        return True
    mode = env.get(ENV["mode"], "")
    if ENV["cpu_devices"] in env:
        devices = _int(env, ENV["cpu_devices"])
        if devices < 1:
            raise ValueError(f"{ENV['cpu_devices']}={devices}: expected at least 1")
        jax.config.update("jax_num_cpu_devices", devices)
    timeout = _int(env, ENV["timeout"]) if ENV["timeout"] in env else 120
    if mode == "auto":  # Slurm, Open MPI, Cloud TPU: JAX reads the cluster's own variables
        jax.distributed.initialize(initialization_timeout=timeout)
        return True
    if mode not in ("", "env"):
        raise ValueError(f"{ENV['mode']}={mode!r}: expected 'auto' (cluster auto-detection)")
    if ENV["coordinator"] not in env:
        return False
    missing = [ENV[k] for k in ("num_processes", "process_id") if ENV[k] not in env]
    if missing:
        raise ValueError(
            f"{ENV['coordinator']} is set but {', '.join(missing)} is not: set all three (python "
            "-m abo_jax.launch does), or ABO_JAX_DISTRIBUTED=auto on a cluster"
        )
    count, index = _int(env, ENV["num_processes"]), _int(env, ENV["process_id"])
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"{ENV['num_processes']}={count}, {ENV['process_id']}={index}: expected "
            "0 <= process id < number of processes"
        )
    jax.distributed.initialize(
        env[ENV["coordinator"]],
        num_processes=count,
        process_id=index,
        initialization_timeout=timeout,
    )
    return True


def process_count() -> int:
    """The number of processes of the run (1 without the distributed runtime)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index, ``0 .. process_count() - 1``."""
    return jax.process_index()


def is_primary() -> bool:
    """Whether this is process 0, the one that writes results and checkpoints (True in a
    single-process run; does not start JAX's backend there)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def multiprocess() -> bool:
    """Whether this process is one of several of a distributed run (does not start JAX's
    backend in a single-process run, so a device count set later still acts)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _spans_processes(x: Any) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def fetch(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a numpy array holding its whole (global) value.

    Leaves split over the devices of several processes are gathered in one program (a
    collective: every process must call it); others are copied from a local device
    (``jax.device_get``). Typed PRNG keys come back as key data.
    """
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [
        jax.random.key_data(x)
        if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x
        for x in leaves
    ]
    split = [i for i, x in enumerate(leaves) if _spans_processes(x) and not x.is_fully_replicated]
    if split:
        gathered = _replicate(tuple(_replicated(leaves[i].sharding) for i in split))(
            *[leaves[i] for i in split]
        )
        for i, x in zip(split, gathered, strict=True):
            leaves[i] = x.addressable_data(0)
    return jax.tree.unflatten(treedef, [np.asarray(jax.device_get(x)) for x in leaves])


def _replicated(sharding):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(sharding.mesh, PartitionSpec())


@functools.lru_cache(maxsize=64)
def _replicate(shardings: tuple):
    """One jitted identity that replicates its operands (all-gathers them), cached per layout."""
    return jax.jit(lambda *xs: xs, out_shardings=shardings)


def broadcast_from_primary(value: Any) -> Any:
    """``value`` as process 0 has it, on every process (a collective with several processes).

    For decisions every process must take alike (is this cell finished? does the checkpoint
    exist?) when each reads files another process may be writing.
    """
    if not multiprocess():
        return value
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(value))


def _client_devices(mesh) -> np.ndarray:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: expected one axis (the clients'), got {mesh.axis_names}")
    return np.asarray(mesh.devices).reshape(-1)


def process_clients(m: int, mesh) -> slice:
    """The clients of ``m`` whose data this process holds on ``mesh`` (a ``("clients",)`` mesh).

    The client axis is split evenly over the mesh's devices, in mesh order; a process holds the
    shares of its own devices, which must be consecutive on the mesh (``jax.devices()`` lists
    them so, process by process).

    Raises:
      ValueError: ``m`` does not divide over the devices, or this process's devices are not
        consecutive on the mesh.
    """
    devices = _client_devices(mesh)
    if m % devices.size:
        raise ValueError(
            f"mesh: the client axis ({m}) must be divisible by the number of devices "
            f"({devices.size})"
        )
    mine = np.flatnonzero([d.process_index == jax.process_index() for d in devices])
    if mine.size == 0:
        raise ValueError("mesh: none of its devices belongs to this process")
    if np.any(np.diff(mine) != 1):
        raise ValueError(
            f"mesh: this process's devices sit at positions {mine.tolist()}, not consecutively; "
            "build the mesh from jax.devices() in order"
        )
    per_device = m // devices.size
    return slice(int(mine[0]) * per_device, int(mine[-1] + 1) * per_device)


def client_data_from_shares(local, mesh, *, num_clients: int, sizes=None):
    """A global :class:`~abo_jax.ClientData` from each process's own clients.

    Every process builds only the clients :func:`process_clients` gives it (``local``:
    ``(m_local, n_max, ...)``, the same ``n_max`` on every process) and calls this function; the
    result's ``x``, ``y`` and ``mask`` are split over the mesh's client axis across processes
    (``jax.make_array_from_process_local_data``), so each process keeps only its share in memory.
    ``sizes`` ``(m,)`` is small and replicated on every process (the round's weights need all of
    them): give it, or it is gathered from the shares (a collective).

    Args:
      local: this process's clients, a ``ClientData`` of numpy arrays ``(m_local, n_max, ...)``.
      mesh: the ``("clients",)`` mesh of the round.
      num_clients: ``m``, the number of clients of all processes.
      sizes: ``(m,)`` examples per client of all processes, or None.

    Returns:
      The ``ClientData`` of all ``m`` clients, placed on ``mesh`` as ``on_mesh``'s
      ``shard(data, "data")`` places it.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    share = process_clients(num_clients, mesh)
    want = share.stop - share.start
    if np.shape(local.y)[0] != want:
        raise ValueError(
            f"local: process {jax.process_index()} holds clients {share.start}..{share.stop - 1} "
            f"({want}), got {np.shape(local.y)[0]}"
        )
    split = NamedSharding(mesh, P(mesh.axis_names[0]))
    place = lambda x: jax.make_array_from_process_local_data(
        split, np.asarray(x), (num_clients, *np.shape(x)[1:])
    )
    if sizes is None:
        from jax.experimental import multihost_utils

        sizes = multihost_utils.process_allgather(np.asarray(local.sizes), tiled=True)
    sizes = np.asarray(sizes)
    if sizes.shape != (num_clients,):
        raise ValueError(f"sizes: expected ({num_clients},), got {sizes.shape}")
    if not np.array_equal(sizes[share], np.asarray(local.sizes)):
        raise ValueError("sizes: differ from the local clients' sizes for this process's share")
    return local._replace(
        x=place(local.x),
        y=place(local.y),
        mask=place(local.mask),
        sizes=jax.device_put(sizes, NamedSharding(mesh, P())),
    )


def local_values(x: Any) -> np.ndarray:
    """The values this process holds of ``x`` (all of it unless ``x`` spans several processes),
    as one flat numpy array: for checks each process makes on its own share (label ranges)."""
    if not _spans_processes(x):
        return np.asarray(x).reshape(-1)
    shards = [np.asarray(s.data).reshape(-1) for s in x.addressable_shards]
    return np.concatenate(shards) if shards else np.zeros((0,), x.dtype)


def global_digests(arrays: Sequence[Any]) -> list[bytes]:
    """sha256 of each array's global value without gathering it (a collective).

    Each process hashes the shards it holds (by their place in the array); the per-process
    digests, 32 bytes per array, are gathered in one call and hashed in process order. The same
    on every process of the run; not the digest one process would compute alone.
    """
    if not arrays:
        return []
    from jax.experimental import multihost_utils

    mine = np.zeros((len(arrays), 32), np.uint8)
    for row, x in enumerate(arrays):
        shards = {}
        for s in x.addressable_shards:
            start = tuple(0 if i.start is None else i.start for i in s.index)
            shards.setdefault(start, s.data)
        h = hashlib.sha256(f"{x.dtype}{x.shape};".encode())
        for start in sorted(shards):
            h.update(f"{start};".encode())
            h.update(np.ascontiguousarray(np.asarray(shards[start])).tobytes())
        mine[row] = np.frombuffer(h.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))  # (processes, arrays, 32)
    return [hashlib.sha256(every[:, row].tobytes()).digest() for row in range(len(arrays))]


def place(x: Any, sharding) -> Any:
    """``x`` on ``sharding``: ``jax.device_put`` within one process; over several processes,
    each process places its own devices' pieces of the host value (no collective).

    Across processes ``x`` must hold the same value on every process (the same program, seed and
    files give it). ``jax.device_put`` of a host array onto devices of several processes would
    first compare the whole array across processes (a gather of it all), and refuses an array
    committed to one local device (a state read from a checkpoint, or an ``init`` output).
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = np.asarray(jax.device_get(jax.random.key_data(x)))
        spec = sharding.spec
        trailing = jax.sharding.PartitionSpec(*spec, *([None] * (data.ndim - len(spec))))
        placed = place(data, jax.sharding.NamedSharding(sharding.mesh, trailing))
        return jax.random.wrap_key_data(placed, impl=impl)
    host = np.asarray(jax.device_get(x))
    if not sharding.addressable_devices:
        raise ValueError(
            f"a mesh over several processes must include devices of every process; process "
            f"{jax.process_index()} has none in {sharding.mesh} (build it from all of jax.devices())"
        )
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
