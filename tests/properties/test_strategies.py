"""theory.strategies produce what they document (shapes, weights, masks, normalized drifts)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from theory import strategies as abo_st


@given(
    st.integers(1, 5),
    st.sampled_from(["uniform", "dirichlet", "integers", "zeros", "any"]),
    st.data(),
)
def test_weights_are_probability_vectors(m, kind, data):
    w = np.asarray(data.draw(abo_st.weights(m, kind)))
    assert w.shape == (m,) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    if kind == "uniform":
        np.testing.assert_allclose(w, 1.0 / m)


@given(abo_st.client_sets(layers=2, max_clients=3))
def test_client_sets_shapes(case):
    m = case.weights.shape[0]
    for f in case.clients.values():
        assert f.b.shape[0] == f.a.shape[0] == m
        assert f.b.shape[2] == f.a.shape[1] <= min(f.b.shape[1], f.a.shape[2])
        assert f.b.dtype == np.float64


@given(abo_st.heterogeneous_client_sets())
def test_heterogeneous_ranks_are_masked(case):
    f = case.clients["layer0"]
    for i, r_i in enumerate(np.asarray(case.ranks["layer0"])):
        assert 1 <= r_i <= f.b.shape[2]
        assert not np.any(np.asarray(f.b)[i, :, r_i:]) and not np.any(np.asarray(f.a)[i, r_i:])


@given(abo_st.perturbation_sets(delta=1e-3, start="any"))
def test_perturbation_sets_have_unit_weighted_drift(case):
    w = np.asarray(case.weights)
    d = case.directions["layer0"]
    norm2 = np.dot(w, (np.asarray(d.b) ** 2).sum((1, 2)) + (np.asarray(d.a) ** 2).sum((1, 2)))
    np.testing.assert_allclose(norm2, 1.0, rtol=1e-12)
    start = case.start["layer0"]
    if case.start_kind == "standard":
        assert not np.any(np.asarray(start.b))
    drift = np.asarray(case.clients["layer0"].b) - np.asarray(start.b)[None]
    np.testing.assert_allclose(drift, case.delta * np.asarray(d.b), atol=1e-15)
