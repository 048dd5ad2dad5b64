"""Atomic checkpoints of a run: write a temporary file in the same directory, then ``os.replace``."""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = "abo_jax.checkpoint/1"


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(jax.random.key_data(x) if _is_key(x) else x))


def save_checkpoint(path: str | os.PathLike, state: Any, *, history: Any = None, extra=None):
    """Writes ``state`` (any pytree, typed PRNG keys included) and ``history`` atomically.

    A reader sees either the previous checkpoint or the new one, never a partial file: the data go
    to a temporary file in the same directory, are flushed to disk, and replace ``path`` with
    ``os.replace``.

    Args:
      path: the checkpoint file.
      state: the run state pytree (e.g. a :class:`~abo_jax.simulation.SimState`).
      history: a picklable record (e.g. a dict of lists of numpy arrays).
      extra: any small picklable metadata.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    leaves = [_to_host(x) for x in jax.tree.leaves(state)]
    payload = {"format": _FORMAT, "leaves": leaves, "history": history, "extra": extra}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, Any, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` into the structure of ``template``.

    Args:
      path: the checkpoint file.
      template: a pytree with the same structure, shapes and dtypes (e.g. a freshly initialized
        state); its typed PRNG keys give the key implementation.

    Returns:
      ``(state, history, extra)``.

    Raises:
      ValueError: the file is not a checkpoint or does not match ``template``.
    """
    with open(path, "rb") as f:
        payload = pickle.load(f)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not an abo_jax checkpoint")
    leaves, treedef = jax.tree.flatten(template)
    saved = payload["leaves"]
    if len(saved) != len(leaves):
        raise ValueError(
            f"{path}: checkpoint has {len(saved)} arrays, the run state has {len(leaves)} "
            "(different model, operator or options?)"
        )
    out = []
    for i, (x, t) in enumerate(zip(saved, leaves, strict=True)):
        if _is_key(t):
            expected = jax.random.key_data(t)
            if x.shape != expected.shape:
                raise ValueError(f"{path}: key #{i} has shape {x.shape}, expected {expected.shape}")
            out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)))
            continue
        if x.shape != np.shape(t) or x.dtype != np.dtype(t.dtype):
            raise ValueError(
                f"{path}: array #{i} is {x.dtype}{list(x.shape)}, the run state expects "
                f"{np.dtype(t.dtype)}{list(np.shape(t))} (different model, operator or options?)"
            )
        out.append(jnp.asarray(x))
    return jax.tree.unflatten(treedef, out), payload["history"], payload["extra"]
