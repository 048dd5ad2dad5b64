"""Convergence theory of aggregation-broadcast operators (ABOs) as code.

This is **our formalization** of the convergence conditions of Chen et al., *Convergence Analysis of
Aggregation-Broadcast in LoRA-enabled Federated Learning*, arXiv:2508.01348 (DESIGN.md, "Convergence
theory as code"). The paper's theorems are not quoted: the definitions, identities, decision rules
and the rate-bound derivation here are ours, and each docstring states them.

* :mod:`theory.functionals`: ``R_w``, ``R_B``, ``R_A``, their optima, the SP tail, the PS error,
  factor norms, the strong-to-weak bound, and :func:`round_metrics` for the simulator's hook.
* :mod:`theory.conditions`: the weak/strong conditions decided on recorded ``eta`` sweeps.
* :mod:`theory.bounds`: the rate bounds evaluated on a run (our derivation).
* :mod:`theory.consistency`: first-order consistency at consensus points (fixed point, the
  derivative of the broadcast product against the weighted mean of the clients'), the exact
  limiting constants of the conditions by linearization, and what consistency adds to the rate
  bound (our derivation).
* :mod:`theory.certify`: identities, weak and strong conditions (two-sided constants) and
  consistency of any operator, without a training run (also ``python -m theory certify NAME``).
* :mod:`theory.problems`: small smooth federated LoRA problems and a self-contained trainer.
* :mod:`theory.strategies`: Hypothesis strategies for users' own property tests.
"""

from theory import bounds, conditions, consistency, functionals, problems, strategies
from theory.bounds import RateBoundReport, hessian_norm, rate_bounds
from theory.certify import (
    CertifyReport,
    ConditionCheck,
    ConsistencyCheck,
    IdentityCheck,
    available_operators,
    certify,
    check_consistency,
    check_identities,
    resolve_operator,
    with_client_ranks,
)
from theory.conditions import (
    ConditionReport,
    GrowthEvidence,
    combine_verdicts,
    growth_verdict,
    sup_ratio,
    trajectory_conditions,
)
from theory.consistency import consistency_at, consistency_rate, mean_operator_defect
from theory.functionals import *

__all__ = [
    *functionals.__all__,
    "ConditionReport",
    "GrowthEvidence",
    "combine_verdicts",
    "growth_verdict",
    "sup_ratio",
    "trajectory_conditions",
    "RateBoundReport",
    "hessian_norm",
    "rate_bounds",
    "CertifyReport",
    "ConditionCheck",
    "ConsistencyCheck",
    "IdentityCheck",
    "available_operators",
    "certify",
    "check_consistency",
    "check_identities",
    "resolve_operator",
    "with_client_ranks",
    "consistency_at",
    "consistency_rate",
    "mean_operator_defect",
    "bounds",
    "conditions",
    "consistency",
    "functionals",
    "problems",
    "strategies",
]
