"""Benchmark 9 (MiniLM round vs PyTorch + peft): the peft round computes the same round as abo-jax."""

import pytest

from experiments.bench import vs_peft

pytest.importorskip("peft", reason="peft is the optional benchmark dependency")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_the_peft_round_is_the_abo_jax_round():
    config = vs_peft.get_config(quick=True)
    bert_config, params = vs_peft.load(config)
    data = vs_peft.make_data(config, bert_config.vocab_size)
    start = bert_config.num_hidden_layers - config.lora_layers  # peft's layers_to_transform
    check = vs_peft.equality_check(config, bert_config, params, data, start)
    # One round without shuffling: the factors and head move, both frameworks to float32 round-off.
    assert check["moved"] > 1e-3
    assert check["max_abs_diff"] < 1e-6
