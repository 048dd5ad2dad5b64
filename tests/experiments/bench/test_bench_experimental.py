"""The EXPERIMENT suites that swap a library path (svd, shuffle), and the products yardstick."""

import json

import jax
import jax.numpy as jnp
import pytest

from abo_jax.linalg import svd
from experiments.bench import experimental


@pytest.mark.parametrize(
    "suite, variants",
    [
        ("svd", ["buffer_callback (abo_jax.linalg)", "pure_callback (before)"]),
        ("shuffle", ["one-operand sorts (abo_jax.data._shuffle)", "key-value sorts (before)"]),
    ],
)
def test_swap_suites_time_both_paths_of_the_same_round(tmp_path, suite, variants):
    experimental.main(["--suite", suite, "--quick", "--reps", "2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / f"experimental_{suite}.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == variants
    assert all(r["call_s"] > 0 for r in rows)
    # svd: numpy's SVD of the same operands either way; shuffle: the same epoch orders. So the
    # round (clients and metrics) agrees exactly.
    assert rows[1]["max_abs_diff_vs_first"] == 0.0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the buffer callback is the CPU path")
def test_the_swap_traces_the_old_callback_and_restores_the_library():
    x = jnp.ones((4, 3))
    with experimental._pure_callback_svd():
        swapped = jax.jit(lambda a: svd(a)).lower(x).as_text()
    restored = jax.jit(lambda a: svd(a)).lower(x).as_text()
    assert "xla_buffer_python_cpu_callback" in restored
    assert "xla_buffer_python_cpu_callback" not in swapped and "callback" in swapped


def test_the_shuffle_swap_traces_key_value_sorts_and_restores_the_library():
    from abo_jax.data import epoch_batches

    def sorts(text):  # operand count of every sort in the StableHLO text
        return [line.count("%") - 1 for line in text.splitlines() if '"stablehlo.sort"' in line]

    mask = jnp.ones((40,), bool)
    with experimental._xla_sort_shuffle():
        swapped = epoch_batches.lower(jax.random.key(0), mask, 8).as_text()
    restored = epoch_batches.lower(jax.random.key(0), mask, 8).as_text()
    assert sorts(restored) and all(n == 1 for n in sorts(restored))
    assert 2 in sorts(swapped)


def test_numpy_lora_products_equal_the_jax_layouts():
    # The products suite's numpy yardstick computes what its JAX layouts compute.
    import numpy as np

    rng = np.random.default_rng(0)
    m, bs, k, d, r = 3, 5, 7, 6, 2
    x, g = rng.standard_normal((m, bs, k)), rng.standard_normal((m, bs, d))
    a, b = rng.standard_normal((m, r, k)), rng.standard_normal((m, d, r))
    ours = experimental.numpy_lora_products(x, a, b, g)
    for layout in ("client_leading", "client_second", "dense_diagonal"):
        ref = experimental.lora_products(layout, m)(x, a, b, g)
        for o, e in zip(ours, ref, strict=True):
            np.testing.assert_allclose(o, np.asarray(e), rtol=1e-12, atol=1e-12)
    z, db, da = ours  # and one entry by hand: z_c = (x_c a_c^T) b_c^T
    np.testing.assert_allclose(z[1], (x[1] @ a[1].T) @ b[1].T, rtol=1e-12)
