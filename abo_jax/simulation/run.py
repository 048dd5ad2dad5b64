"""The run loop: rounds, periodic evaluation, progress bar, history, checkpoint and resume."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from abo_jax.data.client_data import ClientData
from abo_jax.distributed import fetch, is_primary
from abo_jax.simulation._checks import check_key
from abo_jax.simulation.checkpoint import (
    CheckpointError,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from abo_jax.simulation.round import SimState, Simulation

__all__ = ["run", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """The model turned non-finite (``run(..., stop_on_nonfinite=True)``); names the round."""

    def __init__(self, round_: int, message: str):
        self.round = int(round_)
        super().__init__(message)


def _nonfinite(record: dict[str, Any]) -> list[str]:
    """The losses of a round's record that are not finite, as ``"name (runs [...])"``."""
    out = []
    for name in ("train_loss", "test_loss"):
        value = np.asarray(record.get(name, 0.0), float)
        if name == "test_loss" and np.isnan(value).all() and "test_accuracy" in record:
            acc = np.asarray(record["test_accuracy"], float)
            if np.isnan(acc).all():
                continue  # not evaluated this round
        bad = ~np.isfinite(value)
        if bad.any():
            runs = f" (runs {np.flatnonzero(bad).tolist()})" if value.ndim else ""
            out.append(f"{name} = {value[bad].ravel()[0]}{runs}")
    return out


def _stack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not records:
        return {}
    return {name: np.stack([np.asarray(r[name]) for r in records]) for name in records[0]}


def round_function(sim: Any) -> Any:
    """The jitted round of a :class:`~abo_jax.FederatedRound` (``apply``) or a ``Simulation``."""
    return sim.apply if hasattr(sim, "apply") else sim.round


