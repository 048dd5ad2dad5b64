"""A PyTorch federated LoRA round written the way such code usually is (comparison baseline only).

A loop over clients; for each client the global LoRA state is loaded into the local model, a fresh
``torch.optim.SGD`` is built, and the client trains eagerly minibatch by minibatch
(``zero_grad / forward / backward / step``); the server then averages the factors (PS) and the biases
with ``p_i``. Same MLP, shapes, LoRA init, loss and optimizer as :mod:`experiments.bench.workload`.

torch is an optional benchmark dependency (``pip install 'abo-jax[bench]'``, ``torch==2.13.0`` CPU);
abo_jax never imports it. :func:`import_torch` imports it lazily and raises a clear error when it is
missing.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from experiments.bench.workload import Problem, RoundSpec


class TorchMissingError(RuntimeError):
    """torch is not installed (it is only needed by the PyTorch comparison)."""


def import_torch():
    """Imports torch lazily, with an actionable message when it is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TorchMissingError(
            "the PyTorch comparison needs torch (optional): pip install 'abo-jax[bench]' "
            "(torch==2.13.0, CPU build)"
        ) from e


def build_model(spec: RoundSpec, problem: Problem):
    """The LoRA MLP as a torch module, frozen base copied from ``problem`` (peft orientation)."""
    torch = import_torch()
    nn = torch.nn

    class LoRALinear(nn.Module):
        def __init__(self, w0, a, b, bias):
            super().__init__()
            self.weight = nn.Parameter(torch.as_tensor(np.array(w0)), requires_grad=False)
            self.lora_A = nn.Parameter(torch.as_tensor(np.array(a)))  # (r, k)
            self.lora_B = nn.Parameter(torch.as_tensor(np.array(b)))  # (d, r)
            self.bias = nn.Parameter(torch.as_tensor(np.array(bias)))

        def forward(self, x):
            return x @ self.weight.T + (x @ self.lora_A.T) @ self.lora_B.T + self.bias

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(
                LoRALinear(w0, f.a, f.b, bias)
                for w0, f, bias in zip(
                    problem.base,
                    problem.trainable["lora"],
                    problem.trainable["bias"],
                    strict=True,
                )
            )

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = torch.relu(x)
            return x

    return MLP()


def trainable_state(model) -> dict[str, Any]:
    """The LoRA factors and biases (what a client uploads), detached copies."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def make_round(spec: RoundSpec, problem: Problem, *, shuffle: bool = True, seed: int = 0):
    """Returns ``(round_fn, global_state)``; ``round_fn(global_state) -> new global_state``."""
    torch = import_torch()
    functional = torch.nn.functional
    model = build_model(spec, problem)
    xs = [torch.as_tensor(np.array(x)) for x in problem.x]
    ys = [torch.as_tensor(np.array(y)).long() for y in problem.y]
    weights = [float(w) for w in np.asarray(problem.weights)]
    generator = torch.Generator().manual_seed(seed)

    def round_fn(global_state):
        uploads = []
        for x, y in zip(xs, ys, strict=True):
            with torch.no_grad():  # load the broadcast into the local model
                for name, p in model.named_parameters():
                    if p.requires_grad:
                        p.copy_(global_state[name])
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(
                params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
            )
            for _ in range(spec.epochs):
                n = x.shape[0]
                perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
                for s in range(spec.steps_per_epoch):
                    idx = perm[s * spec.batch : (s + 1) * spec.batch]
                    opt.zero_grad()
                    loss = functional.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
            uploads.append(trainable_state(model))
        # Server: PS (average B and A separately) and average biases, weights p_i.
        return {
            name: sum(w * u[name] for w, u in zip(weights, uploads, strict=True))
            for name in uploads[0]
        }

    return round_fn, trainable_state(model)


def to_numpy_tree(state: dict, n_layers: int) -> dict:
    """``{"lora": ((b, a), ...), "bias": (...)}`` as numpy, for comparing with the JAX round."""
    return {
        "lora": tuple(
            (
                state[f"layers.{i}.lora_B"].numpy(),
                state[f"layers.{i}.lora_A"].numpy(),
            )
            for i in range(n_layers)
        ),
        "bias": tuple(state[f"layers.{i}.bias"].numpy() for i in range(n_layers)),
    }
