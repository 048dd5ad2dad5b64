"""The run loop: rounds, periodic evaluation, progress bar, history, checkpoint and resume."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from abo_jax.data.client_data import ClientData
from abo_jax.simulation.checkpoint import load_checkpoint, save_checkpoint
from abo_jax.simulation.round import SimState, Simulation

__all__ = ["run"]


def _stack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not records:
        return {}
    return {name: np.stack([np.asarray(r[name]) for r in records]) for name in records[0]}


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
) -> tuple[dict[str, np.ndarray], SimState]:
    """Runs ``rounds`` federated rounds and records the history.

    The global model (see ``eval_mode`` of :func:`make_simulation`) is evaluated on ``test`` after
    every ``eval_every``-th round and after the last one. With ``checkpoint_path`` the run state
    (round index, frozen base, client start points, ABO state, optimizer state, PRNG key,
    hyper-parameters) and the history are written atomically every ``checkpoint_every`` rounds and
    at the end; a run started with an existing checkpoint resumes from it and ends with the same
    numbers as an uninterrupted run with the same seed.

    Args:
      sim: from :func:`make_simulation`.
      data: the clients' :class:`~abo_jax.data.ClientData`.
      test: ``(x (n, ...), y (n,))`` test set.
      rounds: total number of rounds (including rounds done before a resume).
      key: PRNG key (``(S,)`` keys or one key with ``num_runs``).
      weights, hparams, lora_scale: passed to ``sim.init``.
      eval_every: evaluate every this many rounds (``>= 1``).
      progress: show a tqdm progress bar.
      desc: progress bar label.
      checkpoint_path: checkpoint file (resumed from when it exists).
      checkpoint_every: rounds between checkpoints (default: only at the end).
      callback: ``fn(round, state, record)`` after each round (and its checkpoint), e.g. to stop
        early by raising. With ``make_simulation(..., donate_state=True)`` the next round deletes
        that ``state``'s buffers: copy (``jax.device_get``) what you keep.

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

    state = sim.init(key, data, weights=weights, hparams=hparams, lora_scale=lora_scale)
    records: list[dict[str, Any]] = []
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state, saved, _ = load_checkpoint(checkpoint_path, state)
        records = list(saved or [])
    start = len(records)
    data = sim.shard(data, "data")
    state = sim.shard(state, "state")
    inputs = sim.shard(sim.prepare(state, data), "inputs")
    # the test set's per-example cache, once per run when the base does not move
    test_inputs = None if sim.prepare_test is None else sim.prepare_test(state, x_test)

    def checkpoint(state):
        save_checkpoint(checkpoint_path, state, history=records)

    bar = tqdm(total=int(rounds), initial=start, disable=not progress, desc=desc, leave=False)
    try:
        for r in range(start + 1, int(rounds) + 1):
            state, metrics = sim.round(state, data, inputs)
            record = {"round": np.asarray(r), **jax.device_get(metrics)}
            if r % eval_every == 0 or r == rounds:
                ev = jax.device_get(sim.evaluate(state, x_test, y_test, test_inputs))
                record["test_accuracy"] = np.asarray(ev["accuracy"])
                record["test_loss"] = np.asarray(ev["loss"])
                bar.set_postfix(acc=f"{np.mean(ev['accuracy']):.4f}", refresh=False)
            else:
                nan = np.full(np.shape(record["train_loss"]), np.nan)
                record["test_accuracy"], record["test_loss"] = nan, nan
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
