"""Runnable studies built on abo_jax and theory."""
