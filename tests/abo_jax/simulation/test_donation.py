"""``donate_state``: the same numbers as without, the donated state's buffers are freed, and a
checkpointed run resumes to the very same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax as aj

FEAT, CLASSES = 6, 3


def _sim(donate, **kw):
    model = aj.paper_mlp(FEAT, (5, 4), CLASSES, ranks=2, dtype=jnp.float64)
    return aj.make_simulation(model, aj.sum_product(), batch_size=4, donate_state=donate, **kw)


def _leaves(tree):
    """Numpy leaves of a state (PRNG keys as their key data), for exact comparison."""
    out = []
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out


@pytest.mark.parametrize(
    "kw", [{}, {"sampling": aj.uniform_sampling(2), "reset_optimizer": False}], ids=["plain", "opt"]
)
def test_donated_round_gives_the_same_state_and_frees_the_old_one(rng, clients_fn, kw):
    data = clients_fn(rng, [6, 9, 4], FEAT, CLASSES)
    finals = {}
    for donate in (False, True):
        sim = _sim(donate, **kw)
        state = sim.init(jax.random.key(1), data)
        inputs = sim.prepare(state, data)
        for _ in range(3):
            old = state
            state, metrics = sim.round(state, data, inputs)
            # Donated: every buffer of the state passed in is gone; otherwise all are still there.
            assert {x.is_deleted() for x in jax.tree.leaves(old)} == {donate}
        finals[donate] = (_leaves(state), _leaves(metrics))
    for a, b in zip(*map(jax.tree.leaves, (finals[False], finals[True])), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises((RuntimeError, ValueError), match="deleted"):
        sim.round(old, data, inputs)  # a donated state cannot be used again


def test_donated_run_resumes_to_the_same_numbers(tmp_path, rng, clients_fn):
    data = clients_fn(rng, [6, 9, 4, 7], FEAT, CLASSES)
    test = (data.x[1], data.y[1])
    path = str(tmp_path / "run.ckpt")
    kw = dict(rounds=4, key=jax.random.key(2), progress=False)
    donated = _sim(True, sampling=aj.uniform_sampling(3), reset_optimizer=False)

    def stop(r, state, record):
        if r == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        aj.run(donated, data, test, checkpoint_path=path, checkpoint_every=1, callback=stop, **kw)
    resumed, s_res = aj.run(donated, data, test, checkpoint_path=path, **kw)
    plain = _sim(False, sampling=aj.uniform_sampling(3), reset_optimizer=False)
    straight, s_str = aj.run(plain, data, test, **kw)
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    for a, b in zip(_leaves(s_res), _leaves(s_str), strict=True):
        np.testing.assert_array_equal(a, b)
