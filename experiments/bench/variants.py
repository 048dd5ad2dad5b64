"""Variants of the round timed side by side, each expressed through the round's own arguments.

Every variant is ``workload.setup(...)`` with other values: nothing in abo_jax is patched, and the
first variant of a suite is the library's round. Suites (``--suite``):

* ``rounds``: ``--rounds R`` rounds per timed call: a loop of the jitted round (the baseline), the
  same with ``jit_round(donate=True)``, ``scan_rounds`` (one dispatch; data and inputs as
  arguments, or closed over as constants), and the round compiled under
  ``jax.default_matmul_precision("highest")``.
* ``shuffle``: the epoch orders of ``abo_jax.data.epoch_batches`` (one-operand sorts) against
  :func:`key_value_sort_batches` (``jax.random.permutation`` and a stable ``argsort``: XLA's
  key-value sorts, as before ``abo_jax.data._shuffle``), passed as
  ``client_update=partial(abo_jax.client_update, batches_fn=...)``: the same orders, so the same
  numbers.
* ``svd``: SP with ``theory.round_metrics``, the operator's SVD through ``abo_jax.linalg.svd``
  (buffer callback) against an SP operator built with ``make_abo`` whose SVD is a
  ``jax.pure_callback`` (:func:`sum_product_with_svd`); the metrics' own SVDs are the library's in
  both.
* ``optimizer``: ``optimizer=`` the paper's SGD as one tree map (:func:`fused_paper_sgd`, the same
  operations), and plain SGD (other maths: what momentum and decay cost).
* ``products``: one layer's per-client LoRA products in several layouts, and numpy's batched
  ``matmul`` as a yardstick for XLA:CPU's kernels (no round).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from abo_jax.aggregation import (
    EmptyState,
    LayerResult,
    aggregate_layers,
    make_abo,
    split_svd,
)
from abo_jax.linalg import qr
from experiments.bench import common
from experiments.bench import workload as W

NAME = "variants"
TITLE = "Variants of the round, side by side"
SUITES = ("rounds", "shuffle", "svd", "optimizer", "products")
OPTIONS = {
    "--suite": {
        "choices": SUITES,
        "default": "rounds",
        "help": "rounds: R rounds per call, four ways; shuffle: epoch orders; svd: the SP"
        " operator's SVD; optimizer: local optimizers; products: LoRA product layouts"
        " (default: rounds)",
    },
    "--clients": {"type": int, "default": 10, "help": "m (default 10)"},
    "--samples": {"type": int, "default": 1280, "help": "examples per client (default 1280)"},
    "--small-clients": {
        "action": "store_true",
        "help": "the digits-sized MLP, 20 samples per client, batch 10",
    },
    "--rounds": {"type": int, "default": 5, "help": "rounds per timed call (suite rounds)"},
}


@dataclass(frozen=True)
class Config:
    suite: str = "rounds"
    spec: W.RoundSpec = W.RoundSpec(samples=1280)
    rounds: int = 5
    reps: int = 5
    matmul_sizes: tuple[int, ...] = (1024, 2048)


def get_config(
    quick=False, suite="rounds", clients=10, samples=1280, small_clients=False, rounds=5
):
    if quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
        return Config(suite, spec, rounds=2, reps=2, matmul_sizes=(128,))
    spec = dataclasses.replace(W.RoundSpec(), clients=clients, samples=samples)
    if small_clients:
        spec = dataclasses.replace(W.SMALL_CLIENTS, clients=clients)
    return Config(suite, spec, rounds=rounds)


def json_name(config: Config) -> str:
    return f"{NAME}_{config.suite}"


def key_value_sort_batches(key: jax.Array, mask: jax.Array, batch_size: int):
    """``abo_jax.data.epoch_batches`` with XLA's key-value sorts: ``jax.random.permutation`` and a
    stable ``argsort`` putting the real rows first (the same orders)."""
    n = mask.shape[0]
    nb = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    order = perm[jnp.argsort(jnp.logical_not(mask[perm]), stable=True)]
    valid = jnp.concatenate([mask[order], jnp.zeros((nb * batch_size - n,), bool)])
    order = jnp.concatenate([order, jnp.zeros((nb * batch_size - n,), order.dtype)])
    return order.reshape(nb, batch_size), valid.reshape(nb, batch_size)


def pure_callback_svd(x: jax.Array):
    """numpy's thin SVD through ``jax.pure_callback`` (what ``abo_jax.linalg.svd`` used before its
    buffer callback; it can hang on a mesh of several CPU devices, RESULTS.md)."""
    n, p = x.shape[-2:]
    q = min(n, p)
    spec = lambda *shape: jax.ShapeDtypeStruct(x.shape[:-2] + shape, x.dtype)  # noqa: E731

    def host(a):
        return tuple(np.asarray(v, a.dtype) for v in np.linalg.svd(a, full_matrices=False))

    return jax.pure_callback(host, (spec(n, q), spec(q), spec(q, p)), x, vmap_method="expand_dims")


def sum_product_with_svd(svd) -> abo_jax.ABO:
    """SP (``abo_jax.sum_product()``'s maths, the same operations) with its SVD taken by ``svd``."""

    def one_layer(f, weights):
        m, d, r = f.b.shape  # noqa: F841 (m used below)
        k = f.a.shape[-1]
        if m * r < min(d, k):  # the stacked path: QRs of the stacked factors, SVD of the core
            bs = jnp.transpose(weights.astype(f.b.dtype)[:, None, None] * f.b, (1, 0, 2))
            qb, rb = qr(bs.reshape(d, m * r))
            qa, ra = qr(f.a.reshape(m * r, k).T)
            u, s, vt = svd(rb @ ra.T)
            u, vt = qb @ u, vt @ qa.T
        else:
            u, s, vt = svd(jnp.einsum("c,cdr,crk->dk", weights.astype(f.b.dtype), f.b, f.a))
        out = split_svd(u, s, vt, r, r)
        return LayerResult(out, diag={"sp_tail": jnp.sum(s[r:] ** 2)})

    def core(clients, weights, state):
        broadcast, diag = aggregate_layers(clients, weights, lambda f, _: one_layer(f, weights))
        return broadcast, state, diag

    return make_abo(lambda clients, key=None: EmptyState(), core)


def fused_paper_sgd(learning_rate: float, momentum: float, weight_decay: float):
    """``abo_jax.paper_sgd``'s recursion as one map over the tree (the same operations in the same
    order: ``buf = (g + wd p) + momentum buf``, ``update = buf * (-lr)``)."""

    def update(grads, buf, params):
        buf = jax.tree.map(
            lambda g, b, p: (g + weight_decay * p) + momentum * b, grads, buf, params
        )
        return jax.tree.map(lambda b: b * -learning_rate, buf), buf

    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p), update)


