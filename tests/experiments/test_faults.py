"""Fault injection: kills mid-round and mid-write, corrupted bytes, resumes with other arguments.

Each must end in the same results as an uninterrupted run, or in a clear refusal that leaves the
files as they were. Bounded in time: small problems, subprocesses with timeouts.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import abo_jax as aj
from abo_jax.simulation.checkpoint import CheckpointError
from experiments.common.grid import cell_path, run_grid
from experiments.paper.run import train_in_chunks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import fault_job as job  # noqa: E402

ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _job(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(HERE / "fault_job.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT,
    )  # fmt: skip


def _chunks(path=None, op="sum_product", seed=5, rounds=job.ROUNDS):
    data, test = job.problem()
    return train_in_chunks(job.sim(op), data, test, rounds=rounds, key=jax.random.key(seed),
                           chunk=job.CHUNK, checkpoint_path=path)  # fmt: skip


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def killed_chunks(tmp_path_factory):
    """A chunked run SIGKILLed after two chunks (4 of 6 rounds), and the uninterrupted run."""
    folder = tmp_path_factory.mktemp("chunks")
    path = folder / "run.ckpt"
    proc = _job("chunks", str(path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in folder.iterdir()] == ["run.ckpt"]  # no temporary left over
    return path, path.read_bytes(), _chunks()


def test_killed_mid_run_resumes_to_identical_results(killed_chunks, tmp_path):
    path, content, straight = killed_chunks
    copy = tmp_path / "run.ckpt"
    copy.write_bytes(content)
    _same(_chunks(copy), straight)


def test_killed_at_a_random_moment_resumes_to_identical_results(tmp_path):
    # Killed from outside once the first chunk is stored: inside a round, an evaluation or a
    # checkpoint write, wherever it is by then.
    path = tmp_path / "run.ckpt"
    with subprocess.Popen(
        [sys.executable, str(HERE / "fault_job.py"), "long", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT,
    ) as proc:  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(random.Random(0).uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert path.exists()
    _same(_chunks(path, rounds=job.LONG), _chunks(rounds=job.LONG))


@pytest.mark.parametrize(
    "change, field",
    [({"op": "product_sum"}, "program"), ({"seed": 6}, "init")],
)
def test_resuming_with_other_arguments_is_refused_and_the_checkpoint_kept(
    killed_chunks, tmp_path, change, field
):
    _, content, _ = killed_chunks
    copy = tmp_path / "run.ckpt"
    copy.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{copy}.*{field} differs"):
        _chunks(copy, **change)
    assert copy.read_bytes() == content  # the original arguments still resume it (test above)


@pytest.mark.parametrize("seed", range(3))
def test_a_corrupted_byte_of_a_checkpoint_is_refused_and_nothing_is_written(
    killed_chunks, tmp_path, seed
):
    _, content, _ = killed_chunks
    raw = bytearray(content)
    i = random.Random(seed).randrange(len(raw))
    raw[i] ^= 1 << random.Random(seed + 7).randrange(8)
    copy = tmp_path / "run.ckpt"
    copy.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(copy)):
        _chunks(copy)
    assert copy.read_bytes() == bytes(raw)


def test_abo_run_resumed_with_fewer_rounds_or_a_damaged_file(tmp_path):
    data, test = job.problem()
    path = tmp_path / "run.ckpt"
    kw = dict(key=jax.random.key(1), progress=False, checkpoint_path=path, checkpoint_every=1)

    def stop(r, state, record):
        if r == 3:
            raise KeyboardInterrupt

    sim = job.sim()  # one simulator: its rounds compile once
    with pytest.raises(KeyboardInterrupt):  # an exception injected through the public callback
        aj.run(sim, data, test, rounds=5, callback=stop, **kw)
    with pytest.raises(CheckpointError, match="more than rounds=2"):
        aj.run(sim, data, test, rounds=2, **kw)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        aj.run(sim, data, test, rounds=5, **kw)
    assert path.read_bytes() == bytes(raw)


def _kill_during(mode: str, path: Path, after: int, seed: int) -> None:
    with subprocess.Popen(
        [sys.executable, str(HERE / "fault_job.py"), mode, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
    ) as proc:  # fmt: skip
        try:
            for _ in range(after):
                line = proc.stdout.readline()
                assert line, proc.stderr.read()[-2000:]
            # somewhere inside one of the next writes (each takes tens of milliseconds)
            time.sleep(random.Random(seed).uniform(0.0, 0.08))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.mark.parametrize("seed", range(3))
def test_killed_mid_checkpoint_write_leaves_a_whole_checkpoint(tmp_path, seed):
    path = tmp_path / "c.ckpt"
    _kill_during("writes", path, 2, seed)
    state, history, _ = aj.simulation.load_checkpoint(path, job.big_state(0))  # checksum verified
    i = int(state["w"][0])
    assert i >= 2 and (state["w"] == i).all() and len(history) == i
    np.testing.assert_array_equal(
        jax.random.key_data(state["key"]), jax.random.key_data(jax.random.key(i))
    )


@pytest.mark.parametrize("seed", range(2))
def test_killed_mid_json_write_leaves_a_whole_file(tmp_path, seed):
    path = tmp_path / "r.json"
    _kill_during("json", path, 2, seed)
    stored = json.loads(path.read_text())
    assert stored["i"] >= 2 and stored["values"] == list(range(200_000))


def test_a_corrupted_byte_of_a_finished_cell_is_set_aside_and_the_cell_redone(tmp_path):
    cells = [{"i": i} for i in range(3)]
    calls = []

    def cell_fn(cell):
        calls.append(cell["i"])
        x = np.random.default_rng(cell["i"]).normal(size=50)
        return {"mean": float(x.mean()), "curve": np.cumsum(x)}

    first, _ = run_grid(cells, cell_fn, tmp_path, show_progress=False)
    path = cell_path(tmp_path, cells[1])
    text = path.read_text()
    digit = next(i for i, ch in enumerate(text) if ch.isdigit() and i > text.index('"result"'))
    bad = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
    path.write_text(bad)  # still valid JSON, one number changed
    calls.clear()
    with pytest.warns(RuntimeWarning, match=r"damaged.*kept as .*\.damaged"):
        again, counts = run_grid(cells, cell_fn, tmp_path, show_progress=False)
    assert calls == [1] and counts == {"run": 1, "skipped": 2}
    assert again == first
    assert (tmp_path / (path.name + ".damaged")).read_text() == bad  # nothing lost
