"""Checkpoints vouch for themselves: checksum, fingerprint, history vs state.round, no overwrite."""

import hashlib
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sim_helpers import synthetic_clients

import abo_jax as aj
from abo_jax.simulation.checkpoint import (
    MAGIC,
    CheckpointError,
    history_rounds,
    read_checkpoint_header,
    run_fingerprint,
)
from abo_jax.simulation.run import NonFiniteError


def _problem():
    data = synthetic_clients(np.random.default_rng(0), [6, 9, 4, 7], 6, 3)
    return data, (data.x[1], data.y[1])


def _sim(op=None, lr=0.05, **kw):
    model = aj.paper_mlp(6, (5, 4), 3, ranks=2, dtype=jnp.float64)
    return aj.make_simulation(
        model, op or aj.sum_product(), batch_size=4, optimizer=aj.paper_sgd(lr, 0.9, 0.0), **kw
    )


def _state():
    return {"w": np.arange(6.0).reshape(2, 3), "key": jax.random.key(4)}


def test_the_file_layout_checksum_and_permissions(tmp_path):
    path = tmp_path / "c.ckpt"
    aj.simulation.save_checkpoint(
        path, _state(), history=[{"round": 1}], fingerprint={"user": {"a": 1}}
    )
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    line, rest = raw[len(MAGIC) :].split(b"\n", 1)
    assert line == b"sha256 " + hashlib.sha256(rest).hexdigest().encode()  # an independent check
    header = read_checkpoint_header(path)
    assert header["fingerprint"] == {"user": {"a": 1}} and header["history_rounds"] == 1
    assert header["body_bytes"] == len(rest.split(b"\n", 1)[1])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("where", ["header", "body_start", "body_end"])
def test_a_changed_byte_is_refused_naming_the_file(tmp_path, where):
    path = tmp_path / "c.ckpt"
    aj.simulation.save_checkpoint(path, _state(), history=[1, 2])
    raw = bytearray(path.read_bytes())
    body = raw.index(b"\n", raw.index(b"\n", len(MAGIC)) + 1) + 1
    i = {"header": len(MAGIC) + 80, "body_start": body + 3, "body_end": len(raw) - 2}[where]
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(path)) as err:
        aj.simulation.load_checkpoint(path, _state())
    assert "checksum" in str(err.value) or "damaged" in str(err.value)


def test_values_changed_and_rewritten_consistently_still_fail_the_checksum(tmp_path):
    # The case: 50 values set to 1e3 in a file whose pickle still loads. Here: replace the
    # float bytes of the stored array inside the body; the pickle would still load.
    path = tmp_path / "c.ckpt"
    state = {"w": np.full(64, 0.5), "key": jax.random.key(1)}
    aj.simulation.save_checkpoint(path, state)
    raw = path.read_bytes()
    needle = np.full(50, 0.5).tobytes()
    assert needle in raw
    path.write_bytes(raw.replace(needle, np.full(50, 1e3).tobytes(), 1))
    with pytest.raises(CheckpointError, match="checksum"):
        aj.simulation.load_checkpoint(path, state)


@pytest.mark.parametrize("keep", [0, 10, len(MAGIC) + 20, -7])
def test_a_truncated_file_is_a_checkpoint_error_not_an_unpickling_error(tmp_path, keep):
    path = tmp_path / "c.ckpt"
    aj.simulation.save_checkpoint(path, _state(), history=[1])
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError, match=str(path)):
        aj.simulation.load_checkpoint(path, _state())


def test_a_foreign_or_legacy_file_is_refused_and_never_written_over(tmp_path):
    import pickle

    path = tmp_path / "c.ckpt"
    legacy = pickle.dumps({"format": "abo_jax.checkpoint/1", "leaves": [], "history": None})
    for content, words in ((legacy, "without a checksum"), (b"hello", "not an abo_jax")):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=words):
            aj.simulation.load_checkpoint(path, _state())
        with pytest.raises(CheckpointError, match=words):
            aj.simulation.save_checkpoint(path, _state())
        assert path.read_bytes() == content  # untouched
    aj.simulation.save_checkpoint(path, _state(), overwrite=True)
    restored, _, _ = aj.simulation.load_checkpoint(path, _state())
    np.testing.assert_array_equal(restored["w"], _state()["w"])


def test_a_fingerprint_mismatch_names_the_field_and_keeps_the_file(tmp_path):
    path = tmp_path / "c.ckpt"
    aj.simulation.save_checkpoint(path, _state(), fingerprint={"user": {"op": "sp", "seed": 0}})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"user\['op'\]: stored 'sp', now 'ps'"):
        aj.simulation.load_checkpoint(path, _state(), fingerprint={"user": {"op": "ps", "seed": 0}})
    with pytest.raises(CheckpointError, match=r"user\['seed'\]"):
        aj.simulation.save_checkpoint(path, _state(), fingerprint={"user": {"op": "sp", "seed": 1}})
    with pytest.raises(CheckpointError, match="without"):
        aj.simulation.save_checkpoint(
            path, _state()
        )  # a fingerprinted run is not replaced by an anonymous one
    assert path.read_bytes() == before
    aj.simulation.save_checkpoint(
        path, _state(), fingerprint={"user": {"op": "sp", "seed": 0}}
    )  # same run


