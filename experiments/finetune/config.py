"""Config of the federated LoRA fine-tuning study: pretrained MiniLM-L6 on fortunes topics.

Every operator of abo_jax fine-tunes the same pretrained encoder (all-MiniLM-L6-v2, read offline
by :func:`abo_jax.models.minilm.load_minilm`) on Debian's fortunes (:func:`abo_jax.data.load_fortunes`,
one topic per client by default: the paper's one-class split on natural text). LoRA sits on the
last ``lora_layers`` encoder layers (query and value by default); the layers below are frozen and
their hidden states computed once per example (the model's prefix cache). The classification head
is trained and averaged by every operator (``head="aggregated"``).
"""

from __future__ import annotations

import dataclasses

import abo_jax
from abo_jax.data import PARTITION_SCHEMES
from experiments.common.config import bad_option

__all__ = ["FinetuneConfig", "get_config", "get_quick_config", "OPTIMIZERS", "ALL_OPERATORS"]

#: every operator of abo_jax's registry, FedAvg of full weights included
ALL_OPERATORS = tuple(abo_jax.OPERATORS)
OPTIMIZERS = ("adamw", "sgd")
_TARGETS = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Federated LoRA fine-tuning of MiniLM-L6 on fortunes; every field is a command-line option.

    Attributes:
      data_dir: folder of fortune files ("": $ABO_JAX_FORTUNES_DIR, else /usr/share/games/fortunes;
        `make fortunes` installs them).
      num_topics: the largest fortune topics kept, one class each.
      max_chars: longest fortune kept, in characters (0: no limit).
      test_fraction: fraction of each topic held out for testing.
      max_per_client: cap on each client's training texts, a random subset of each (0: all).
      max_test: cap on the test texts, a stratified subset (0: all).
      partition: client split: one_topic (one topic per client, num_clients a multiple of
        num_topics), dirichlet (over topics), quantity_skew (Dirichlet client sizes) or iid.
      dirichlet_alpha: Dirichlet concentration over topics of the dirichlet split (> 0).
      quantity_beta: Dirichlet concentration of client sizes of the quantity_skew split (> 0).
      num_clients: clients m (all take part in every round).
      operators: operators to run (abo_jax.OPERATORS names; fedavg_full is refused with a
        message: the study's table, plots and mismatch terms are LoRA-only so far).
      rank: LoRA rank of the equal-rank operators.
      hetero_ranks: per-client ranks (cycled over clients) of hetlora, rbla and flexlora.
      targets: adapted projections of each LoRA layer: query, key, value, attention_output,
        ffn_in, ffn_out.
      num_layers: pretrained encoder layers used (0: all 6).
      lora_layers: LoRA on the last this many of those layers; the layers below are cached.
      max_len: tokens per text (word pieces with [CLS] and [SEP], padded with 0).
      rounds: federated rounds.
      epochs: local epochs per round.
      batch_size: local minibatch size.
      optimizer: local optimizer, fresh every round: adamw or sgd (momentum 0.9).
      lr: local learning rate.
      weight_decay: weight decay (decoupled for adamw, L2 for sgd).
      seeds: seeds 0..seeds-1, trained at once on the simulator's run axis.
      level: confidence level of the intervals over seeds.
      out: results root folder.
      name: results folder name under out (default: derived from the config).
      progress: progress bars on a terminal; in a log file one line per cell and every log_every
        rounds instead.
      log_every: rounds between progress lines when stderr is not a terminal.
    """

    data_dir: str = ""
    num_topics: int = 10
    max_chars: int = 400
    test_fraction: float = 0.2
    max_per_client: int = 0
    max_test: int = 0
    partition: str = "one_topic"
    dirichlet_alpha: float = 0.5
    quantity_beta: float = 0.5
    num_clients: int = 10
    operators: tuple[str, ...] = tuple(op for op in ALL_OPERATORS if op != "fedavg_full")
    rank: int = 8
    hetero_ranks: tuple[int, ...] = (2, 4, 8)
    targets: tuple[str, ...] = ("query", "value")
    num_layers: int = 0
    lora_layers: int = 2
    max_len: int = 64
    rounds: int = 30
    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    seeds: int = 3
    level: float = 0.95
    out: str = "results"
    name: str = ""
    progress: bool = True
    log_every: int = 5

    def validate(self) -> None:
        """Rejects values that cannot run, before any work (``ValueError`` naming the option)."""
        if self.num_topics < 2:
            bad_option("num_topics", f"must be at least 2, got {self.num_topics}")
        if self.max_chars < 0 or self.max_per_client < 0 or self.max_test < 0:
            bad_option("max_chars", "max_chars, max_per_client and max_test must be >= 0 (0: none)")
        if not 0.0 < self.test_fraction < 1.0:
            bad_option("test_fraction", f"must lie in (0, 1), got {self.test_fraction}")
        if self.partition not in PARTITION_SCHEMES:
            bad_option(
                "partition",
                f"expected one of {', '.join(PARTITION_SCHEMES)}, got {self.partition!r}",
            )
        if self.partition == "one_topic" and self.num_clients % self.num_topics:
            bad_option(
                "num_clients",
                f"one_topic needs a multiple of num_topics={self.num_topics}, got "
                f"{self.num_clients}",
            )
        for name in ("dirichlet_alpha", "quantity_beta", "lr"):
            if not 0.0 < getattr(self, name) < float("inf"):
                bad_option(name, f"must be finite and > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            bad_option("weight_decay", f"must be >= 0, got {self.weight_decay}")
        unknown = [op for op in self.operators if op not in ALL_OPERATORS]
        if not self.operators or unknown or len(set(self.operators)) != len(self.operators):
            bad_option(
                "operators",
                f"unknown or repeated {unknown or list(self.operators)}; expected distinct names "
                f"among {', '.join(ALL_OPERATORS)}",
            )
        if "fedavg_full" in self.operators:
            bad_option(
                "operators",
                "fedavg_full is not run by this study yet (its table, plots and mismatch terms "
                "are LoRA-only; bert_lora_model(mode='full') is the model it would train); leave "
                "it out (FedEx-LoRA's global model is the FedAvg of the clients' merged LoRA "
                "weights)",
            )
        for name in (
            "num_clients",
            "rank",
            "lora_layers",
            "rounds",
            "epochs",
            "batch_size",
            "seeds",
            "log_every",
        ):
            if getattr(self, name) < 1:
                bad_option(name, f"must be at least 1, got {getattr(self, name)}")
        if self.num_layers < 0:
            bad_option("num_layers", f"must be >= 0 (0: all), got {self.num_layers}")
        if self.num_layers and self.lora_layers > self.num_layers:
            bad_option(
                "lora_layers",
                f"must be at most num_layers={self.num_layers}, got {self.lora_layers}",
            )
        if not self.hetero_ranks or any(r < 1 for r in self.hetero_ranks):
            bad_option("hetero_ranks", f"ranks must be positive, got {self.hetero_ranks}")
        bad = [t for t in self.targets if t not in _TARGETS]
        if not self.targets or bad:
            bad_option("targets", f"unknown {bad or 'empty list'}; expected {', '.join(_TARGETS)}")
        if self.max_len < 4:
            bad_option("max_len", f"must be at least 4 tokens, got {self.max_len}")
        if self.optimizer not in OPTIMIZERS:
            bad_option(
                "optimizer", f"expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not 0.0 < self.level < 1.0:
            bad_option("level", f"must lie in (0, 1), got {self.level}")


def get_config() -> FinetuneConfig:
    """The study: 10 clients, one fortunes topic each (the 10 largest topics), MiniLM-L6 with
    LoRA rank 8 on query/value of its last 2 layers, 64 tokens, every LoRA operator, 3 seeds."""
    return FinetuneConfig()


def get_quick_config() -> FinetuneConfig:
    """A smoke run in well under a minute: 2 pretrained layers (LoRA on the last), 32 tokens,
    4 topics and clients, 24 texts per client, 3 rounds, 2 seeds, 4 operators."""
    return FinetuneConfig(
        num_topics=4,
        num_clients=4,
        max_per_client=24,
        max_test=64,
        operators=("sum_product", "product_sum", "fedex", "hetlora"),
        rank=4,
        hetero_ranks=(2, 4),
        num_layers=2,
        lora_layers=1,
        max_len=32,
        rounds=3,
        batch_size=8,
        seeds=2,
        log_every=1,
    )
