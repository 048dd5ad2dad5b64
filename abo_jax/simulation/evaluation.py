"""Evaluation of a federated state: the global model, or every client's own (personalized).

Reference: Chen et al., arXiv:2508.01348 (the paper evaluates the global model on the full test set
after every round).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import weighted_sum
from abo_jax.lora import LoRAFactors, is_lora
from abo_jax.models._base import Model, Trainable
from abo_jax.simulation.client import masked_cross_entropy

__all__ = ["global_trainable", "one_start_trainable", "make_evaluate"]


def global_trainable(clients: Trainable, weights: jax.Array, lora_scale: jax.Array) -> Trainable:
    """The global model of a round: the weighted mean of the clients' trainable trees, scale folded.

    ``B = sum_i p_i s_i B_i``, ``A = sum_i p_i A_i`` (apply with scale 1), dense leaves
    ``sum_i p_i W_i``. For a global operator (identical broadcast, equal scales) this is exactly the
    broadcast model; for personalized operators (FedSA-LoRA) it is the mean of the personal factors.

    Args:
      clients: ``Trainable`` with a leading client axis ``m``.
      weights: ``(m,)``.
      lora_scale: ``(m,)``.
    """

    def one(x):
        if is_lora(x):
            ws = (weights * lora_scale).astype(x.b.dtype)
            return LoRAFactors(
                b=jnp.einsum("c,c...->...", ws, x.b),
                a=jnp.einsum("c,c...->...", weights.astype(x.a.dtype), x.a),
            )
        return jnp.einsum("c,c...->...", weights.astype(x.dtype), x)

    return Trainable(
        lora=jax.tree.map(one, clients.lora, is_leaf=is_lora),
        extra=weighted_sum(clients.extra, weights),
    )


def one_start_trainable(start: Trainable, weights: jax.Array, lora_scale: jax.Array) -> Trainable:
    """:func:`global_trainable` of ``m`` clients that all hold ``start`` (no client axis).

    ``B = (sum_i p_i s_i) B``, ``A = (sum_i p_i) A``, dense leaves ``(sum_i p_i) W``: the same
    model, without forming the ``m`` copies.
    """
    ws, w = jnp.sum(weights * lora_scale), jnp.sum(weights)

    def one(x):
        if is_lora(x):
            return LoRAFactors(b=ws.astype(x.b.dtype) * x.b, a=w.astype(x.a.dtype) * x.a)
        return w.astype(x.dtype) * x

    return Trainable(
        lora=jax.tree.map(one, start.lora, is_leaf=is_lora),
        extra=jax.tree.map(one, start.extra),
    )


def make_evaluate(model: Model, *, personalized: bool = False, one_start: bool = False) -> Callable:
    """``evaluate(state, x (n, ...), y (n,), inputs=None) -> {"accuracy": (), "loss": ()}``.

    ``personalized=False``: the model of :func:`global_trainable` on the test set. ``True``: every
    client's own broadcast model, accuracy and loss averaged with the weights ``p``. ``inputs`` is
    ``model.prepare(state.frozen, x)`` when the caller has it (else it is recomputed).
    ``one_start``: ``state.clients`` is the one start every client shares (no client axis), as the
    round keeps it for an operator with ``traits.one_start``.
    """

    def evaluate(state, x, y, inputs=None):
        if inputs is None:
            inputs = model.prepare(state.frozen, x)
        if not personalized:
            mean = one_start_trainable if one_start else global_trainable
            trainable = mean(state.clients, state.weights, state.lora_scale)
            logits = model.apply(state.frozen, trainable, inputs, 1.0)
            loss = masked_cross_entropy(logits, y, jnp.ones(y.shape, bool))
            acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(loss.dtype))
            return {"accuracy": acc, "loss": loss}

        def one_client(trainable, scale):
            logits = model.apply(state.frozen, trainable, inputs, scale)
            loss = masked_cross_entropy(logits, y, jnp.ones(y.shape, bool))
            return jnp.mean((jnp.argmax(logits, -1) == y).astype(loss.dtype)), loss

        acc, loss = jax.vmap(one_client, in_axes=(None if one_start else 0, 0))(
            state.clients, state.lora_scale
        )
        w = state.weights.astype(loss.dtype)
        return {"accuracy": jnp.sum(w * acc), "loss": jnp.sum(w * loss)}

    return evaluate
