"""Runs one program as N processes of JAX's distributed runtime on this host.

``python -m abo_jax.launch --processes 2 [--devices-per-process K] [--timeout S] -- CMD ...``
starts ``CMD`` N times, each with the variables :func:`abo_jax.distributed_from_env` reads
(coordinator on ``127.0.0.1`` at a free port, process id, process count, CPU devices per
process) and the proxy variables removed (gRPC would send the coordinator's loopback traffic
to a proxy). The processes share one process group: when one fails, or the time limit passes,
the whole group is stopped (SIGTERM, then SIGKILL), because a multi-process JAX job whose rank
is stuck in a collective never ends by itself. The exit status is the first failure's (124 on
the time limit), 0 when every process succeeds.

For tests and for trying several processes on a workstation; on a cluster the same program runs
under Slurm, ``mpirun`` or a TPU slice with ``ABO_JAX_DISTRIBUTED=auto`` (README, "Several
processes").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from abo_jax.distributed import ENV

__all__ = ["PROXY_VARIABLES", "free_port", "process_environ", "launch", "main"]

#: Removed from every process's environment (jax-ml/jax#22995: a proxy can hang the coordinator).
PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "grpc_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "GRPC_PROXY",
    "NO_PROXY",
)
TIMEOUT_STATUS = 124  # as timeout(1)
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def process_environ(
    base: Mapping[str, str], *, index: int, count: int, port: int, devices: int | None
) -> dict[str, str]:
    """The environment of process ``index`` of ``count``: ``base`` without proxies, plus the
    runtime's variables (:data:`abo_jax.distributed.ENV`)."""
    env = {k: v for k, v in base.items() if k not in PROXY_VARIABLES}
    env.pop(ENV["mode"], None)
    env[ENV["coordinator"]] = f"127.0.0.1:{port}"
    env[ENV["num_processes"]] = str(count)
    env[ENV["process_id"]] = str(index)
    if devices is not None:
        env[ENV["cpu_devices"]] = str(devices)
    return env


def _stop(group: int, procs: Sequence[subprocess.Popen]) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (wait or 0.0)
        while wait and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
    for p in procs:
        p.wait()


def launch(
    command: Sequence[str],
    *,
    processes: int,
    devices_per_process: int | None = None,
    timeout: float = 600.0,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Runs ``command`` as ``processes`` processes of one distributed JAX run; returns the status.

    Args:
      command: the program and its arguments (each process runs it as is).
      processes: how many processes (at least 1).
      devices_per_process: CPU devices of each process (``jax_num_cpu_devices``); None leaves
        JAX's default.
      timeout: seconds before the whole process group is stopped (status 124).
      environ: the environment to start from (default ``os.environ``).

    Returns:
      0 when every process exits with 0; else the status of the first one to fail (a signal
      ``s`` as ``128 + s``), or 124 when the time limit passed first.
    """
    if not command:
        raise ValueError("command: give the program to run after '--'")
    if int(processes) < 1:
        raise ValueError(f"--processes: expected at least 1, got {processes}")
    if devices_per_process is not None and int(devices_per_process) < 1:
        raise ValueError(f"--devices-per-process: expected at least 1, got {devices_per_process}")
    if not timeout > 0:
        raise ValueError(f"--timeout: expected a positive number of seconds, got {timeout}")
    base = os.environ if environ is None else environ
    port = free_port()
    procs: list[subprocess.Popen] = []
    group = 0
    status = None
    try:
        for index in range(int(processes)):
            env = process_environ(
                base, index=index, count=int(processes), port=port, devices=devices_per_process
            )
            procs.append(subprocess.Popen(list(command), env=env, process_group=group))
            group = group or procs[0].pid  # the first process leads the group, the others join
        deadline = time.monotonic() + float(timeout)
        running = set(range(len(procs)))
        while running and status is None:
            for i in sorted(running):
                code = procs[i].poll()
                if code is None:
                    continue
                running.discard(i)
                if code != 0:
                    status = code if code > 0 else 128 - code
                    print(
                        f"abo_jax.launch: process {i} exited with status {code}; stopping the "
                        "others",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
            if status is None and running and time.monotonic() > deadline:
                status = TIMEOUT_STATUS
                print(
                    f"abo_jax.launch: time limit of {timeout:g} s passed with processes "
                    f"{sorted(running)} still running; stopping them all",
                    file=sys.stderr,
                    flush=True,
                )
            if status is None and running:
                time.sleep(0.05)
    finally:
        if procs and any(p.poll() is None for p in procs):
            _stop(group, procs)
    return 0 if status is None else status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m abo_jax.launch",
        description=__doc__.splitlines()[0],
        usage="%(prog)s --processes N [--devices-per-process K] [--timeout S] -- COMMAND ...",
    )
    parser.add_argument(
        "--processes", type=int, required=True, help="number of processes to start (at least 1)"
    )
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="JAX CPU devices per process (jax_num_cpu_devices; default: JAX's, one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds before every process is stopped, status 124 (default 600)",
    )
    args = parser.parse_args(argv)
    if not command:
        parser.error("give the program to run after '--', e.g. -- python -m experiments.paper")
    # a launcher stopped by SIGTERM stops its processes too (the finally clause of launch)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return launch(
            command,
            processes=args.processes,
            devices_per_process=args.devices_per_process,
            timeout=args.timeout,
        )
    except ValueError as err:
        parser.error(str(err))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