def run(
    sim: Simulation,
    data: ClientData,
    test: tuple[Any, Any],
    *,
    rounds: int,
    key: jax.Array,
    weights: Any = None,
    hparams: Any = None,
    lora_scale: Any = None,
    eval_every: int = 1,
    progress: bool = True,
    desc: str | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callback: Callable[[int, SimState, dict[str, Any]], None] | None = None,
    fingerprint: Any = None,
    checkpoint_overwrite: bool = False,
    stop_on_nonfinite: bool = False,
) -> tuple[dict[str, np.ndarray], SimState]:
    """Runs ``rounds`` federated rounds and records the history.

    The global model (see ``eval_mode`` of :func:`make_simulation`) is evaluated on ``test`` after
    every ``eval_every``-th round and after the last one. With ``checkpoint_path`` the run state
    (round index, frozen base, client start points, ABO state, optimizer state, PRNG key,
    hyper-parameters) and the history are written atomically every ``checkpoint_every`` rounds and
    at the end; a run started with an existing checkpoint resumes from it and ends with the same
    numbers as an uninterrupted run with the same seed.

    A checkpoint is resumed only if it vouches for itself (:func:`load_checkpoint`: its content
    checksum, its history's rounds ``1..state.round``) and was written by this run: its fingerprint
    (:func:`~abo_jax.simulation.checkpoint.run_fingerprint`: the state's structure, the initial
    state (seed), the data, the round's program (operator, optimizer hyper-parameters, epochs,
    batch size), ``eval_every`` and the caller's ``fingerprint``) must match, else a
    :class:`~abo_jax.simulation.checkpoint.CheckpointError` names the file and the field that
    differs, and the file is left as it was. A checkpoint holding more rounds than ``rounds`` is
    refused too (this function returns exactly ``rounds`` rounds or fails).

    Several processes (:mod:`abo_jax.distributed`, a mesh over the devices of all of them): every
    process calls ``run`` with the same arguments; the history is the same on every process,
    process 0 alone shows progress and writes the checkpoint, and every process resumes from it.

    The first round whose train or test loss is not finite triggers one ``RuntimeWarning`` naming
    the round (and the runs); with ``stop_on_nonfinite`` a :class:`NonFiniteError` is raised
    instead, before that round is checkpointed (the checkpoint keeps the last finite rounds).

    Args:
      sim: from :func:`make_simulation`.
      data: the clients' :class:`~abo_jax.data.ClientData`.
      test: ``(x (n, ...), y (n,))`` test set.
      rounds: total number of rounds (including rounds done before a resume).
      key: PRNG key (``(S,)`` keys or one key with ``num_runs``); a legacy ``uint32`` key
        (``jax.random.PRNGKey``) is wrapped into the same stream, a seed is refused with advice.
      weights, hparams, lora_scale: passed to ``sim.init``.
      eval_every: evaluate every this many rounds (``>= 1``).
      progress: show a tqdm progress bar.
      desc: progress bar label.
      checkpoint_path: checkpoint file (resumed from when it exists).
      checkpoint_every: rounds between checkpoints (default: only at the end).
      callback: ``fn(round, state, record)`` after each round (and its checkpoint), e.g. to stop
        early by raising. With ``make_simulation(..., donate_state=True)`` the next round deletes
        that ``state``'s buffers: copy (``jax.device_get``) what you keep.
      fingerprint: any JSON-able description of the run stored in the checkpoint and compared on
        resume key by key (e.g. an experiment's config dict), for what the derived fingerprint
        cannot see.
      checkpoint_overwrite: an existing checkpoint that is damaged or was written by another run is
        discarded (the run starts over and writes over it) instead of refused.
      stop_on_nonfinite: raise :class:`NonFiniteError` at the first non-finite loss.

    Returns:
      ``(history, state)``: ``history`` maps each metric to a numpy array with one row per round
      (``round``, ``test_accuracy``, ``test_loss`` (NaN where not evaluated), ``train_loss``,
      ``participants``, ``abo/...`` diagnostics, the ``metrics_fn`` outputs); a run axis follows
      the round axis with ``num_runs``.
    """
    if int(rounds) < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if int(eval_every) <= 0:
        raise ValueError(f"eval_every must be positive, got {eval_every}")
    if checkpoint_every is not None and int(checkpoint_every) <= 0:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    x_test, y_test = test
    if np.shape(x_test)[0] != np.shape(y_test)[0] or np.ndim(y_test) != 1:
        raise ValueError(
            f"test: expected x (n, ...) and y (n,), got {np.shape(x_test)} and {np.shape(y_test)}"
        )
    if np.shape(x_test)[1:] != tuple(data.x.shape[2:]):
        raise ValueError(
            f"test: examples of shape {np.shape(x_test)[1:]} differ from the clients' "
            f"{tuple(data.x.shape[2:])}"
        )

    key = check_key(key, sim.num_runs)  # a clear error for None, a seed, a wrong shape
    for where, value in jax.tree_util.tree_leaves_with_path(hparams):
        if not np.all(np.isfinite(np.asarray(value, float))):
            raise ValueError(
                f"hparams{jax.tree_util.keystr(where)}: must be finite, got {np.asarray(value)} "
                "(a NaN or infinite learning rate trains nothing)"
            )
    state = sim.init(key, data, weights=weights, hparams=hparams, lora_scale=lora_scale)
    records: list[dict[str, Any]] = []
    overwrite, fp = False, None
    if checkpoint_path is not None:
        fp = run_fingerprint(
            sim,
            state,
            data,
            test,
            options={"loop": "abo_jax.run", "eval_every": int(eval_every)},
            user=fingerprint,
        )
    if checkpoint_path is not None and os.path.lexists(checkpoint_path):
        try:
            state, saved, _ = load_checkpoint(checkpoint_path, state, fingerprint=fp)
        except CheckpointError as err:
            if not checkpoint_overwrite:
                raise
            warnings.warn(f"{err}; starting over (checkpoint_overwrite=True)", stacklevel=2)
            overwrite = True
        else:
            records = list(saved or [])
            if len(records) > int(rounds):
                raise CheckpointError(
                    checkpoint_path,
                    f"holds {len(records)} rounds, more than rounds={rounds}: ask for at least "
                    f"{len(records)} rounds, or use another checkpoint path",
                )
    start = len(records)
    data = sim.shard(data, "data")
    state = sim.shard(state, "state")
    inputs = sim.shard(sim.prepare(state, data), "inputs")
    # the test set's per-example cache, once per run when the base does not move
    x_test, y_test = sim.shard((x_test, y_test), "test")
    test_inputs = None if sim.prepare_test is None else sim.prepare_test(state, x_test)

    def checkpoint(state):
        nonlocal overwrite
        save_checkpoint(
            checkpoint_path, state, history=records, fingerprint=fp, overwrite=overwrite
        )
        overwrite = False  # from now on the file is this run's

    step = round_function(sim)
    bar = tqdm(
        total=int(rounds),
        initial=start,
        disable=not (progress and is_primary()),
        desc=desc,
        leave=False,
    )
    warned = any(_nonfinite(rec) for rec in records)  # warned when those rounds ran
    try:
        for r in range(start + 1, int(rounds) + 1):
            state, metrics = step(state, data, inputs)
            record = {"round": np.asarray(r), **fetch(metrics)}
            if r % eval_every == 0 or r == rounds:
                ev = fetch(sim.evaluate(state, x_test, y_test, test_inputs))
                record["test_accuracy"] = np.asarray(ev["accuracy"])
                record["test_loss"] = np.asarray(ev["loss"])
                bar.set_postfix(acc=f"{np.mean(ev['accuracy']):.4f}", refresh=False)
            else:
                nan = np.full(np.shape(record["train_loss"]), np.nan)
                record["test_accuracy"], record["test_loss"] = nan, nan
            bad = _nonfinite(record)
            if bad and (stop_on_nonfinite or not warned):
                warned = True
                message = (
                    f"abo_jax.run: the model turned non-finite at round {r} ({', '.join(bad)}); "
                    "a diverging learning rate, non-finite data or weights?"
                )
                if stop_on_nonfinite:
                    raise NonFiniteError(r, message + " Stopped (stop_on_nonfinite=True)")
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            records.append(record)
            bar.update(1)
            if checkpoint_path is not None and (
                (checkpoint_every is not None and r % int(checkpoint_every) == 0) or r == rounds
            ):
                checkpoint(state)
            if callback is not None:
                callback(r, state, record)
    finally:
        bar.close()
    return _stack(records), state
