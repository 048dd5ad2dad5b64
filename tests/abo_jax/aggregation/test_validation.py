"""Bad input gets a ValueError naming the offending argument (concrete calls, and shapes in jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import operator_zoo

import abo_jax as aj

M, D, K, R = 3, 6, 5, 2
ZOO = operator_zoo(M, R)
NAMES = list(ZOO)


def _tree(b=None, a=None, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(M, D, R)) if b is None else b
    a = np.broadcast_to(rng.normal(size=(1, R, K)), (M, R, K)).copy() if a is None else a
    return {"layer": aj.LoRAFactors(jnp.asarray(b), jnp.asarray(a))}


W = jnp.full(M, 1.0 / M)


def _call(name, tree, weights=W):
    abo, _ = ZOO[name]
    return abo.aggregate(tree, weights, abo.init(tree, key=jax.random.key(0)))


@pytest.mark.parametrize("name", NAMES)
def test_clients_errors(name):
    rng = np.random.default_rng(1)
    good = _tree()
    with pytest.raises(ValueError, match="clients.*leading client axis"):
        _call(name, _tree(b=rng.normal(size=(M + 1, D, R))))
    with pytest.raises(ValueError, match="clients.*rank mismatch"):
        _call(name, _tree(a=rng.normal(size=(M, R + 1, K))))
    with pytest.raises(ValueError, match="clients.*exceeds min"):
        _call(name, _tree(b=rng.normal(size=(M, 3, 4)), a=rng.normal(size=(M, 4, K))))
    for bad in (np.nan, np.inf):
        b = np.array(good["layer"].b)
        b[1, 2, 0] = bad
        with pytest.raises(ValueError, match="clients.*NaN or Inf"):
            _call(name, _tree(b=b))


@pytest.mark.parametrize("name", NAMES)
def test_weights_errors_and_normalize(name):
    tree = _tree()
    cases = {
        "shape": jnp.full(M + 1, 1.0 / (M + 1)),
        ">= 0": jnp.array([-0.2, 0.6, 0.6]),
        "finite": jnp.array([np.nan, 0.5, 0.5]),
        "all zero": jnp.zeros(M),
        "sum to 1.*normalize=True": jnp.array([0.2, 0.2, 0.2]),
    }
    for message, weights in cases.items():
        with pytest.raises(ValueError, match=f"weights.*{message}"):
            _call(name, tree, weights)
    abo, _ = ZOO[name]
    state = abo.init(tree, key=jax.random.key(0))
    raw = abo.aggregate(tree, jnp.array([1.0, 2.0, 1.0]), state, normalize=True)[0]
    ref = abo.aggregate(tree, jnp.array([0.25, 0.5, 0.25]), state)[0]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12), raw, ref)


def test_weight_shape_is_checked_inside_jit_too():
    with pytest.raises(ValueError, match="weights.*shape"):
        jax.jit(aj.product_sum().aggregate)(_tree(), jnp.full(M + 1, 0.25))


def test_operator_argument_errors():
    with pytest.raises(ValueError, match="rank"):
        aj.sum_product(rank=0)
    with pytest.raises(ValueError, match="rank"):
        aj.sum_product(rank=R + 1).aggregate(_tree(), W)
    with pytest.raises(ValueError, match="split"):
        aj.sum_product(split="middle")
    with pytest.raises(ValueError, match="scale"):
        aj.fedex(scale=float("nan"))
    with pytest.raises(ValueError, match="init"):
        aj.flora(init="orthogonal")
    with pytest.raises(ValueError, match="key"):
        aj.flora().init(_tree())
    with pytest.raises(ValueError, match="state"):
        aj.flora().aggregate(_tree(), W, None)
    with pytest.raises(ValueError, match="state"):
        aj.rolora().aggregate(_tree(), W, None)


@pytest.mark.parametrize("factory", [aj.hetlora, aj.rbla, aj.flexlora])
def test_client_ranks_errors(factory):
    for bad in ([0, 1, 2], [1.5, 1, 2], [[1, 2, 2]], []):
        with pytest.raises(ValueError, match="client_ranks"):
            factory(bad)
    for bad in ([1, 2, R + 1], [1, 2], [1, 2, 2, 1]):
        with pytest.raises(ValueError, match="client_ranks"):
            factory(bad).aggregate(_tree(), W)
    with pytest.raises(ValueError, match="client_ranks"):  # one array per layer in a pytree
        factory({"layer": np.array([1, 2, 2]), "other": np.array([1, 1, 1])}).aggregate(_tree(), W)
    with pytest.raises(ValueError, match="alpha"):
        factory([1, 2, 2], alpha=-1.0)


def test_frozen_factor_must_be_shared():
    rng = np.random.default_rng(2)
    tree = _tree(a=rng.normal(size=(M, R, K)))  # different A per client
    with pytest.raises(ValueError, match="clients.*A .FFA-LoRA"):
        aj.ffa().aggregate(tree, W, aj.ffa().init(tree))
    with pytest.raises(ValueError, match="clients.*A .RoLoRA"):
        aj.rolora().aggregate(tree, W, aj.rolora().init(tree))
    # Round 1 of RoLoRA freezes B instead.
    state = aj.aggregation.RoLoRAState(round=jnp.array(1, jnp.int32))
    with pytest.raises(ValueError, match="clients.*B .RoLoRA"):
        aj.rolora().aggregate(tree, W, state)
    # A client of weight 0 may hold anything: it is not checked and not used.
    a = np.broadcast_to(rng.normal(size=(1, R, K)), (M, R, K)).copy()
    a[0] += 1.0
    w = jnp.array([0.0, 0.5, 0.5])
    bc, _, _ = aj.ffa().aggregate(_tree(a=a), w, aj.ffa().init(None))
    np.testing.assert_array_equal(bc.factors["layer"].a, a[1])  # one copy: the others' A
