"""Several processes of JAX's distributed runtime: the launcher, and one run over 2 processes.

The multi-process run (``multiprocess_subprocess.py`` under ``python -m abo_jax.launch``, on
127.0.0.1, bounded by the launcher's time limit) stops after round 2 with its checkpoint written by
process 0, resumes from it on both processes, and must give the numbers of the same run in this process
on one device (float64: only summation order differs), ``theory.round_metrics`` included, the
same on both processes.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import abo_jax as aj
from abo_jax import launch
from abo_jax.distributed import ENV, distributed_from_env
from abo_jax.simulation.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
LAUNCH_TIMEOUT = 240  # seconds for one launch: a stuck rank fails the test instead of hanging it


def _launch(*args, env=None, timeout=LAUNCH_TIMEOUT):
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "abo_jax.launch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE,
        timeout=timeout + 30,  # the launcher's own limit acts first
    )


def test_each_process_gets_its_id_the_count_a_loopback_port_and_no_proxy(tmp_path):
    script = (
        "import os, json, sys; keys = [k for k in os.environ if k.startswith('ABO_JAX_') "
        "or 'proxy' in k.lower()]; json.dump({k: os.environ[k] for k in keys}, "
        f"open(os.path.join({str(tmp_path)!r}, os.environ['ABO_JAX_PROCESS_ID']), 'w'))"
    )
    env = dict(os.environ, http_proxy="http://proxy:1", HTTPS_PROXY="http://proxy:2")
    env[ENV["mode"]] = "auto"  # a cluster setting in the caller's shell does not leak in
    proc = _launch("--processes", "3", "--devices-per-process", "2", "--", sys.executable, "-c",
                   script, env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    seen = [json.loads((tmp_path / str(i)).read_text()) for i in range(3)]
    port = seen[0][ENV["coordinator"]]
    assert port.startswith("127.0.0.1:") and int(port.split(":")[1]) > 0
    for i, env_i in enumerate(seen):
        assert env_i == {
            ENV["coordinator"]: port,
            ENV["num_processes"]: "3",
            ENV["process_id"]: str(i),
            ENV["cpu_devices"]: "2",
        }


def test_the_first_failure_gives_the_status_and_stops_the_others(tmp_path):
    # Process 1 fails at once; process 0 would sleep for a minute: it is stopped.
    script = (
        "import os, sys, time; i = int(os.environ['ABO_JAX_PROCESS_ID']);"
        "sys.exit(7) if i == 1 else time.sleep(60)"
    )
    t0 = time.monotonic()
    proc = _launch("--processes", "2", "--", sys.executable, "-c", script, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert "process 1 exited with status 7" in proc.stderr
    assert time.monotonic() - t0 < 30


def test_the_time_limit_stops_the_whole_process_group(tmp_path):
    # Every process writes its pid and sleeps (a stuck rank): the limit ends them all, status 124.
    folder = repr(str(tmp_path))
    script = f"import os, time; open(os.path.join({folder}, str(os.getpid())), 'w').close()"
    script += "; time.sleep(120)"
    proc = _launch("--processes", "2", "--timeout", "3", "--", sys.executable, "-c", script,
                   timeout=60)  # fmt: skip
    assert proc.returncode == launch.TIMEOUT_STATUS, proc.stderr
    assert "time limit of 3 s" in proc.stderr
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_launcher_usage_errors(capsys):
    for args, message in (
        (["--processes", "0", "--", "true"], "--processes"),
        (["--processes", "2"], "after '--'"),
        (["--processes", "2", "--timeout", "0", "--", "true"], "--timeout"),
        (["--processes", "2", "--devices-per-process", "0", "--", "true"], "--devices-per"),
    ):
        with pytest.raises(SystemExit) as exit_:
            launch.main(args)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, args
    with pytest.raises(SystemExit):
        launch.main(["--help"])
    help_text = capsys.readouterr().out
    for option in ("--processes", "--devices-per-process", "--timeout"):
        assert option in help_text


def test_distributed_from_env_does_nothing_without_its_variables_and_names_bad_ones():
    assert distributed_from_env({}) is False
    with pytest.raises(ValueError, match=ENV["num_processes"]):
        distributed_from_env({ENV["coordinator"]: "127.0.0.1:1", ENV["process_id"]: "0"})
    with pytest.raises(ValueError, match="expected an integer"):
        distributed_from_env(
            {ENV["coordinator"]: "127.0.0.1:1", ENV["num_processes"]: "two", ENV["process_id"]: "0"}
        )
    with pytest.raises(ValueError, match="0 <= process id"):
        distributed_from_env(
            {ENV["coordinator"]: "127.0.0.1:1", ENV["num_processes"]: "2", ENV["process_id"]: "2"}
        )
    with pytest.raises(ValueError, match="'auto'"):
        distributed_from_env({ENV["mode"]: "slurm"})


def test_two_processes_resume_and_give_the_one_device_numbers(tmp_path):
    sys.path.insert(0, str(HERE))
    import multiprocess_subprocess as script

    ckpt, out = tmp_path / "run.ckpt", tmp_path / "history"
    proc = _launch("--processes", "2", "--", sys.executable, "multiprocess_subprocess.py",
                   str(ckpt), str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    histories = [dict(np.load(f"{out}{i}.npz")) for i in range(2)]
    assert histories[0].keys() == histories[1].keys()
    for name in histories[0]:  # metrics and evaluations: the same on every process
        np.testing.assert_array_equal(histories[0][name], histories[1][name], err_msg=name)

    data, test = script.problem()
    want, state = aj.run(
        script.simulation(None), data, test, rounds=script.ROUNDS, key=jax.random.key(5),
        progress=False,
    )  # fmt: skip
    got = histories[0]
    assert got["round"].tolist() == list(range(1, script.ROUNDS + 1))
    assert {"weak_mismatch_layers", "strong_mismatch_b", "sp_tail"} <= set(got)  # round_metrics
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    saved, history, _ = load_checkpoint(ckpt, state)  # the end state, written by process 0
    assert [int(h["round"]) for h in history] == list(range(1, script.ROUNDS + 1))
    for a, b in zip(jax.tree.leaves(saved.clients), jax.tree.leaves(state.clients), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
