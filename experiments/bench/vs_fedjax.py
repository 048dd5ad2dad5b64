"""Benchmark 8: abo-jax against the real FedJAX package on FedJAX's own workload (full weights).

FedJAX (google/fedjax, PyPI ``fedjax==0.0.17``, its last release; the ``fedjax`` extra of
pyproject.toml) and abo-jax train the same MLP with full-weight FedAvg in one process, on the same
data arrays from the same initial parameters: SGD (lr 0.01, momentum 0.9, no weight decay), one
local epoch, every client taking part, the server averaging with weights proportional to the
clients' sizes. Two workloads (issue 19):

* ``paper``: MLP 784-200-200-10, 10 clients x 6000 Fashion-MNIST images, one class each, batch 64
  (``/usr/share/datasets/fashion-mnist``; ``make fashion-mnist``);
* ``small``: MLP 64-200-200-10, 1000 clients x 20 synthetic examples, batch 10.

FedJAX is used as its EMNIST examples use it: a haiku MLP, ``fedjax.create_model_from_haiku``,
``fedjax.model_grad``, ``fedjax.algorithms.fed_avg.federated_averaging`` with
``fedjax.ShuffleRepeatBatchHParams``, ``fedjax.InMemoryFederatedData``; its default
``ForEachClientJitBackend`` on one device, its ``ForEachClientPmapBackend`` on several
(``--host-devices N``: abo-jax then runs on a ``("clients",)`` mesh of the same devices). FedJAX
0.0.17 calls ``jax.tree_map``, which jax has since removed: :func:`import_fedjax` sets the alias
``jax.tree_map = jax.tree.map`` in this process before importing it (FedJAX's sources are
untouched; nothing in abo_jax depends on it).

Rows per workload, timed round-robin in one process (order rotated every repetition, warm-up
excluded, medians; compilation, or FedJAX's first call, reported apart):

* ``fedjax``: one FedJAX round (its host-side shuffling and batching included: that is what its
  users run);
* ``abo-jax full (default)``: ``federated_round(paper_mlp(..., mode="full"), fedavg_full())`` with
  the defaults a user gets; ``abo-jax full, vmap``: the same with ``map_clients=vmap_clients``
  (the previous default); further lever rows (client groups, donation) as configured;
* ``abo-jax full, per-client loop``: the round's own ``client_update`` jitted once and called
  client by client, then the jitted server step (the baseline abo-jax must never lose to); and
  the same loop waiting for each client before dispatching the next (``, blocking``): JAX's
  dispatch is asynchronous, so the plain loop lets the runtime run two clients' programs at once
  on two cores, which one program of the round cannot;
* ``abo-jax LoRA (PS)``: the LoRA round of the same MLP (ranks 8, 8, 5, product-sum), for
  reference, with the defaults and with ``map_clients=vmap_clients``.

**Equivalence check** (before timing; the benchmark raises if it fails): FedJAX with
``skip_shuffle=True`` against abo-jax's round with the same batch order (:func:`repeat_batches`:
rows in order, the last batch filled from the start of the client's data, as FedJAX's
``shuffle_repeat_batch`` fills it), both one round from the same initial parameters; the
parameters must agree to ``tolerance`` and every client must take the same number of steps.

Run: ``python -m experiments.bench.vs_fedjax [--quick] [--reps N] [--host-devices N]
[--workloads paper small] [--out DIR]``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from abo_jax.simulation.client_map import auto_clients
from experiments.bench import common
from experiments.bench import workload as W

NAME = "vs_fedjax"
TITLE = "abo-jax vs FedJAX (full-weight FedAvg, FedJAX's workload)"


@dataclass(frozen=True)
class Workload:
    """One federated workload: the MLP, the clients and where their data comes from."""

    name: str
    sizes: tuple[int, ...]  # layer widths, input first
    clients: int  # m
    samples: int  # examples per client
    batch: int
    source: str  # "fashion-mnist" (one class per client) or "synthetic" (normal inputs)


PAPER = Workload("paper", (784, 200, 200, 10), 10, 6000, 64, "fashion-mnist")
SMALL = Workload("small", (64, 200, 200, 10), 1000, 20, 10, "synthetic")
TINY = Workload("tiny", (16, 8, 4), 4, 12, 5, "synthetic")  # the --quick form and the test's
WORKLOADS = {w.name: w for w in (PAPER, SMALL, TINY)}


@dataclass(frozen=True)
class Config:
    workloads: tuple[Workload, ...] = (PAPER, SMALL)
    lr: float = 0.01
    momentum: float = 0.9
    lora_ranks: tuple[int, ...] = (8, 8, 5)  # the LoRA reference row (clipped to the layers)
    client_groups: tuple[int, ...] = ()  # also time the full round in client groups of these sizes
    donate: bool = True  # also time the default round with the state donated
    reps: int = 6
    tolerance: float = 1e-5  # max |FedJAX - abo-jax| of the parameters after one round
    seed: int = 0
    data_dir: str | None = None  # Fashion-MNIST folder (None: the loaders' default)


OPTIONS = {
    "--workloads": dict(
        nargs="+",
        choices=("paper", "small"),
        default=None,
        help="workloads to run (default: paper small)",
    ),
    "--client-groups": dict(
        nargs="+",
        type=int,
        default=None,
        help="also time the full-weight round in client groups of these sizes (levers)",
    ),
    "--data-dir": dict(default=None, help="Fashion-MNIST folder (default: the loaders' default)"),
}


def get_config(quick: bool = False, workloads=None, client_groups=None, data_dir=None) -> Config:
    config = Config(data_dir=data_dir)
    if workloads:
        config = dataclasses.replace(config, workloads=tuple(WORKLOADS[w] for w in workloads))
    if client_groups:
        config = dataclasses.replace(config, client_groups=tuple(client_groups))
    if quick:
        config = dataclasses.replace(
            config,
            workloads=(TINY,),
            reps=2,
            client_groups=config.client_groups or (2,),
            donate=False,
        )
    return config


# ----------------------------------------------------------------------------------- data


def client_arrays(w: Workload, *, seed: int = 0, data_dir: str | None = None):
    """``(x (m, n, k0) float32, y (m, n) int32)``: the same arrays go to both libraries."""
    if w.source == "fashion-mnist":
        x, y = abo_jax.data.load_mnist_family(data_dir, name="fashion_mnist", flatten=True)
        if w.sizes[0] != x.shape[1] or w.sizes[-1] != 10 or w.clients != 10:
            raise ValueError(f"workload {w.name}: Fashion-MNIST needs sizes 784-...-10, 10 clients")
        rows = [np.flatnonzero(y == c)[: w.samples] for c in range(10)]
        if min(len(r) for r in rows) < w.samples:
            raise ValueError(f"workload {w.name}: a class has fewer than {w.samples} examples")
        return np.stack([x[r] for r in rows]), np.stack([y[r] for r in rows]).astype(np.int32)
    if w.source != "synthetic":
        raise ValueError(f"workload {w.name}: unknown source {w.source!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((w.clients, w.samples, w.sizes[0]), dtype=np.float32)
    y = rng.integers(0, w.sizes[-1], (w.clients, w.samples), dtype=np.int32)
    return x, y


def client_data(x: np.ndarray, y: np.ndarray) -> abo_jax.ClientData:
    m, n = y.shape
    return abo_jax.ClientData(
        x=jnp.asarray(x),
        y=jnp.asarray(y),
        mask=jnp.ones((m, n), bool),
        sizes=jnp.full((m,), n, jnp.int32),
    )


def repeat_batches(key: jax.Array, mask: jax.Array, batch_size: int):
    """A ``batches_fn`` in FedJAX's unshuffled order: rows in order, the last batch filled from
    the client's first rows (``shuffle_repeat_batch(skip_shuffle=True)``, one epoch).

    A client with ``n`` real rows (first in its padded array) takes ``ceil(n / batch_size)`` full
    steps; the fixed ``ceil(n_max / batch_size)`` steps beyond them are empty.
    """
    del key
    n_max = mask.shape[0]
    n = jnp.maximum(jnp.sum(mask.astype(jnp.int32)), 1)
    nb = -(-n_max // batch_size)
    j = jnp.arange(nb * batch_size, dtype=jnp.int32)
    steps = -(-n // batch_size)
    valid = (j // batch_size) < steps
    idx = jnp.where(valid, j % n, 0)
    return idx.reshape(nb, batch_size), valid.reshape(nb, batch_size)


# --------------------------------------------------------------------------------- FedJAX


def import_fedjax():
    """FedJAX 0.0.17 on today's jax: the one alias it needs, set here, then the import.

    Raises:
      ModuleNotFoundError: FedJAX is not installed (``pip install -e '.[fedjax]'``).
    """
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree.map  # removed from jax after FedJAX's last release
    try:
        import fedjax
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "vs_fedjax needs FedJAX: pip install -e '.[fedjax]' (fedjax==0.0.17)"
        ) from err
    return fedjax


def to_haiku(trainable: abo_jax.Trainable) -> dict:
    """abo-jax's full-weight MLP parameters (``W (d, k)``) as haiku's (``w (k, d)``)."""
    return {
        name: {"w": jnp.asarray(trainable.lora[name]).T, "b": jnp.asarray(trainable.extra[name])}
        for name in trainable.lora
    }


def from_haiku(params: dict) -> abo_jax.Trainable:
    """haiku's parameters back in abo-jax's layout. On jax 0.9 FedJAX's pmap backend hands each
    client's delta back with a leading axis of 1 (a shard of its pmap output), which the server
    parameters then carry: it is dropped here."""
    squeeze = lambda v: v.reshape(v.shape[1:]) if v.ndim > 1 and v.shape[0] == 1 else v
    return abo_jax.Trainable(
        lora={name: squeeze(p["w"]).T for name, p in params.items()},
        extra={name: squeeze(p["b"]) for name, p in params.items()},
    )


class FedJaxRound:
    """One FedJAX FedAvg round over the clients, as its examples build it."""

    def __init__(self, fedjax, w: Workload, x, y, init: dict, *, lr, momentum, shuffle, devices):
        import haiku as hk

        names = [f"dense_{i}" for i in range(len(w.sizes) - 1)]

        def forward(batch):
            h = batch["x"]
            for i, (name, width) in enumerate(zip(names, w.sizes[1:], strict=True)):
                h = hk.Linear(width, name=name)(h)
                if i < len(names) - 1:
                    h = jax.nn.relu(h)
            return h

        def train_loss(batch, preds):
            return optax.softmax_cross_entropy_with_integer_labels(preds, batch["y"])

        sample = {"x": np.zeros((1, w.sizes[0]), np.float32), "y": np.zeros((1,), np.int32)}
        model = fedjax.create_model_from_haiku(hk.transform(forward), sample, train_loss)
        from fedjax.core import for_each_client as backends

        backend = (
            backends.ForEachClientPmapBackend(jax.devices()[:devices])
            if devices > 1
            else backends.ForEachClientJitBackend()
        )
        hparams = fedjax.ShuffleRepeatBatchHParams(
            batch_size=w.batch, num_epochs=1, seed=0, skip_shuffle=not shuffle
        )
        with fedjax.for_each_client_backend(backend):
            self.algorithm = fedjax.algorithms.fed_avg.federated_averaging(
                grad_fn=fedjax.model_grad(model),
                client_optimizer=fedjax.optimizers.sgd(lr, momentum),
                server_optimizer=fedjax.optimizers.sgd(1.0),
                client_batch_hparams=hparams,
            )
        data = fedjax.InMemoryFederatedData(
            {f"{i:05d}": {"x": x[i], "y": y[i]} for i in range(w.clients)}
        )
        self.clients = [
            (cid, cds, jax.random.PRNGKey(i))
            for i, (cid, cds) in enumerate(data.get_clients(sorted(data.client_ids())))
        ]
        self.steps = [len(list(cds.shuffle_repeat_batch(hparams))) for _, cds, _ in self.clients]
        # FedJAX keeps the server state on the first device (its pmap backend returns there).
        init = jax.device_put(jax.tree.map(np.asarray, init), jax.devices()[0])
        self.init_state = self.algorithm.init(init)

    def __call__(self, state=None):
        """One round from ``state`` (default: the initial state); returns the new server state."""
        state, _ = self.algorithm.apply(self.init_state if state is None else state, self.clients)
        return state


# -------------------------------------------------------------------------------- abo-jax


def full_model(w: Workload) -> abo_jax.Model:
    return abo_jax.paper_mlp(w.sizes[0], w.sizes[1:-1], w.sizes[-1], mode="full")


def lora_model(w: Workload, ranks: tuple[int, ...]) -> abo_jax.Model:
    shapes = list(zip(w.sizes[1:], w.sizes[:-1], strict=True))
    ranks = tuple(min(ranks[min(i, len(ranks) - 1)], d, k) for i, (d, k) in enumerate(shapes))
    return abo_jax.paper_mlp(w.sizes[0], w.sizes[1:-1], w.sizes[-1], ranks=ranks)


def abo_round(
    w: Workload,
    data: abo_jax.ClientData,
    *,
    config: Config,
    lora: bool = False,
    devices: int = 1,
    map_clients: Any = None,
    client_update: Any = abo_jax.client_update,
    donate: bool = False,
):
    """``(jitted round, state, inputs, model)`` of abo-jax on ``data`` (one run, seed 0)."""
    model = lora_model(w, config.lora_ranks) if lora else full_model(w)
    mesh = common.host_mesh(devices)
    if map_clients is None and mesh is not None:  # the default per device, as make_simulation's
        map_clients = auto_clients(mesh)
    kwargs = {} if map_clients is None else {"map_clients": map_clients}
    rnd = abo_jax.federated_round(
        model,
        abo_jax.product_sum() if lora else abo_jax.fedavg_full(),
        optimizer=optax.sgd(config.lr, momentum=config.momentum),
        client_update=client_update,
        batch_size=w.batch,
        **kwargs,
    )
    if mesh is not None:
        rnd = abo_jax.on_mesh(rnd, mesh)
    state = rnd.shard(rnd.init(jax.random.key(config.seed), data), "state")
    data = rnd.shard(data, "data")
    inputs = rnd.shard(rnd.prepare(state, data), "inputs")
    return abo_jax.jit_round(rnd, donate=donate), state, data, inputs, model


def global_params(state: abo_jax.SimState, model: abo_jax.Model) -> abo_jax.Trainable:
    one = jax.eval_shape(model.init, jax.random.key(0))[1]
    return W.one_copy(state.clients, one)


def per_client_loop(rnd_state, data, model, w: Workload, config: Config):
    """The per-client-loop baseline: the round's own ``client_update`` jitted once, called client
    by client from the start, then the jitted server step (fedavg_full). Returns two thunks: the
    loop as a user writes it, and the same loop blocking on every client's result."""
    state = rnd_state
    start = global_params(state, model)
    optimizer = optax.sgd(config.lr, momentum=config.momentum)
    keys = jax.random.split(jax.random.key(config.seed + 1), w.clients)

    @jax.jit
    def update(x, y, mask, key):
        return abo_jax.client_update(
            model, optimizer, state.frozen, start, x, y, mask, key, batch_size=w.batch
        ).trainable

    @jax.jit
    def server(trained):
        broadcast, _, _ = abo_jax.fedavg_full().aggregate(trained, state.weights)
        return broadcast.factors

    rows = [(data.x[i], data.y[i], data.mask[i], keys[i]) for i in range(w.clients)]

    def loop():
        trained = [update(*row) for row in rows]
        return server(jax.tree.map(lambda *v: jnp.stack(v), *trained))

    def one_at_a_time():  # JAX's dispatch is asynchronous: without this, clients overlap
        trained = [jax.block_until_ready(update(*row)) for row in rows]
        return server(jax.tree.map(lambda *v: jnp.stack(v), *trained))

    return loop, one_at_a_time


