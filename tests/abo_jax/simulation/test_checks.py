"""The simulator's argument checks: PRNG keys and metrics_fn outputs, with clear messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax.simulation._checks import check_key, check_metrics


def _same_stream(a, b):
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_typed_keys_pass_unchanged_and_legacy_keys_are_wrapped_into_the_same_stream():
    key = jax.random.key(3)
    assert check_key(key) is key
    keys = jax.random.split(key, 4)
    assert check_key(keys, 4) is keys
    assert check_key(key, 4) is key  # one key, split later by the caller
    legacy = jax.random.PRNGKey(3)
    typed = check_key(legacy)
    assert jnp.issubdtype(typed.dtype, jax.dtypes.prng_key) and typed.shape == ()
    _same_stream(typed, key)  # PRNGKey(3) and key(3) are one threefry stream
    np.testing.assert_array_equal(jax.random.uniform(typed, (3,)), jax.random.uniform(key, (3,)))
    legacy_runs = jax.vmap(jax.random.PRNGKey)(jnp.arange(4))
    assert check_key(legacy_runs, 4).shape == (4,)


def test_typed_keys_also_check_under_jit():
    out = jax.jit(lambda k: jax.random.key_data(check_key(k, 2)))(
        jax.random.split(jax.random.key(0), 2)
    )
    assert out.shape == (2, 2)


@pytest.mark.parametrize(
    "key, words",
    [
        (None, r"got None; pass a PRNG key, e.g. key=jax.random.key\(0\)"),
        (0, r"integer 0, a seed, not a key; pass key=jax.random.key\(0\)"),
        (np.int64(7), r"jax.random.key\(7\)"),
        (jnp.asarray(5), "integer array, a seed"),
        ("seed", "expected a PRNG key"),
        (jnp.zeros(2), "dtype float"),
        (jnp.zeros(3, jnp.uint32), r"shape \(3,\)"),
    ],
)
def test_what_is_not_a_key_is_refused_by_name(key, words):
    with pytest.raises(TypeError, match=words):
        check_key(key)


def test_key_shapes_must_match_num_runs():
    with pytest.raises(ValueError, match=r"num_runs is None.*num_runs=3"):
        check_key(jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"\(4,\) keys .* shape \(3,\).*split"):
        check_key(jax.random.split(jax.random.key(0), 3), 4)


def test_metrics_must_be_a_dict_of_numeric_arrays():
    out = {"a": jnp.ones(3), "b": 2.0, "c": {"d": jnp.zeros(2)}, "e": np.bool_(True)}
    assert check_metrics(out) == out
    with pytest.raises(TypeError, match="returned None.*missing return"):
        check_metrics(None)
    with pytest.raises(TypeError, match="must return a dict.*got str 'oops'"):
        check_metrics("oops")
    with pytest.raises(TypeError, match="got list"):
        check_metrics([jnp.ones(2)])
    with pytest.raises(TypeError, match="names must be strings"):
        check_metrics({1: jnp.ones(2)})
    with pytest.raises(TypeError, match="metric 'x' must be a numeric array.*str"):
        check_metrics({"x": "text"})
    with pytest.raises(TypeError, match="metric 'x'.*NoneType"):
        check_metrics({"x": None})
    with pytest.raises(ValueError, match=r"clash with built-in metrics.*'my/train_loss'"):
        check_metrics({"train_loss": jnp.ones(())}, reserved=("train_loss",))


def test_metrics_check_works_on_tracers():
    def f(x):
        return check_metrics({"s": jnp.sum(x)})["s"]

    assert float(jax.jit(f)(jnp.ones(3))) == 3.0


def test_run_refuses_a_seed_or_none_as_key_and_takes_a_legacy_key(clients_fn):
    import abo_jax as aj

    data = clients_fn(np.random.default_rng(0), [5, 6], 4, 3)
    sim = aj.make_simulation(aj.paper_mlp(4, (3,), 3, ranks=1, dtype=jnp.float64), aj.product_sum())
    test = (data.x[0], data.y[0])
    for bad, words in ((None, "got None"), (0, r"jax.random.key\(0\)")):
        with pytest.raises(TypeError, match=words):
            aj.run(sim, data, test, rounds=1, key=bad, progress=False)
    legacy, _ = aj.run(sim, data, test, rounds=2, key=jax.random.PRNGKey(2), progress=False)
    typed, _ = aj.run(sim, data, test, rounds=2, key=jax.random.key(2), progress=False)
    np.testing.assert_array_equal(legacy["test_loss"], typed["test_loss"])


def test_run_refuses_non_finite_hparams_by_name(clients_fn):
    import abo_jax as aj

    data = clients_fn(np.random.default_rng(0), [5, 6], 4, 3)
    model = aj.paper_mlp(4, (3,), 3, ranks=1, dtype=jnp.float64)
    sim = aj.make_simulation(
        model, aj.product_sum(), optimizer=lambda hp: aj.paper_sgd(hp["lr"], 0.0, 0.0)
    )
    with pytest.raises(ValueError, match=r"hparams\['lr'\]: must be finite, got nan"):
        aj.run(sim, data, (data.x[0], data.y[0]), rounds=1, key=jax.random.key(0),
               hparams={"lr": jnp.nan}, progress=False)  # fmt: skip
