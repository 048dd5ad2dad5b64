"""The sort-free shuffles give exactly what the jax calls they replace give (_shuffle.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from abo_jax.data import _shuffle
from abo_jax.data._shuffle import permutation, shuffle_rounds, stable_argsort_u32, stable_partition

SIZES = (1, 2, 3, 5, 8, 9, 37, 64, 65, 300)
argsort_jit = jax.jit(stable_argsort_u32)
partition_jit = jax.jit(stable_partition)


def reference_argsort(keys):
    keys = jnp.asarray(keys, jnp.uint32)
    return np.asarray(jax.lax.sort_key_val(keys, jnp.arange(keys.shape[0]))[1])


@st.composite
def keys_with_ties(draw):
    n = draw(st.sampled_from(SIZES))
    top = draw(st.sampled_from((1, 3, 2**16, 2**32 - 1)))  # from all equal to almost all distinct
    seed = draw(st.integers(0, 2**32 - 1))
    keys = np.random.default_rng(seed).integers(0, top, n, dtype=np.uint64, endpoint=True)
    return keys.astype(np.uint32)


@given(keys_with_ties())
def test_stable_argsort_equals_a_stable_key_value_sort(keys):
    got = np.asarray(argsort_jit(jnp.asarray(keys)))
    np.testing.assert_array_equal(got, reference_argsort(keys))
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))  # numpy as a 2nd witness


def test_stable_argsort_at_the_paper_clients_size_and_at_the_digit_boundaries():
    # 6016 rows: 13 position bits, a 19-bit and a 13-bit digit; 2**13 + 1: 14 position bits.
    rng = np.random.default_rng(0)
    for n in (6016, 2**13, 2**13 + 1):
        for top in (7, 2**32 - 1):
            keys = rng.integers(0, top, n, dtype=np.uint64, endpoint=True).astype(np.uint32)
            np.testing.assert_array_equal(np.asarray(argsort_jit(keys)), reference_argsort(keys))
    extremes = np.array([2**32 - 1, 0, 2**31, 2**32 - 1, 1, 0, 2**19, 2**19 - 1], np.uint32)
    np.testing.assert_array_equal(np.asarray(argsort_jit(extremes)), reference_argsort(extremes))


def test_stable_argsort_falls_back_to_xla_sort_for_long_rows(monkeypatch):
    # Rows needing more than _MAX_POSITION_BITS position bits use lax.sort_key_val; shrink the
    # limit to reach that branch with a short row.
    monkeypatch.setattr(_shuffle, "_MAX_POSITION_BITS", 2)
    keys = np.array([5, 3, 5, 1, 3, 0, 5], np.uint32)
    np.testing.assert_array_equal(np.asarray(stable_argsort_u32(keys)), reference_argsort(keys))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 64, 100, 6016])
def test_permutation_equals_jax_random_permutation(n):
    keys = jax.random.split(jax.random.key(7), 6)
    ours = jax.jit(jax.vmap(lambda k: permutation(k, n)))(keys)
    theirs = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, n)))(keys)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    if n:
        assert sorted(np.asarray(ours[0]).tolist()) == list(range(n))
    if n >= 20:  # six keys, six different orders
        assert len({tuple(np.asarray(row).tolist()) for row in ours}) == 6


def test_shuffle_rounds():
    assert [shuffle_rounds(n) for n in (0, 1, 2, 1000, 6016, 2**21, 2**22)] == [0, 0, 1, 1, 2, 2, 3]


@given(st.sampled_from(SIZES), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_stable_partition_equals_a_stable_argsort_of_the_flags(n, seed, p_true):
    flags = np.random.default_rng(seed).random(n) < p_true
    got = np.asarray(partition_jit(jnp.asarray(flags)))
    np.testing.assert_array_equal(got, np.argsort(~flags, kind="stable"))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="1-D uint32"):
        stable_argsort_u32(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="1-D uint32"):
        stable_argsort_u32(jnp.zeros((2, 3), jnp.uint32))
    with pytest.raises(ValueError, match="1-D"):
        stable_partition(jnp.zeros((2, 3), bool))
