"""Convergence theory of aggregation-broadcast operators (ABOs) as code.

This is **our formalization** of the convergence conditions of Chen et al., *Convergence Analysis of
Aggregation-Broadcast in LoRA-enabled Federated Learning*, arXiv:2508.01348 (DESIGN.md, "Convergence
theory as code"). The paper's theorems are not quoted: the definitions, identities, decision rules
and the rate-bound derivation here are ours, and each docstring states them.

* :mod:`theory.functionals`: ``R_w``, ``R_B``, ``R_A``, their optima, the SP tail, the PS error,
  factor norms, the strong-to-weak bound, and :func:`round_metrics` for the simulator's hook.
* :mod:`theory.conditions`: the weak/strong conditions decided on recorded ``eta`` sweeps.
* :mod:`theory.bounds`: the rate bounds evaluated on a run (our derivation).
* :mod:`theory.certify`: identities and conditions of any operator, without a training run
  (also ``python -m theory certify NAME``).
* :mod:`theory.problems`: small smooth federated LoRA problems and a self-contained trainer.
* :mod:`theory.strategies`: Hypothesis strategies for users' own property tests.
"""

from theory import bounds, conditions, functionals, problems, strategies
from theory.bounds import RateBoundReport, hessian_norm, rate_bounds
from theory.certify import (
    CertifyReport,
    ConditionCheck,
    IdentityCheck,
    available_operators,
    certify,
    check_identities,
    first_client_only,
    resolve_operator,
)
from theory.conditions import (
    ConditionReport,
    GrowthEvidence,
    combine_verdicts,
    growth_verdict,
    sup_ratio,
    trajectory_conditions,
)
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
    "IdentityCheck",
    "available_operators",
    "certify",
    "check_identities",
    "first_client_only",
    "resolve_operator",
    "bounds",
    "conditions",
    "functionals",
    "problems",
    "strategies",
]
