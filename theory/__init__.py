"""Convergence theory of aggregation-broadcast operators as code (our formalization of arXiv:2508.01348)."""
