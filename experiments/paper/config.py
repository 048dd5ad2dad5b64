"""Config of the paper's rank-ratio x local-epoch grid (DESIGN.md, "The paper's experiment")."""

from __future__ import annotations

import dataclasses

__all__ = ["PaperConfig", "get_config", "get_quick_config", "get_demo_config"]


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    """The paper's Figure-1 grid; every field can be overridden on the command line."""

    datasets: tuple[str, ...] = ("fashion_mnist",)
    data_dir: str = ""  # folder with the IDX files (MNIST, KMNIST, QMNIST; Fashion-MNIST default)
    operators: tuple[str, ...] = ("sp", "ps")
    deltas: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07)
    epochs: tuple[int, ...] = (1, 2, 3, 5, 10)
    base_rounds: int = 300  # rounds = round(base_rounds / E * rounds_scale), at least 1
    rounds_scale: float = 1.0
    seeds: int = 3  # seeds 0..seeds-1, trained at once on the simulator's run axis
    num_clients: int = 10
    hidden: tuple[int, ...] = (200, 200)
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_per_client: int = 0  # cap on each client's training examples (0: all)
    max_test: int = 0  # cap on test examples (0: all)
    curve_cells: str = "auto"  # cells for curves/mismatch plots: "auto" or "E:delta;E:delta"
    level: float = 0.95
    out: str = "results"
    name: str = ""  # results folder name under `out` (default: derived from the config)
    progress: bool = True
    # JAX CPU devices to train each round's clients on side by side (a divisor of num_clients is
    # used; one per core is about best: 1.35x on 2 cores); the same numbers up to float32 summation
    # order, in a results folder of its own. Command line only: it must act before JAX starts.
    host_devices: int = 1


def get_config() -> PaperConfig:
    """The paper's full grid on Fashion-MNIST (3 seeds)."""
    return PaperConfig()


def get_quick_config() -> PaperConfig:
    """A tiny grid on digits for smoke tests (seconds of training, mostly compilation)."""
    return PaperConfig(
        datasets=("digits",),
        deltas=(0.01, 0.07),
        epochs=(1, 2),
        rounds_scale=0.01,
        seeds=2,
        hidden=(32, 32),
        max_per_client=64,
        max_test=200,
    )


def get_demo_config() -> PaperConfig:
    """`make demo`: a reduced Figure-1 grid on the bundled digits, 3 seeds, a few minutes.

    Digits has ~144 training images per client, so the paper's batch of 64 gives 3 local steps per
    epoch and the grid does not train in a demo's budget (best accuracy 16-24% at 60 rounds). The
    demo keeps the paper's optimizer (lr 0.01, momentum 0.9, weight decay 1e-4) with a
    digits-sized batch of 8 (18 steps per epoch) and half the paper's rounds (150/E).
    """
    return PaperConfig(
        datasets=("digits",),
        deltas=(0.01, 0.04, 0.07),
        epochs=(1, 10),
        rounds_scale=0.5,
        batch_size=8,
        seeds=3,
    )
