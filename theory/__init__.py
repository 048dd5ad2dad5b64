"""Convergence theory of aggregation-broadcast operators as code.

This is **our formalization** of the convergence conditions of Chen et al., *Convergence Analysis of
Aggregation-Broadcast in LoRA-enabled Federated Learning*, arXiv:2508.01348 (DESIGN.md, "Convergence
theory as code"): the paper's theorems are not quoted; the definitions, identities, decision rules
and the rate-bound derivation here are ours and each docstring states them.
"""

from theory import functionals
from theory.functionals import *

__all__ = [*functionals.__all__]
