r"""The weak and strong convergence conditions, decided on recorded trajectories.

**Our formalization** of the conditions of Chen et al., arXiv:2508.01348 (DESIGN.md, "Convergence
theory as code"): with a fixed number of local steps ``E``,

.. math::
    \text{weak: } \sup_t R_w^{(t)} \le R\,\eta^2, \qquad
    \text{strong: } \sup_t R_B^{(t)} \le R_P\,\eta^2 \text{ and } \sup_t R_A^{(t)} \le R_Q\,\eta^2

for all small step sizes ``eta``; the sup runs over all recorded rounds, round 0 included.

A finite run cannot prove a statement about ``eta -> 0``, so the decision is an estimate with a
stated rule (:func:`growth_verdict`): over a geometric sweep of ``eta`` (or of a perturbation size
``delta`` in :func:`theory.certify`), fit the log-log slope of ``c(eta) = sup_t R / eta^2`` against
``eta`` on the smallest scales. A bounded ratio has slope ``~0``; a mismatch that does not shrink
with ``eta`` has slope ``~-2`` (``~-1`` when it shrinks like ``eta``). The verdict is

* ``"bounded"`` if the slope is ``>= bounded_slope`` (default ``-0.4``), or if every ratio is below
  ``floor`` (zero up to rounding);
* ``"unbounded"`` if the slope is ``<= unbounded_slope`` (default ``-0.75``) and the ratio grew by
  more than ``min_growth`` over the fitted range;
* ``"insufficient evidence"`` otherwise, or with fewer than ``min_points`` scales or a sweep
  spanning less than ``min_span`` (the gap between the two thresholds is the margin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BOUNDED",
    "UNBOUNDED",
    "INSUFFICIENT",
    "GrowthEvidence",
    "ConditionReport",
    "growth_verdict",
    "sup_ratio",
    "trajectory_conditions",
    "combine_verdicts",
]

BOUNDED = "bounded"
UNBOUNDED = "unbounded"
INSUFFICIENT = "insufficient evidence"


@dataclasses.dataclass(frozen=True)
class GrowthEvidence:
    """How ``sup R / scale^2`` behaves as the scale (``eta`` or ``delta``) shrinks.

    Attributes:
      name: the mismatch (``"R_w"``, ``"R_B"``, ``"R_A"``, ``"R_B+R_A"``).
      scales: the step sizes or perturbation sizes, descending.
      ratios: ``sup R / scale^2`` at each scale.
      slope: fitted log-log slope on the smallest scales (``nan`` when not fitted).
      verdict: ``"bounded"``, ``"unbounded"`` or ``"insufficient evidence"``.
      constant: the estimated constant (largest ratio over the sweep) when bounded, else ``inf``
        (unbounded) or the largest ratio seen (insufficient).
      note: why, in words.
    """

    name: str
    scales: tuple[float, ...]
    ratios: tuple[float, ...]
    slope: float
    verdict: str
    constant: float
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _jsonable(v):
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def growth_verdict(
    name: str,
    scales: Sequence[float],
    ratios: Sequence[float],
    *,
    bounded_slope: float = -0.4,
    unbounded_slope: float = -0.75,
    min_points: int = 3,
    min_span: float = 8.0,
    fit_points: int = 3,
    min_growth: float = 5.0,
    floor: float = 1e-10,
) -> GrowthEvidence:
    """Decides whether ``ratio(scale) = sup R / scale^2`` stays bounded as ``scale -> 0``.

    Args:
      name: label of the mismatch.
      scales: positive step sizes (or perturbation sizes), any order.
      ratios: the sup ratio at each scale (non-negative).
      bounded_slope: slopes at or above this count as bounded.
      unbounded_slope: slopes at or below this (with growth) count as unbounded.
      min_points: fewest scales for any verdict.
      min_span: the sweep must span at least this factor (largest / smallest scale).
      fit_points: the fit uses this many smallest scales (the asymptotic end).
      min_growth: an unbounded verdict also needs the ratio to grow by this factor over the fit.
      floor: ratios at or below this are zero up to rounding.

    Returns:
      :class:`GrowthEvidence`.

    Raises:
      ValueError: for non-positive or non-finite scales, negative or NaN ratios, mismatched
        lengths.
    """
    s = np.asarray(scales, float)
    c = np.asarray(ratios, float)
    if s.shape != c.shape or s.ndim != 1:
        raise ValueError(f"scales and ratios: need equal 1-D lengths, got {s.shape}, {c.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scales: step sizes must be finite and > 0, got {s.tolist()}")
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError(f"ratios: must be >= 0 and not NaN, got {c.tolist()}")
    order = np.argsort(-s)
    s, c = s[order], c[order]
    tup = lambda x: tuple(float(v) for v in x)
    largest = float(np.max(c)) if c.size else float("nan")
    if np.any(np.isinf(c)):
        return GrowthEvidence(name, tup(s), tup(c), float("nan"), UNBOUNDED, float("inf"),
                              "a ratio is infinite (non-zero mismatch at a zero scale)")  # fmt: skip
    if s.size < min_points:
        return GrowthEvidence(name, tup(s), tup(c), float("nan"), INSUFFICIENT, largest,
                              f"{s.size} scale(s); need at least {min_points}")  # fmt: skip
    if s[0] / s[-1] < min_span:
        return GrowthEvidence(name, tup(s), tup(c), float("nan"), INSUFFICIENT, largest,
                              f"sweep spans x{s[0] / s[-1]:.3g}; need at least x{min_span:g}")  # fmt: skip
    if np.all(c <= floor):
        return GrowthEvidence(name, tup(s), tup(c), 0.0, BOUNDED, largest,
                              f"every ratio <= {floor:g} (zero up to rounding)")  # fmt: skip
    k = max(2, min(fit_points, s.size))
    fs, fc = s[-k:], np.maximum(c[-k:], floor)
    slope = float(np.polyfit(np.log(fs), np.log(fc), 1)[0])
    growth = float(fc[-1] / fc[0])
    if slope >= bounded_slope:
        return GrowthEvidence(name, tup(s), tup(c), slope, BOUNDED, largest,
                              f"slope {slope:.2f} >= {bounded_slope} on the {k} smallest scales")  # fmt: skip
    if slope <= unbounded_slope and growth >= min_growth:
        return GrowthEvidence(name, tup(s), tup(c), slope, UNBOUNDED, float("inf"),
                              f"slope {slope:.2f} <= {unbounded_slope}; ratio grew x{growth:.3g} "
                              f"as the scale shrank x{fs[0] / fs[-1]:.3g}")  # fmt: skip
    return GrowthEvidence(name, tup(s), tup(c), slope, INSUFFICIENT, largest,
                          f"slope {slope:.2f} between {unbounded_slope} and {bounded_slope} "
                          f"(growth x{growth:.3g}): a longer or finer sweep is needed")  # fmt: skip


def combine_verdicts(*verdicts: str) -> str:
    """A conjunction of conditions: unbounded if any is, bounded if all are, else insufficient."""
    if any(v == UNBOUNDED for v in verdicts):
        return UNBOUNDED
    if all(v == BOUNDED for v in verdicts):
        return BOUNDED
    return INSUFFICIENT


def sup_ratio(values: Any, eta: float, *, min_rounds: int = 2) -> float:
    """``sup_t values[t] / eta^2`` over every recorded round (round 0 included).

    Args:
      values: ``(T,)`` per-round mismatch (or ``(T, ...)``: the sup runs over all entries).
      eta: the local step size, ``> 0``.
      min_rounds: fewest rounds accepted.

    Raises:
      ValueError: ``eta <= 0``, fewer than ``min_rounds`` rounds, non-finite values.
    """
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta: the step size must be finite and > 0, got {eta}")
    v = np.asarray(values, float)
    if v.ndim == 0 or v.shape[0] < min_rounds:
        raise ValueError(
            f"records: {0 if v.ndim == 0 else v.shape[0]} round(s) recorded; need at least "
            f"{min_rounds} to estimate a sup over rounds"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("records: contain NaN or Inf values")
    return float(np.max(v) / eta**2)


@dataclasses.dataclass(frozen=True)
class ConditionReport:
    """The weak and strong conditions on a step-size sweep (see the module docstring).

    Attributes:
      weak: evidence for ``sup_t R_w / eta^2``.
      strong_b: evidence for ``sup_t R_B / eta^2``.
      strong_a: evidence for ``sup_t R_A / eta^2``.
      weak_verdict: ``weak.verdict``.
      strong_verdict: both factor conditions combined (:func:`combine_verdicts`).
      rounds: rounds per run.
      etas: the step sizes, descending.
    """

    weak: GrowthEvidence
    strong_b: GrowthEvidence
    strong_a: GrowthEvidence
    weak_verdict: str
    strong_verdict: str
    rounds: int
    etas: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "weak": self.weak.to_dict(),
            "strong_b": self.strong_b.to_dict(),
            "strong_a": self.strong_a.to_dict(),
            "weak_verdict": self.weak_verdict,
            "strong_verdict": self.strong_verdict,
            "rounds": self.rounds,
            "etas": list(self.etas),
        }

    def table(self) -> str:
        """A table a person can read: one row per mismatch, one column per eta."""
        head = "mismatch    " + "".join(f"eta={e:<10.3g}" for e in self.etas) + "slope   verdict"
        rows = [head]
        for ev in (self.weak, self.strong_b, self.strong_a):
            rows.append(
                f"{ev.name:<12}" + "".join(f"{c:<14.4g}" for c in ev.ratios)
                + f"{ev.slope:<8.2f}{ev.verdict}"
            )  # fmt: skip
        rows.append(f"weak condition: {self.weak_verdict}; strong condition: {self.strong_verdict}")
        return "\n".join(rows)


def trajectory_conditions(
    records: Mapping[float, Mapping[str, Any]],
    *,
    weak_key: str = "weak_mismatch",
    strong_b_key: str = "strong_mismatch_b",
    strong_a_key: str = "strong_mismatch_a",
    min_rounds: int = 2,
    **rule: Any,
) -> ConditionReport:
    r"""Estimates ``sup_t R / eta^2`` per step size and decides the weak and strong conditions.

    Args:
      records: ``{eta: per-round records}``; each record is a dict of ``(T,)`` arrays as produced by
        :func:`theory.round_metrics` (stacked over rounds by the simulator or
        :func:`theory.problems.run_federated`), with the same ``T`` and local steps ``E``.
      weak_key, strong_b_key, strong_a_key: record names of ``R_w``, ``R_B``, ``R_A``.
      min_rounds: fewest rounds per run.
      **rule: forwarded to :func:`growth_verdict` (thresholds, ``min_points``, ``floor``...).

    Returns:
      :class:`ConditionReport`; a sweep too short or too narrow gives ``"insufficient evidence"``.

    Raises:
      ValueError: ``eta <= 0``, missing keys, runs shorter than ``min_rounds``, non-finite values,
        runs of different lengths.

    Example:
      >>> recs = {eta: {"weak_mismatch": np.full(3, eta**2), "strong_mismatch_b": np.full(3, eta**2),
      ...               "strong_mismatch_a": np.ones(3)} for eta in (0.1, 0.03, 0.01)}
      >>> trajectory_conditions(recs).strong_verdict
      'unbounded'

    References:
      Chen et al., arXiv:2508.01348 (our formalization of the weak and strong conditions).
    """
    if not records:
        raise ValueError("records: empty; give {eta: per-round records} for at least one eta")
    runs = sorted(((float(e), rec) for e, rec in records.items()), key=lambda x: -x[0])
    etas = [eta for eta, _ in runs]
    lengths = set()
    ratios: dict[str, list[float]] = {weak_key: [], strong_b_key: [], strong_a_key: []}
    for eta, rec in runs:
        for key in ratios:
            if key not in rec:
                raise ValueError(f"records[{eta}]: missing {key!r}; have {sorted(rec)}")
            v = np.asarray(rec[key])
            lengths.add(v.shape[0] if v.ndim else 0)
            ratios[key].append(sup_ratio(v, eta, min_rounds=min_rounds))
    if len(lengths) > 1:
        raise ValueError(f"records: runs have different numbers of rounds {sorted(lengths)}")
    weak = growth_verdict("R_w", etas, ratios[weak_key], **rule)
    sb = growth_verdict("R_B", etas, ratios[strong_b_key], **rule)
    sa = growth_verdict("R_A", etas, ratios[strong_a_key], **rule)
    return ConditionReport(
        weak=weak,
        strong_b=sb,
        strong_a=sa,
        weak_verdict=weak.verdict,
        strong_verdict=combine_verdicts(sb.verdict, sa.verdict),
        rounds=int(lengths.pop()),
        etas=tuple(etas),
    )
