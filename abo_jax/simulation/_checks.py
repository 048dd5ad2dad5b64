"""Argument checks of the simulator with messages that say what was wrong and what to do.

``check_key`` turns what a user may pass as a PRNG key into typed keys (or refuses it by name);
``check_metrics`` checks what a ``metrics_fn`` returned. Both work on tracers (under ``jit``): they
look at types, shapes and dtypes only.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_key", "check_metrics"]


def _describe(x: Any) -> str:
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        return f"an array of dtype {x.dtype} and shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:120]


def check_key(key: Any, num_runs: int | None = None, *, name: str = "key") -> jax.Array:
    """``key`` as typed PRNG key(s): ``()`` when ``num_runs`` is None, else ``()`` or ``(S,)``.

    Accepted: a typed key (``jax.random.key(seed)``), ``(S,)`` typed keys with ``num_runs = S``,
    and legacy raw keys (``jax.random.PRNGKey(seed)``: ``uint32`` arrays of shape ``(2,)`` or
    ``(S, 2)``), which are wrapped with :func:`jax.random.wrap_key_data` (the default
    implementation, threefry) into the same stream.

    Args:
      key: what the caller passed.
      num_runs: ``None`` (one run) or the size of the run axis ``S``.
      name: the argument's name in messages.

    Returns:
      A typed key of shape ``()`` or ``(num_runs,)``.

    Raises:
      TypeError: ``None``, an integer seed, a string or a non-key array, with the call to use.
      ValueError: a key array of the wrong shape for ``num_runs``.
    """
    runs = "one key" if num_runs is None else f"one key or ({num_runs},) keys"
    if key is None:
        raise TypeError(
            f"{name}: got None; pass a PRNG key, e.g. {name}=jax.random.key(0) "
            f"(this simulation takes {runs})"
        )
    if isinstance(key, (bool, np.bool_)) or isinstance(key, (numbers.Integral, np.integer)):
        raise TypeError(
            f"{name}: got the integer {int(key)}, a seed, not a key; pass "
            f"{name}=jax.random.key({int(key)})"
        )
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"{name}: expected a PRNG key (jax.random.key(seed)), got {_describe(key)}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        typed = key
    elif key.dtype == jnp.uint32 and key.ndim in (1, 2) and key.shape[-1] == 2:
        typed = jax.random.wrap_key_data(key)  # a legacy jax.random.PRNGKey
    elif jnp.issubdtype(key.dtype, jnp.integer) and key.ndim == 0:
        raise TypeError(
            f"{name}: got an integer array, a seed, not a key; pass {name}=jax.random.key(seed)"
        )
    else:
        raise TypeError(
            f"{name}: expected a PRNG key (jax.random.key(seed)) or a legacy uint32 (2,) key "
            f"(jax.random.PRNGKey(seed)), got {_describe(key)}"
        )
    if num_runs is None:
        if typed.ndim != 0:
            raise ValueError(
                f"{name}: expected one PRNG key (num_runs is None), got keys of shape "
                f"{tuple(typed.shape)}; pass one key, or make_simulation(..., num_runs="
                f"{typed.shape[0] if typed.ndim == 1 else '...'})"
            )
        return typed
    if typed.ndim == 0 or typed.shape == (int(num_runs),):
        return typed
    raise ValueError(
        f"{name}: expected {runs} (num_runs={num_runs}), got keys of shape {tuple(typed.shape)}; "
        f"e.g. jax.random.split(jax.random.key(0), {num_runs})"
    )


def check_metrics(
    out: Any, *, reserved: Collection[str] = (), name: str = "metrics_fn"
) -> dict[str, Any]:
    """What ``metrics_fn(clients, weights, broadcast)`` returned, checked: a dict of arrays.

    Args:
      out: the returned value.
      reserved: built-in metric names it must not reuse.
      name: the function's name in messages.

    Returns:
      ``dict(out)``.

    Raises:
      TypeError: ``out`` is not a mapping, has non-string names, or holds values that are not
        numeric arrays (or pytrees of them).
      ValueError: a name clashes with a built-in metric.
    """
    if out is None:
        raise TypeError(
            f"{name} returned None; it must return a dict of arrays, e.g. "
            "{'update_norm': jnp.sum(...)} (a missing return statement?)"
        )
    if not isinstance(out, Mapping):
        raise TypeError(
            f"{name} must return a dict of arrays (name -> array), got {type(out).__name__}"
            + (f" {out!r}"[:80] if isinstance(out, (str, bytes, numbers.Number)) else "")
        )
    bad_names = [k for k in out if not isinstance(k, str)]
    if bad_names:
        raise TypeError(f"{name}: metric names must be strings, got {bad_names[:3]!r}")
    for k, v in out.items():
        for leaf in jax.tree.leaves(v, is_leaf=lambda x: x is None):
            ok = hasattr(leaf, "dtype") and hasattr(leaf, "shape")
            ok = ok or isinstance(leaf, (numbers.Number, np.generic))
            if not ok or (
                hasattr(leaf, "dtype")
                and not jnp.issubdtype(leaf.dtype, jnp.number)
                and leaf.dtype != jnp.bool_
            ):
                raise TypeError(
                    f"{name}: metric {k!r} must be a numeric array (or a pytree of them), "
                    f"got {_describe(leaf)}"
                )
    clash = sorted(set(out) & set(reserved))
    if clash:
        raise ValueError(
            f"{name}: names {clash} clash with built-in metrics; rename them (e.g. 'my/{clash[0]}')"
        )
    return dict(out)
