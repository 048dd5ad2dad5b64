"""Fixtures for the simulation tests."""

import pytest
from sim_helpers import synthetic_clients


@pytest.fixture
def clients_fn():
    return synthetic_clients