def _carried(call, state):
    """A thunk running ``call(state) -> (state, metrics)`` that carries the state to the next call."""
    held = [state]

    def thunk():
        held[0], metrics = call(held[0])
        return held[0], metrics

    return thunk


def suite_rounds(config: Config):
    """``{name: (thunk, compile seconds)}``: R rounds per call, four ways (module doc)."""
    spec, n, data = config.spec, config.rounds, W.make_data(config.spec)
    out = {}
    for name, donate, precision in (
        ("loop of jitted rounds", False, None),
        ("loop, donate_state", True, None),
        ("precision highest", False, "highest"),
    ):
        s = W.setup(spec, data, donate=donate)
        with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
            compiled, seconds = common.compile_timed(s.rnd.apply, s.state, s.data, s.inputs)

        def call(state, c=compiled, s=s):
            for _ in range(n):
                state, metrics = c(state, s.data, s.inputs)
            return state, metrics

        out[name] = (_carried(call, s.state), seconds)
    s = W.setup(spec, data)
    scan = abo_jax.scan_rounds(s.step, n)
    compiled, seconds = common.compile_timed(jax.jit(scan.apply), s.state, s.data, s.inputs)
    out["scan_rounds"] = (_carried(lambda st: compiled(st, s.data, s.inputs), s.state), seconds)
    constants = jax.jit(lambda st: scan.apply(st, s.data, s.inputs))  # folded into the program
    compiled_c, seconds = common.compile_timed(constants, s.state)
    out["scan_rounds, data as constants"] = (_carried(compiled_c, s.state), seconds)
    return out, n


def _one_round_each(config: Config, variants: dict):
    data = W.make_data(config.spec)
    out = {}
    for name, kwargs in variants.items():
        thunk, _, seconds = W.setup(config.spec, data, **kwargs).compiled()
        out[name] = (thunk, seconds)
    return out, 1


def suite_shuffle(config: Config):
    old = functools.partial(abo_jax.client_update, batches_fn=key_value_sort_batches)
    variants = {
        "one-operand sorts (library)": {},
        "key-value sorts (before)": {"client_update": old},
    }
    return _one_round_each(config, variants)


def suite_svd(config: Config):
    from theory import round_metrics

    variants = {
        "buffer_callback (abo_jax.linalg)": {"abo": abo_jax.sum_product()},
        "pure_callback (before)": {"abo": sum_product_with_svd(pure_callback_svd)},
    }
    for kwargs in variants.values():
        kwargs["metrics_fn"] = round_metrics
    return _one_round_each(config, variants)


def suite_optimizer(config: Config):
    spec = config.spec
    variants = {
        "paper_sgd (library)": {},
        "fused_sgd": {"optimizer": fused_paper_sgd(spec.lr, spec.momentum, spec.weight_decay)},
        "ablation: plain SGD (other maths)": {"optimizer": optax.sgd(spec.lr)},
    }
    return _one_round_each(config, variants)


