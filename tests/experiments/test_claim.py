"""The claim verdict on synthetic result tables: supported, not supported, inconclusive."""

import numpy as np
import pytest

from experiments.paper.claim import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    claim_verdict,
    format_verdict,
    part_verdict,
)


def table(sp_rank_drop, ps_rank_drop, sp_epoch_drop, ps_epoch_drop, noise, seeds=5, seed=0):
    """Accuracies for a 2x2 (delta x E) grid with prescribed drops per operator plus noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for op, rdrop, edrop in (
        ("sp", sp_rank_drop, sp_epoch_drop),
        ("ps", ps_rank_drop, ps_epoch_drop),
    ):
        top = 80.0 + noise * rng.standard_normal(seeds)
        out[(op, 0.07, 1)] = top
        out[(op, 0.01, 1)] = top - rdrop + noise * rng.standard_normal(seeds)
        out[(op, 0.07, 10)] = top - edrop + noise * rng.standard_normal(seeds)
        out[(op, 0.01, 10)] = top - rdrop - edrop
    return out


def test_supported_when_both_parts_hold_clearly():
    v = claim_verdict(table(10.0, 1.0, 1.0, 8.0, noise=0.5))
    assert v["rank"]["verdict"] == SUPPORTED
    assert v["epoch"]["verdict"] == SUPPORTED
    assert v["overall"] == SUPPORTED
    # Evidence: the drops are close to the prescribed ones.
    assert v["rank"]["drop_sp"] == pytest.approx(10.0, abs=1.5)
    assert v["epoch"]["drop_ps"] == pytest.approx(8.0, abs=1.5)
    assert v["rank"]["lo"] > 0 and v["epoch"]["lo"] > 0


def test_not_supported_when_the_opposite_holds():
    v = claim_verdict(table(1.0, 10.0, 1.0, 8.0, noise=0.5))
    assert v["rank"]["verdict"] == NOT_SUPPORTED
    assert v["rank"]["hi"] < 0
    assert v["epoch"]["verdict"] == SUPPORTED
    assert v["overall"] == NOT_SUPPORTED


def test_inconclusive_when_the_interval_contains_zero():
    v = claim_verdict(table(3.0, 2.5, 2.0, 2.5, noise=5.0))
    assert v["rank"]["lo"] < 0 < v["rank"]["hi"]
    assert v["rank"]["verdict"] == INCONCLUSIVE
    assert v["overall"] in (INCONCLUSIVE, NOT_SUPPORTED)
    assert v["overall"] != SUPPORTED


def test_one_seed_and_missing_cells_are_inconclusive():
    one = table(10.0, 1.0, 1.0, 8.0, noise=0.5, seeds=1)
    v = claim_verdict(one)
    assert v["rank"]["verdict"] == INCONCLUSIVE and v["overall"] == INCONCLUSIVE
    full = table(10.0, 1.0, 1.0, 8.0, noise=0.5)
    del full[("ps", 0.07, 10)]
    v = claim_verdict(full)
    assert v["epoch"]["verdict"] == INCONCLUSIVE and v["epoch"]["reason"] == "missing cells"
    assert v["rank"]["verdict"] == SUPPORTED
    assert v["overall"] == INCONCLUSIVE


def test_part_verdict_matches_a_t_interval_computed_by_hand():
    diff = np.array([1.0, 2.0, 4.0])
    p = part_verdict(diff)
    half = 4.302652729911275 * diff.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert p["mean"] == pytest.approx(7 / 3)
    assert p["lo"] == pytest.approx(7 / 3 - half)
    assert p["verdict"] == INCONCLUSIVE  # lo = 2.33 - 3.79 < 0


def test_format_verdict_prints_the_evidence():
    text = format_verdict(claim_verdict(table(10.0, 1.0, 1.0, 8.0, noise=0.5)), "toy")
    assert "SUPPORTED" in text and "rank sensitivity" in text and "epoch sensitivity" in text
