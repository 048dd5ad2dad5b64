"""Debian's ``fortunes`` package as a topic-classification data set, and its federated clients.

The package (``make fortunes``, i.e. ``apt-get install -y fortunes``) installs one file per topic
under ``/usr/share/games/fortunes/`` (``people``, ``definitions``, ``computers``, ``songs-poems``,
``politics``, ``work``, ``science``, ...): plain UTF-8 texts separated by lines holding a single
``%``. Beside each topic file lie its ``strfile`` index ``<topic>.dat`` (binary) and a symlink
``<topic>.u8``; both are skipped, and so is any subdirectory (the separate ``fortunes-off``
package puts its offensive files under ``off/``).

A text is cleaned as ``fortune`` prints it on a terminal (overstriking ``X<BS>Y`` shows ``Y``) and
its whitespace collapsed to single spaces. Duplicates are removed: a text repeated within one
topic is kept once; a text found under several topics is dropped (its label is ambiguous). The
label of a topic is its rank by size (0 = the largest; ties by name), so ``num_topics=N`` keeps
the N largest topics and labels them ``0..N-1``.

Typical use (the tokenizer is the model's, e.g. ``abo_jax.models.minilm.tokenize``)::

    ds = load_fortunes(num_topics=10, max_chars=400)
    part = partition_topics(ds.y_train, "one_topic")          # the paper's one-class split
    data = fortunes_clients(ds, lambda t: tokenize(tokenizer, t, 64), part)
    data.train.x.shape                                        # (m, n_max, 64) int32 token ids

References:
  Arnold, fortune(6) and strfile(8), BSD games; Debian package ``fortunes``
  (https://packages.debian.org/fortunes).
  Chen et al., arXiv:2508.01348 (one class per client).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.data._datasets import stratified_split
from abo_jax.data._padding import pad_clients
from abo_jax.data._partition import (
    Partition,
    dirichlet,
    iid,
    one_class_per_client,
    quantity_skew,
)
from abo_jax.data.client_data import ClientData

__all__ = [
    "FORTUNES_DIR",
    "PARTITION_SCHEMES",
    "TextDataset",
    "TextClients",
    "read_fortune_file",
    "load_fortunes",
    "partition_topics",
    "fortunes_clients",
]

#: Where Debian's ``fortunes`` package installs its topic files.
FORTUNES_DIR = "/usr/share/games/fortunes"
_ENV = "ABO_JAX_FORTUNES_DIR"
_INSTALL = "make fortunes (as root: apt-get install -y fortunes)"

#: Partition schemes :func:`partition_topics` knows.
PARTITION_SCHEMES = ("one_topic", "dirichlet", "quantity_skew", "iid")

_OVERSTRIKE = re.compile(r".\x08")


class TextDataset(NamedTuple):
    """A labelled train/test text data set held in host memory.

    Attributes:
      texts_train: ``n_train`` cleaned texts.
      y_train: ``(n_train,)`` int32 topic labels in ``0..num_classes - 1``.
      texts_test: ``n_test`` cleaned texts.
      y_test: ``(n_test,)`` int32 topic labels.
      topics: ``num_classes`` topic names; ``topics[c]`` is the name of label ``c``.
      name: data set name (``"fortunes"``).
    """

    texts_train: tuple[str, ...]
    y_train: np.ndarray  # (n_train,) int32
    texts_test: tuple[str, ...]
    y_test: np.ndarray  # (n_test,) int32
    topics: tuple[str, ...]
    name: str = "fortunes"

    @property
    def num_classes(self) -> int:
        return len(self.topics)


class TextClients(NamedTuple):
    """Token ids of a :class:`TextDataset`, the training set split over clients.

    Attributes:
      train: :class:`ClientData` with ``x (m, n_max, L)`` int32 token ids (padding rows all 0),
        ``y (m, n_max)``, ``mask (m, n_max)``, ``sizes (m,)``.
      x_test: ``(n_test, L)`` int32 token ids of the test texts.
      y_test: ``(n_test,)`` int32 test labels.
      partition: the :class:`Partition` of the training set.
      topics: topic names, ``topics[c]`` for label ``c``.
    """

    train: ClientData
    x_test: jax.Array  # (n_test, L) int32
    y_test: jax.Array  # (n_test,) int32
    partition: Partition
    topics: tuple[str, ...]


def read_fortune_file(path: str | os.PathLike) -> list[str]:
    """The texts of one fortune file, cleaned, in file order (duplicates kept).

    Texts are separated by lines holding only ``%``; overstriking (``X<BS>Y``) is resolved to
    ``Y``, whitespace runs become one space, and empty texts are dropped.

    Args:
      path: a fortune file (UTF-8; undecodable bytes become U+FFFD).

    Returns:
      The texts.

    Example:
      >>> import tempfile; f = tempfile.NamedTemporaryFile("w", delete=False)
      >>> _ = f.write("One\\n  two\\n%\\nThree\\n%\\n"); f.close()
      >>> read_fortune_file(f.name)
      ['One two', 'Three']
    """
    raw = Path(path).read_bytes().decode("utf-8", errors="replace")
    texts, current = [], []
    for line in raw.splitlines():
        if line.rstrip("\r") == "%":
            texts.append("\n".join(current))
            current = []
        else:
            current.append(line)
    texts.append("\n".join(current))
    out = []
    for t in texts:
        while _OVERSTRIKE.search(t):
            t = _OVERSTRIKE.sub("", t)
        t = " ".join(t.split())
        if t:
            out.append(t)
    return out


def _fortunes_directory(path: str | os.PathLike | None) -> Path:
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get(_ENV):
        candidates = [Path(os.environ[_ENV])]
    else:
        candidates = [Path(FORTUNES_DIR)]
    for cand in candidates:
        if cand.is_dir() and _topic_files(cand):
            return cand
    raise FileNotFoundError(
        f"fortunes: no fortune files found in {', '.join(map(str, candidates))}. To get them: "
        f"{_INSTALL}; or pass path=<dir> (or set {_ENV}=<dir>) to a directory of fortune files "
        "(texts separated by lines holding '%', one topic per file)"
    )


def _topic_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
    )


def load_fortunes(
    path: str | os.PathLike | None = None,
    *,
    num_topics: int | None = 10,
    min_chars: int = 1,
    max_chars: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TextDataset:
    """The ``num_topics`` largest fortune topics as a stratified train/test split.

    Every topic file of ``path`` is read (:func:`read_fortune_file`); texts shorter than
    ``min_chars`` or longer than ``max_chars`` characters (after cleaning) are dropped, then
    duplicates (see the module docstring), then the ``num_topics`` largest topics are kept and
    labelled by size (0 = largest, ties by name). Each topic sends ``round(test_fraction n_c)``
    texts to the test set (``stratified_split``); the result depends only on the files and
    ``seed``.

    Args:
      path: directory of fortune files (default ``$ABO_JAX_FORTUNES_DIR``, else
        ``/usr/share/games/fortunes``).
      num_topics: how many of the largest topics to keep (``None``: all).
      min_chars: shortest text kept, in characters.
      max_chars: longest text kept (``None``: no limit). Fortunes run from one line to pages; a
        model reading 64 tokens sees about the first 250 characters.
      test_fraction: fraction of each topic held out, in ``(0, 1)``.
      seed: seed of the split.

    Returns:
      A :class:`TextDataset`.

    Raises:
      FileNotFoundError: no fortune files (the message says ``make fortunes``).
      ValueError: bad arguments, more topics asked than there are, or a topic too small to give
        both splits an example.

    Example:
      >>> ds = load_fortunes(num_topics=10)  # doctest: +SKIP
      >>> ds.topics[:3], len(ds.texts_train)  # doctest: +SKIP
      (('people', 'definitions', 'cookie'), ...)
    """
    if int(min_chars) != min_chars or min_chars < 1:
        raise ValueError(f"min_chars must be an integer >= 1, got {min_chars!r}")
    if max_chars is not None and (int(max_chars) != max_chars or max_chars < min_chars):
        raise ValueError(f"max_chars must be None or an integer >= min_chars, got {max_chars!r}")
    if num_topics is not None and (int(num_topics) != num_topics or num_topics < 2):
        raise ValueError(f"num_topics must be None or an integer >= 2, got {num_topics!r}")
    directory = _fortunes_directory(path)
    by_topic: dict[str, list[str]] = {}
    for f in _topic_files(directory):
        texts = [
            t
            for t in read_fortune_file(f)
            if len(t) >= min_chars and (max_chars is None or len(t) <= max_chars)
        ]
        by_topic[f.name] = list(dict.fromkeys(texts))  # in-topic duplicates, first kept
    owners: dict[str, int] = {}
    for texts in by_topic.values():
        for t in texts:
            owners[t] = owners.get(t, 0) + 1
    by_topic = {k: [t for t in v if owners[t] == 1] for k, v in by_topic.items()}
    by_topic = {k: v for k, v in by_topic.items() if v}
    ranked = sorted(by_topic, key=lambda k: (-len(by_topic[k]), k))
    if num_topics is not None:
        if num_topics > len(ranked):
            raise ValueError(
                f"num_topics={num_topics} but {directory} holds {len(ranked)} non-empty topics "
                f"after filtering (min_chars={min_chars}, max_chars={max_chars})"
            )
        ranked = ranked[:num_topics]
    texts = [t for k in ranked for t in by_topic[k]]
    labels = np.concatenate([np.full(len(by_topic[k]), c, np.int32) for c, k in enumerate(ranked)])
    counts = np.bincount(labels)
    n_test = np.round(test_fraction * counts)
    if np.any(n_test < 1) or np.any(n_test >= counts):
        c = int(np.argmin(np.minimum(n_test, counts - n_test)))
        raise ValueError(
            f"topic {ranked[c]!r} has {counts[c]} texts: test_fraction={test_fraction} leaves "
            "one of the splits without an example; keep fewer topics or change test_fraction"
        )
    train, test = stratified_split(labels, test_fraction, seed)
    return TextDataset(
        texts_train=tuple(texts[i] for i in train),
        y_train=labels[train],
        texts_test=tuple(texts[i] for i in test),
        y_test=labels[test],
        topics=tuple(ranked),
    )


def partition_topics(
    labels: Any,
    scheme: str,
    *,
    num_clients: int | None = None,
    key: Any = 0,
    alpha: float = 0.5,
    beta: float = 0.5,
) -> Partition:
    """Splits topic-labelled examples over clients with one of the library's partitioners.

    Args:
      labels: ``(n,)`` integer topic labels (e.g. ``TextDataset.y_train``).
      scheme: ``"one_topic"`` (:func:`~abo_jax.data.one_class_per_client`: one topic per client,
        ``num_clients`` a multiple of the topics, default equal), ``"dirichlet"``
        (:func:`~abo_jax.data.dirichlet` over topics with ``alpha``), ``"quantity_skew"``
        (:func:`~abo_jax.data.quantity_skew` with ``beta``) or ``"iid"``
        (:func:`~abo_jax.data.iid`).
      num_clients: ``m`` (required except for ``"one_topic"``).
      key: ``jax.random`` key or int of the partitioner.
      alpha: Dirichlet concentration over topics (``"dirichlet"`` only).
      beta: Dirichlet concentration of the client sizes (``"quantity_skew"`` only).

    Returns:
      The :class:`Partition`.

    Raises:
      ValueError: an unknown scheme, a missing ``num_clients``, or as the partitioner.
    """
    if scheme == "one_topic":
        return one_class_per_client(labels, num_clients=num_clients, key=key)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"partition scheme: expected one of {list(PARTITION_SCHEMES)}, got {scheme!r}"
        )
    if num_clients is None:
        raise ValueError(f"partition scheme {scheme!r} needs num_clients")
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients=num_clients, alpha=alpha, key=key)
    if scheme == "quantity_skew":
        return quantity_skew(labels, num_clients=num_clients, beta=beta, key=key)
    return iid(labels, num_clients=num_clients, key=key)


def fortunes_clients(
    dataset: TextDataset,
    tokenize: Callable[[Sequence[str]], Any],
    partition: Partition,
    *,
    n_max: int | None = None,
) -> TextClients:
    """Tokenizes a text data set once and gathers its training texts per client.

    Args:
      dataset: a :class:`TextDataset` (e.g. from :func:`load_fortunes`).
      tokenize: maps ``n`` texts to ``(n, L)`` integer token ids, padded with 0 (the model's
        tokenizer with its sequence length bound, e.g.
        ``lambda t: minilm.tokenize(tokenizer, t, 64)``). Called once for the training texts and
        once for the test texts.
      partition: a :class:`Partition` of ``dataset.y_train`` (e.g. from :func:`partition_topics`).
      n_max: padded client length (default the largest client), as ``pad_clients``.

    Returns:
      :class:`TextClients`: ``train.x (m, n_max, L)`` int32, test ids ``(n_test, L)`` int32.

    Raises:
      ValueError: ``tokenize`` returns the wrong shape, or the partition does not cover
        ``dataset.y_train``'s indices.
    """

    def ids(texts: Sequence[str]) -> np.ndarray:
        x = np.asarray(tokenize(list(texts)))
        if x.ndim != 2 or x.shape[0] != len(texts) or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"tokenize must map {len(texts)} texts to an (n, L) integer array, got "
                f"{x.shape} {x.dtype}"
            )
        return x.astype(np.int32)

    x_train, x_test = ids(dataset.texts_train), ids(dataset.texts_test)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"tokenize gave {x_train.shape[1]} tokens for the training texts and "
            f"{x_test.shape[1]} for the test texts; bind one sequence length"
        )
    train = pad_clients(x_train, dataset.y_train, partition, n_max=n_max)
    return TextClients(
        train=train,
        x_test=jnp.asarray(x_test),
        y_test=jnp.asarray(dataset.y_test, jnp.int32),
        partition=partition,
        topics=dataset.topics,
    )
