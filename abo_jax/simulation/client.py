"""Local training of ONE client: epochs of masked minibatch steps with any optax optimizer.

The simulator gets every client at once with ``jax.vmap`` (frozen base broadcast with
``in_axes=None``); nothing here mentions the client axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from abo_jax.data._padding import epoch_batches
from abo_jax.lora import LoRAFactors, is_lora
from abo_jax.models._base import Model, Trainable

__all__ = [
    "ClientUpdate",
    "client_update",
    "paper_sgd",
    "masked_cross_entropy",
    "lora_train_mask",
]


class ClientUpdate(NamedTuple):
    """The result of one client's local training."""

    trainable: Trainable  # the client's trained parameters (same tree as its start)
    opt_state: Any  # the optimizer state after the last step
    train_loss: jax.Array  # () mean minibatch loss over the non-empty steps (0 if none)
    num_steps: jax.Array  # () int32 number of non-empty steps taken


def paper_sgd(
    learning_rate: float | jax.Array = 0.01,
    momentum: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 1e-4,
) -> optax.GradientTransformation:
    """The paper's local optimizer: SGD with momentum and L2 weight decay (PyTorch semantics).

    PyTorch ``SGD(lr, momentum, weight_decay)`` adds ``wd * w`` to the gradient, then keeps
    ``buf = momentum * buf + g`` and steps ``w -= lr * buf``; ``optax.chain(add_decayed_weights,
    sgd(momentum))`` is the same recursion. Every argument may be a traced scalar (so a learning
    rate can vary along a vmapped axis of runs).

    References:
      Chen et al., arXiv:2508.01348 (lr 0.01, momentum 0.9, weight decay 1e-4, batch 64).
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum),
    )


def lora_train_mask(lora: Any, *, b: bool | jax.Array = True, a: bool | jax.Array = True) -> Any:
    """A trainable mask for a LoRA tree: which factors move during local training.

    Args:
      lora: a LoRA tree (``LoRAFactors`` nodes; dense leaves are left trainable).
      b: train the ``B`` factors (scalar bool, may be traced).
      a: train the ``A`` factors (False for FFA-LoRA; alternate with ``b`` for RoLoRA).

    Returns:
      A tree like ``lora`` with scalar bool leaves (``LoRAFactors(b=..., a=...)`` per layer).

    Example:
      >>> lora = {"w": LoRAFactors(jnp.zeros((4, 2)), jnp.ones((2, 3)))}
      >>> lora_train_mask(lora, a=False)["w"].a
      Array(False, dtype=bool)
    """

    def one(x):
        if is_lora(x):
            return LoRAFactors(b=jnp.asarray(b, bool), a=jnp.asarray(a, bool))
        return jnp.asarray(True)

    return jax.tree.map(one, lora, is_leaf=is_lora)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the valid rows of a batch (0 for an empty batch).

    Args:
      logits: ``(b, classes)``.
      labels: ``(b,)`` int.
      mask: ``(b,)`` bool.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = mask.astype(losses.dtype)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _apply_mask(tree: Trainable, trainable_mask: Any) -> Trainable:
    if trainable_mask is None:
        return tree
    lora = jax.tree.map(lambda u, keep: u * jnp.asarray(keep, u.dtype), tree.lora, trainable_mask)
    return tree._replace(lora=lora)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def client_update(
    model: Model,
    optimizer: optax.GradientTransformation,
    frozen: Any,
    trainable: Trainable,
    inputs: Any,
    labels: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    local_epochs: int = 1,
    batch_size: int = 64,
    lora_scale: float | jax.Array = 1.0,
    trainable_mask: Any = None,
    opt_state: Any = None,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    batches_fn: Callable[..., tuple[jax.Array, jax.Array]] = epoch_batches,
) -> ClientUpdate:
    """Local epochs of masked minibatch steps for ONE client (``jax.vmap`` it over clients).

    Each epoch reshuffles the client's valid rows with ``fold_in(key, epoch)``; a fully-masked
    batch changes neither the parameters nor the optimizer state (momentum included). Only
    ``trainable`` is differentiated.

    Args:
      model: the :class:`~abo_jax.models.Model`.
      optimizer: any optax transformation (e.g. :func:`paper_sgd`).
      frozen: frozen base parameters (shared by all clients).
      trainable: this client's starting :class:`~abo_jax.models.Trainable`.
      inputs: ``model.prepare(frozen, x)`` for this client: leaves ``(n_max, ...)``.
      labels: ``(n_max,)`` int.
      mask: ``(n_max,)`` bool, True for real rows.
      key: this client's PRNG key for the round.
      local_epochs: passes over the client's data (``E``).
      batch_size: rows per step.
      lora_scale: this client's LoRA scale ``s`` (e.g. ``alpha / r_i``).
      trainable_mask: ``None`` (train all) or a tree like ``trainable.lora`` with scalar leaves
        (see :func:`lora_train_mask`); masked factors keep their values (gradients and updates are
        zeroed, so neither momentum nor weight decay moves them). ``extra`` is always trained.
      opt_state: optimizer state to continue from; ``None`` starts fresh (``optimizer.init``).
      loss_fn: ``(logits, labels, mask) -> scalar``.
      batches_fn: ``(key, mask, batch_size) -> (idx (nb, bs), valid (nb, bs))``, by default
        :func:`abo_jax.data.epoch_batches` (valid rows first in random order, then padding).

    Returns:
      A :class:`ClientUpdate`.
    """
    if local_epochs <= 0:
        raise ValueError(f"local_epochs must be positive, got {local_epochs}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if opt_state is None:
        opt_state = optimizer.init(trainable)

    def objective(params, batch_inputs, batch_labels, batch_mask):
        logits = model.apply(frozen, params, batch_inputs, lora_scale)
        return loss_fn(logits, batch_labels, batch_mask)

    grad_fn = jax.value_and_grad(objective)

    def step(carry, batch):
        params, state = carry
        idx, valid = batch
        batch_inputs = jax.tree.map(lambda v: v[idx], inputs)
        loss, grads = grad_fn(params, batch_inputs, labels[idx], valid)
        grads = _apply_mask(grads, trainable_mask)
        updates, new_state = optimizer.update(grads, state, params)
        updates = _apply_mask(updates, trainable_mask)
        new_params = optax.apply_updates(params, updates)
        nonempty = jnp.any(valid)
        params, state = _select(nonempty, (new_params, new_state), (params, state))
        return (params, state), (loss, nonempty)

    def epoch(carry, e):
        idx, valid = batches_fn(jax.random.fold_in(key, e), mask, batch_size)
        return jax.lax.scan(step, carry, (idx, valid))

    (params, opt_state), (losses, nonempty) = jax.lax.scan(
        epoch, (trainable, opt_state), jnp.arange(local_epochs)
    )
    count = jnp.sum(nonempty)
    mean_loss = jnp.sum(jnp.where(nonempty, losses, 0.0)) / jnp.maximum(count, 1)
    return ClientUpdate(params, opt_state, mean_loss, count.astype(jnp.int32))
