"""Fortunes loader: parsing, duplicates, topic ranking, stratified split, errors, client data."""

import os

import numpy as np
import pytest

from abo_jax.data import (
    fortunes_clients,
    load_fortunes,
    partition_topics,
    quantity_skew,
    read_fortune_file,
)


def write_topic(directory, name, texts, trailer="%\n"):
    (directory / name).write_text("\n%\n".join(texts) + "\n" + trailer, encoding="utf-8")


@pytest.fixture
def corpus(tmp_path):
    """Four topics of 30, 20, 10 and 5 unique texts, plus the package's side files."""
    d = tmp_path / "fortunes"
    d.mkdir()
    sizes = {"alpha": 30, "beta": 20, "gamma": 10, "delta": 5}
    for name, n in sizes.items():
        write_topic(d, name, [f"{name} text number {j}\n  second line {j}" for j in range(n)])
    (d / "alpha.dat").write_bytes(b"\x00\x00\x00\x02%\x00binary index")
    os.symlink(d / "alpha", d / "alpha.u8")
    (d / "off").mkdir()
    write_topic(d / "off", "rude", ["never read"] * 50)
    return d, sizes


def test_read_fortune_file_parses_separators_and_overstriking(tmp_path):
    f = tmp_path / "t"
    f.write_bytes(
        b"First  text\n\twith a tab\n%\n%\n_\x08b_\x08o_\x08l_\x08d and X\x08Y\n%\nlast, no trailer"
    )
    assert read_fortune_file(f) == ["First text with a tab", "bold and Y", "last, no trailer"]


def test_load_fortunes_ranks_topics_and_skips_side_files(corpus):
    d, sizes = corpus
    ds = load_fortunes(d, num_topics=3, test_fraction=0.2, seed=0)
    assert ds.topics == ("alpha", "beta", "gamma")  # largest first; .dat, .u8 and off/ skipped
    counts = np.bincount(ds.y_train, minlength=3) + np.bincount(ds.y_test, minlength=3)
    np.testing.assert_array_equal(counts, [30, 20, 10])
    assert len(ds.texts_train) == ds.y_train.shape[0] and ds.y_train.dtype == np.int32
    labels = np.concatenate([ds.y_train, ds.y_test])
    for text, y in zip(ds.texts_train + ds.texts_test, labels, strict=True):
        assert text.startswith(ds.topics[y] + " text number")
        assert "\n" not in text and "  " not in text
    assert not set(ds.texts_train) & set(ds.texts_test)
    assert len(load_fortunes(d, num_topics=None).topics) == 4