def test_history_rounds_must_be_exactly_one_to_state_round(tmp_path):
    path = tmp_path / "c.ckpt"
    data, test = _problem()
    sim = _sim()
    state = sim.init(jax.random.key(0), data)._replace(round=jnp.asarray(8, jnp.int32))
    per_round = [{"round": np.asarray(r)} for r in range(1, 7)]  # 6 rows for a state at round 8
    aj.simulation.save_checkpoint(path, state, history=per_round)
    with pytest.raises(CheckpointError, match=r"round 8 .*1\.\.8"):
        aj.simulation.load_checkpoint(path, state)
    chunks = [{"round": np.arange(1, 5)}, {"round": np.arange(5, 9)}]  # train_in_chunks' layout
    assert history_rounds(chunks) == list(range(1, 9))
    aj.simulation.save_checkpoint(path, state, history=chunks)
    aj.simulation.load_checkpoint(path, state)
    aj.simulation.save_checkpoint(
        path, state, history=[{"round": np.arange(1, 5)}, {"round": np.arange(6, 10)}]
    )
    with pytest.raises(CheckpointError, match="inconsistent"):
        aj.simulation.load_checkpoint(path, state)


def test_run_fingerprint_sees_operator_lr_seed_and_data():
    data, test = _problem()
    key = jax.random.key(0)

    def fp(sim, key=key, data=data):
        return run_fingerprint(sim, sim.init(key, data), data, test)

    base = fp(_sim())
    assert fp(_sim()) == base  # deterministic
    assert fp(_sim(aj.product_sum()))["program"] != base["program"]
    assert fp(_sim(aj.product_sum()))["state"] == base["state"]  # same structure: only the program
    assert fp(_sim(lr=0.01))["program"] != base["program"]
    assert fp(_sim(), key=jax.random.key(1))["init"] != base["init"]
    other = data._replace(x=data.x.at[0, 0, 0].add(1.0))
    assert fp(_sim(), data=other)["data"] != base["data"]


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(op=aj.product_sum()), "program"),
        (dict(lr=0.01), "program"),
        (dict(key=jax.random.key(9)), "init"),
        (dict(fingerprint={"cell": 2}), "fingerprint"),
        (dict(eval_every=2), "options"),
    ],
)
def test_run_refuses_to_resume_another_run_and_leaves_the_checkpoint(tmp_path, change, field):
    path = tmp_path / "run.ckpt"
    data, test = _problem()
    kw = dict(rounds=3, key=jax.random.key(0), progress=False, checkpoint_path=path)
    aj.run(_sim(), data, test, fingerprint={"cell": 1}, **{**kw, "rounds": 2})
    before = path.read_bytes()
    sim = _sim(change.pop("op", None), change.pop("lr", 0.05))
    args = {**kw, "fingerprint": {"cell": 1}, **change}
    with pytest.raises(CheckpointError, match=str(path)) as err:
        aj.run(sim, data, test, **args)
    assert (field if field != "fingerprint" else "user") in str(err.value)
    assert path.read_bytes() == before
    # the explicit way out: start over and write over it
    with pytest.warns(UserWarning, match="starting over"):
        hist, _ = aj.run(sim, data, test, checkpoint_overwrite=True, **args)
    straight, _ = aj.run(
        sim, data, test, **{k: v for k, v in args.items() if k != "checkpoint_path"}
    )
    np.testing.assert_array_equal(hist["test_loss"], straight["test_loss"])


def test_fewer_rounds_than_stored_is_refused_and_equal_returns_the_stored_run(tmp_path):
    path = tmp_path / "run.ckpt"
    data, test = _problem()
    kw = dict(key=jax.random.key(0), progress=False, checkpoint_path=path)
    full, _ = aj.run(_sim(), data, test, rounds=4, **kw)
    with pytest.raises(CheckpointError, match=r"holds 4 rounds, more than rounds=2"):
        aj.run(_sim(), data, test, rounds=2, **kw)
    again, state = aj.run(_sim(), data, test, rounds=4, **kw)
    assert int(state.round) == 4
    for name in full:
        np.testing.assert_array_equal(again[name], full[name])


def test_a_diverging_run_warns_once_with_the_round_or_stops_before_saving(tmp_path):
    data, test = _problem()
    sim = _sim(lr=1e6)
    kw = dict(rounds=6, key=jax.random.key(0), progress=False)
    with pytest.warns(RuntimeWarning, match=r"non-finite at round \d") as caught:
        hist, _ = aj.run(sim, data, test, **kw)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1
    first = int(
        np.flatnonzero(~np.isfinite(hist["train_loss"]) | ~np.isfinite(hist["test_loss"]))[0]
    )
    assert f"round {first + 1} " in str(caught[0].message)
    path = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteError, match=f"round {first + 1} ") as err:
        aj.run(
            sim, data, test, checkpoint_path=path, checkpoint_every=1, stop_on_nonfinite=True, **kw
        )
    assert err.value.round == first + 1
    if first:  # the checkpoint holds the finite rounds only
        _, saved, _ = aj.simulation.load_checkpoint(path, sim.init(jax.random.key(0), data))
        assert len(saved) == first
        assert all(np.isfinite(r["train_loss"]).all() for r in saved)
    else:
        assert not path.exists()