# ------------------------------------------------------------------------------ the checks


def check_equivalence(fedjax, w: Workload, x, y, config: Config, devices: int) -> dict:
    """One round of FedJAX and of abo-jax's default round from the same start, same batches.

    Raises:
      RuntimeError: the parameters differ by more than ``config.tolerance`` or a client's step
        count differs.
    """
    data = client_data(x, y)
    in_fedjax_order = functools.partial(abo_jax.client_update, batches_fn=repeat_batches)
    rnd, state, data, inputs, model = abo_round(
        w, data, config=config, devices=devices, client_update=in_fedjax_order
    )
    start = global_params(state, model)
    fj = FedJaxRound(
        fedjax,
        w,
        x,
        y,
        to_haiku(start),
        lr=config.lr,
        momentum=config.momentum,
        shuffle=False,
        devices=devices,
    )
    theirs = from_haiku(fj().params)
    ours = global_params(rnd.apply(state, data, inputs)[0], model)
    diff = common.max_abs_diff(theirs, ours)
    optimizer = optax.sgd(config.lr, momentum=config.momentum)

    def steps(xi, yi, mask, key):
        return in_fedjax_order(
            model, optimizer, {}, start, xi, yi, mask, key, batch_size=w.batch
        ).num_steps

    keys = jax.random.split(jax.random.key(0), w.clients)
    our_steps = np.asarray(jax.jit(jax.vmap(steps))(data.x, data.y, data.mask, keys)).tolist()
    same_steps = our_steps == fj.steps
    if not (diff <= config.tolerance and same_steps):
        raise RuntimeError(
            f"vs_fedjax: workload {w.name}: FedJAX and abo-jax differ after one round from the "
            f"same start: max |diff| {diff:.3g} (tolerance {config.tolerance:g}), steps per "
            f"client {'equal' if same_steps else f'{fj.steps[:5]}... vs {our_steps[:5]}...'}; "
            "the comparison is void"
        )
    return {"max_abs_diff": diff, "steps_per_client": fj.steps[0], "same_steps": same_steps}