def test_split_is_stratified_and_deterministic(corpus):
    d, _ = corpus
    a = load_fortunes(d, num_topics=4, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(np.bincount(a.y_test), [6, 4, 2, 1])  # round(0.2 n_c)
    b = load_fortunes(d, num_topics=4, test_fraction=0.2, seed=3)
    assert a.texts_test == b.texts_test and a.texts_train == b.texts_train
    c = load_fortunes(d, num_topics=4, test_fraction=0.2, seed=4)
    assert set(c.texts_test) != set(a.texts_test)
    np.testing.assert_array_equal(np.bincount(c.y_test), [6, 4, 2, 1])


def test_duplicates_and_length_filter(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    write_topic(d, "one", ["same", "same", "shared", "a" * 50] + [f"one {i}" for i in range(10)])
    write_topic(d, "two", ["shared"] + [f"two {i}" for i in range(10)])
    ds = load_fortunes(d, num_topics=2)
    texts = ds.texts_train + ds.texts_test
    assert texts.count("same") == 1  # repeated within a topic: kept once
    assert "shared" not in texts  # under two topics: ambiguous, dropped
    assert len(texts) == 12 + 10
    short = load_fortunes(d, num_topics=2, min_chars=5, max_chars=20)
    assert all(5 <= len(t) <= 20 for t in short.texts_train + short.texts_test)
    assert "a" * 50 not in short.texts_train + short.texts_test


def test_errors_name_the_fix(tmp_path, corpus, monkeypatch):
    monkeypatch.delenv("ABO_JAX_FORTUNES_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="make fortunes"):
        load_fortunes(tmp_path / "missing")
    monkeypatch.setenv("ABO_JAX_FORTUNES_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="apt-get install -y fortunes"):
        load_fortunes()
    d, _ = corpus
    monkeypatch.setenv("ABO_JAX_FORTUNES_DIR", str(d))
    assert load_fortunes(num_topics=2).topics == ("alpha", "beta")
    with pytest.raises(ValueError, match="num_topics=5 but"):
        load_fortunes(d, num_topics=5)
    with pytest.raises(ValueError, match="'delta' has 5 texts"):
        load_fortunes(d, num_topics=4, test_fraction=0.1)
    with pytest.raises(ValueError, match="max_chars"):
        load_fortunes(d, min_chars=10, max_chars=5)


def fake_tokenize(texts, max_len=8):
    """Ids from the words' lengths, padded with 0: deterministic and text-dependent."""
    out = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
        ids = [len(w) + 1 for w in t.split()][:max_len]
        out[i, : len(ids)] = ids
    return out


def test_one_topic_clients_gather_the_right_tokens(corpus):
    d, _ = corpus
    ds = load_fortunes(d, num_topics=3)
    part = partition_topics(ds.y_train, "one_topic")
    data = fortunes_clients(ds, fake_tokenize, part)
    assert data.train.x.shape == (3, 24, 8) and data.train.x.dtype == np.int32
    np.testing.assert_array_equal(data.train.sizes, [24, 16, 8])
    x = np.asarray(data.train.x)
    tokens = fake_tokenize(ds.texts_train)
    for i, idx in enumerate(part.indices):
        n = idx.size
        np.testing.assert_array_equal(x[i, :n], tokens[idx])
        assert np.all(np.asarray(data.train.y)[i, :n] == i)  # one topic per client
        assert not x[i, n:].any() and not np.asarray(data.train.mask)[i, n:].any()
    np.testing.assert_array_equal(np.asarray(data.x_test), fake_tokenize(ds.texts_test))
    np.testing.assert_array_equal(np.asarray(data.y_test), ds.y_test)
    with pytest.raises(ValueError, match=r"\(n, L\) integer array"):
        fortunes_clients(ds, lambda t: np.zeros((len(t), 4), np.float32), part)


@pytest.mark.parametrize("scheme", ["dirichlet", "quantity_skew", "iid"])
def test_other_schemes_cover_the_training_set(corpus, scheme):
    d, _ = corpus
    ds = load_fortunes(d, num_topics=4)
    part = partition_topics(ds.y_train, scheme, num_clients=3, key=1, alpha=0.3, beta=0.3)
    flat = np.sort(np.concatenate(part.indices))
    np.testing.assert_array_equal(flat, np.arange(ds.y_train.shape[0]))
    assert part.sizes.min() >= 1
    same = partition_topics(ds.y_train, scheme, num_clients=3, key=1, alpha=0.3, beta=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(part.indices, same.indices, strict=True))
    with pytest.raises(ValueError, match="needs num_clients"):
        partition_topics(ds.y_train, scheme)
    with pytest.raises(ValueError, match="expected one of"):
        partition_topics(ds.y_train, "one_class")


def test_quantity_skew_skews_sizes_not_labels():
    y = np.arange(4000) % 4
    skewed = quantity_skew(y, num_clients=8, beta=0.2, key=0)
    even = quantity_skew(y, num_clients=8, beta=1e4, key=0)
    assert skewed.sizes.max() / skewed.sizes.min() > 5
    assert even.sizes.max() / even.sizes.min() < 1.2
    # label mix of the largest client close to uniform (it holds a random sample)
    big = skewed.class_histogram[np.argmax(skewed.sizes)]
    assert np.abs(big / big.sum() - 0.25).max() < 0.05
    with pytest.raises(ValueError, match="beta must be a finite number"):
        quantity_skew(y, num_clients=8, beta=0.0, key=0)
