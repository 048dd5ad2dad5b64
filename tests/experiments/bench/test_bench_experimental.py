"""The EXPERIMENT suite ``svd`` runs in its --quick form: both SVD paths, the same round."""

import json

import jax
import jax.numpy as jnp
import pytest

from abo_jax.linalg import svd
from experiments.bench import experimental


def test_svd_suite_compares_the_two_callbacks_on_the_same_round(tmp_path):
    experimental.main(["--suite", "svd", "--quick", "--reps", "2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "experimental_svd.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == [
        "buffer_callback (abo_jax.linalg)",
        "pure_callback (before)",
    ]
    assert all(r["call_s"] > 0 for r in rows)
    # Both run numpy's SVD on the same operands: the round and its metrics agree exactly.
    assert rows[1]["max_abs_diff_vs_first"] == 0.0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the buffer callback is the CPU path")
def test_the_swap_traces_the_old_callback_and_restores_the_library():
    x = jnp.ones((4, 3))
    with experimental._pure_callback_svd():
        swapped = jax.jit(lambda a: svd(a)).lower(x).as_text()
    restored = jax.jit(lambda a: svd(a)).lower(x).as_text()
    assert "xla_buffer_python_cpu_callback" in restored
    assert "xla_buffer_python_cpu_callback" not in swapped and "callback" in swapped