# ------------------------------------------------------------------------------- the timing


def _first_call(fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - t0


def run_workload(fedjax, w: Workload, config: Config, devices: int, reps: int) -> list[dict]:
    x, y = client_arrays(w, seed=config.seed, data_dir=config.data_dir)
    check = check_equivalence(fedjax, w, x, y, config, devices)
    data = client_data(x, y)
    thunks, compile_s, variants = {}, {}, {}
    mesh = common.host_mesh(devices)

    def add(name, what, **kwargs):
        rnd, state, d, inputs, model = abo_round(w, data, config=config, devices=devices, **kwargs)
        compiled, seconds = common.compile_timed(rnd.apply, state, d, inputs)
        if kwargs.get("donate"):  # the state is consumed: thread it through the calls
            box = [state]

            def thunk():
                box[0] = compiled(box[0], d, inputs)[0]
                return box[0]

        else:
            thunk = lambda: compiled(state, d, inputs)
        thunks[name], compile_s[name], variants[name] = thunk, seconds, what
        return state, d, model

    state, d, model = add("abo-jax full (default)", "federated_round defaults")
    add(
        "abo-jax full, vmap",
        "map_clients=vmap_clients",
        map_clients=abo_jax.simulation.vmap_clients,
    )
    for g in config.client_groups:
        if g < w.clients:
            add(
                f"abo-jax full, groups of {g}",
                f"map_clients=client_groups({g})",
                map_clients=abo_jax.client_groups(g, mesh),
            )
    if config.donate:
        add("abo-jax full (default), donated", "jit_round(donate=True)", donate=True)
    add("abo-jax LoRA (PS)", f"ranks {config.lora_ranks}, product_sum", lora=True)
    add(
        "abo-jax LoRA (PS), vmap",
        "the LoRA round with map_clients=vmap_clients",
        lora=True,
        map_clients=abo_jax.simulation.vmap_clients,
    )
    if devices == 1:
        loop, one_at_a_time = per_client_loop(state, d, model, w, config)
        compile_s["abo-jax full, per-client loop"] = _first_call(loop)
        thunks["abo-jax full, per-client loop"] = loop
        variants["abo-jax full, per-client loop"] = "client_update jitted once, called per client"
        name = "abo-jax full, per-client loop, blocking"
        compile_s[name], thunks[name] = 0.0, one_at_a_time
        variants[name] = "the same, waiting for each client before dispatching the next"
    start = global_params(state, model)
    fj = FedJaxRound(
        fedjax,
        w,
        x,
        y,
        to_haiku(start),
        lr=config.lr,
        momentum=config.momentum,
        shuffle=True,
        devices=devices,
    )
    first = _first_call(fj)
    thunks["fedjax"] = fj
    variants["fedjax"] = "pmap backend" if devices > 1 else "ForEachClientJitBackend"
    print(f"  vs_fedjax: {w.name}, {devices} device(s), timing ...", file=sys.stderr, flush=True)
    t = common.time_interleaved(thunks, reps=reps, warmup=1)
    compile_s["fedjax"] = max(first - t["fedjax"].median_s, 0.0)
    fedjax_s = t["fedjax"].median_s
    rows = []
    for name, timing in t.items():
        times = np.asarray(timing.times_s)
        rows.append(
            {
                "workload": w.name,
                "devices": devices,
                "variant": name,
                "what": variants[name],
                "median_s": timing.median_s,
                "spread": float(times.max() / times.min()),
                "fedjax_over_this": fedjax_s / timing.median_s,
                "compile_s": compile_s[name],
                "times_s": timing.times_s,
                "equivalence": check,
            }
        )
    return rows


def run(config: Config, reps: int | None = None) -> dict:
    fedjax = import_fedjax()
    devices = jax.device_count()
    rows = []
    for w in config.workloads:
        w_devices = common.mesh_devices(w.clients) if devices > 1 else 1
        rows += run_workload(fedjax, w, config, w_devices, reps or config.reps)
    targets = {
        f"{r['workload']}, {r['devices']} device(s)": {
            "default_ge_1.5x_fedjax": r["fedjax_over_this"] >= 1.5
        }
        for r in rows
        if r["variant"] == "abo-jax full (default)"
    }
    for r in rows:
        if r["variant"] == "abo-jax full, per-client loop":
            default = next(
                q
                for q in rows
                if q["workload"] == r["workload"] and q["variant"] == "abo-jax full (default)"
            )
            key = f"{r['workload']}, {r['devices']} device(s)"
            targets[key]["default_not_slower_than_loop"] = default["median_s"] <= r["median_s"]
    return {"rows": rows, "targets": targets}


COLUMNS = [
    ("workload", "workload", None),
    ("devices", "dev", None),
    ("variant", "variant", None),
    ("median_s", "s/round", ".3f"),
    ("spread", "max/min", ".2f"),
    ("fedjax_over_this", "FedJAX/this", ".2f"),
    ("compile_s", "compile s", ".2f"),
]


def notes(config: Config, result: dict) -> list[str]:
    out = []
    for r in result["rows"]:
        if r["variant"] == "fedjax":
            e = r["equivalence"]
            out.append(
                f"{r['workload']}: FedJAX = abo-jax after one round to {e['max_abs_diff']:.2g} "
                f"(tolerance {config.tolerance:g}), {e['steps_per_client']} steps per client"
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__], skip_on=(ModuleNotFoundError,))


if __name__ == "__main__":
    main()