def lora_products(layout: str, m: int):
    """One layer's per-client LoRA products: ``u = x A^T``, ``z = u B^T``, ``du = g B`` and the
    factor gradients ``dB = g^T u``, ``dA = du^T x``, with the client axis placed by ``layout``."""
    idx = jnp.arange(m)

    def fn(x, a, b, g):
        if layout == "client_leading":  # what jax.vmap gives
            u, du = jnp.einsum("cbk,crk->cbr", x, a), jnp.einsum("cbd,cdr->cbr", g, b)
            z = jnp.einsum("cbr,cdr->cbd", u, b)
        elif layout == "client_second":  # batch-major
            u = jnp.einsum("bck,crk->cbr", jnp.swapaxes(x, 0, 1), a)
            du = jnp.einsum("bcd,cdr->cbr", jnp.swapaxes(g, 0, 1), b)
            z = jnp.einsum("bcr,cdr->cbd", jnp.swapaxes(u, 0, 1), b)
        elif layout == "multiply_sum":  # no GEMM
            u, du = jnp.sum(x[:, :, None] * a[:, None], -1), jnp.sum(g[..., None] * b[:, None], -2)
            z = jnp.sum(u[:, :, None] * b[:, None], -1)
        else:  # "dense_diagonal": every client against all factors, the diagonal blocks kept
            u = jnp.einsum("cbk,erk->cber", x, a)[idx, :, idx]
            du = jnp.einsum("cbd,edr->cber", g, b)[idx, :, idx]
            z = jnp.einsum("cbr,edr->cbed", u, b)[idx, :, idx]
        return z, jnp.einsum("cbd,cbr->cdr", g, u), jnp.einsum("cbr,cbk->crk", du, x)

    return fn


def numpy_lora_products(x, a, b, g):
    """:func:`lora_products` (any layout) by numpy's batched ``matmul`` on host arrays."""
    u, du = np.matmul(x, np.swapaxes(a, 1, 2)), np.matmul(g, b)
    z = np.matmul(u, np.swapaxes(b, 1, 2))
    return z, np.matmul(np.swapaxes(g, 1, 2), u), np.matmul(np.swapaxes(du, 1, 2), x)


def suite_products(config: Config):
    """The LoRA products of layers 1 and 2 of the spec, per layout; useful FLOPs per call."""
    spec, out, useful = config.spec, {}, 0.0
    m, bs = spec.clients, spec.batch
    for layer, ((d, k), r) in enumerate(zip(spec.layer_shapes[:2], spec.ranks, strict=False)):
        keys = jax.random.split(jax.random.key(layer), 4)
        shapes = ((m, bs, k), (m, r, k), (m, d, r), (m, bs, d))
        args = [
            jax.random.normal(key, shape, jnp.float32)
            for key, shape in zip(keys, shapes, strict=True)
        ]
        useful += 2.0 * m * bs * r * (2 * k + 3 * d)
        layouts = ["client_leading", "client_second", "multiply_sum"]
        for layout in layouts + (["dense_diagonal"] if m <= 16 else []):
            thunk, _, seconds = common.compiled_thunk(jax.jit(lora_products(layout, m)), *args)
            out[f"layer{layer} {layout}"] = (thunk, seconds)
        host = [np.asarray(v) for v in args]
        out[f"layer{layer} numpy_blas"] = (lambda h=host: numpy_lora_products(*h), 0.0)
    return out, useful


def _comparable(suite: str, out):
    """What must agree between variants: the clients' next state (and, one round per call, the
    round's metrics); the products themselves."""
    if suite == "products":
        return [np.asarray(v) for v in out]
    state, metrics = out
    return jax.tree.map(
        np.asarray, state.clients if suite == "rounds" else (state.clients, metrics)
    )


def run(config: Config, reps: int | None = None) -> dict:
    suite = {
        "rounds": suite_rounds,
        "shuffle": suite_shuffle,
        "svd": suite_svd,
        "optimizer": suite_optimizer,
        "products": suite_products,
    }[config.suite]
    found, scale = suite(config)
    thunks = {name: thunk for name, (thunk, _) in found.items()}
    outs = {name: _comparable(config.suite, thunk()) for name, thunk in thunks.items()}
    t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps or config.reps)
    first, rows = next(iter(thunks)), []
    for name, (_, seconds) in found.items():
        row = {"variant": name, "call_s": t[name].median_s, "compile_s": seconds}
        if config.suite == "products":
            layer, layout = name.split()
            ref = outs[f"{layer} client_leading"]
            err = [
                np.max(np.abs(o - e)) / np.max(np.abs(e))
                for o, e in zip(outs[name], ref, strict=True)
            ]
            calls = sum(t[n].median_s for n in thunks if n.endswith(f" {layout}"))
            row.update(rel_diff_vs_client_leading=max(err), useful_gflops=scale / calls / 1e9)
        else:
            flops = W.round_flops(config.spec)["unavoidable"] * scale
            row["speedup"] = t[first].median_s / t[name].median_s
            row["frac_unavoidable"] = flops / t[name].median_s / (mm["gflops"] * 1e9)
            row["max_abs_diff_vs_first"] = common.max_abs_diff(outs[first], outs[name])
        rows.append(row)
    return {"rows": rows, "matmul": mm, "targets": None}


def table(result: dict) -> str:
    keys = [k for k in result["rows"][0] if k not in ("variant",)]
    columns = [("variant", "variant", None)] + [(k, k, ".3g") for k in keys]
    return common.format_table(result["rows"], columns)


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
