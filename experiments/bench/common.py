"""The timing harness every benchmark shares: variants side by side, environment, JSON, tables, CLI.

These machines are shared and noisy, so variants are compared side by side in one process: timed
round-robin (one call of each per repetition, the order rotated every repetition, so that a burst of
load hits all of them alike and none always runs after the same one), warm-up calls excluded,
compilation timed apart, the median over repetitions reported. The ratios between variants of one
run are the figures to quote, not absolute times. Nothing here touches the environment at import.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.devices import host_mesh, mesh_devices, use_host_devices

__all__ = [
    "DEFAULT_OUT",
    "Timing",
    "bench_main",
    "code_fingerprint",
    "compile_timed",
    "compiled_thunk",
    "env_info",
    "format_table",
    "host_mesh",
    "max_abs_diff",
    "mesh_devices",
    "run_python",
    "time_interleaved",
    "time_with_matmul",
    "to_jsonable",
    "write_json",
]

DEFAULT_OUT = Path("results") / "bench"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one variant: the median and every repetition (warm-up excluded)."""

    median_s: float
    min_s: float
    times_s: tuple[float, ...]


def compile_timed(fn: Callable, *args: Any) -> tuple[Any, float]:
    """``(compiled, seconds)``: ``fn`` (jitted, or ``jax.jit``-ed here) lowered and compiled for
    ``args``, and the time that took."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def compiled_thunk(fn: Callable, *args: Any) -> tuple[Callable[[], Any], Any, float]:
    """``(thunk, compiled, compile seconds)``; ``thunk()`` runs the executable on ``args``."""
    compiled, seconds = compile_timed(fn, *args)
    return (lambda: compiled(*args)), compiled, seconds


def _block(x: Any) -> None:
    leaves = [y for y in jax.tree.leaves(x) if isinstance(y, jax.Array)]
    if leaves:
        jax.block_until_ready(leaves)


def time_interleaved(
    thunks: Mapping[str, Callable[[], Any]], *, reps: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Times zero-argument callables round-robin; returns each one's :class:`Timing`.

    Each repetition calls every thunk once and blocks on the JAX arrays it returns (a torch or
    numpy result is ready when the call returns); the order rotates by one every repetition (a
    millisecond variant that always followed a large matmul measured 1.5x slower than an identical
    one: cold caches). ``warmup`` rounds run first, in order, and are discarded.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    names = list(thunks)
    for _ in range(warmup):
        for name in names:
            _block(thunks[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(reps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            _block(thunks[name]())
            times[name].append(time.perf_counter() - t0)
    return {n: Timing(statistics.median(v), min(v), tuple(v)) for n, v in times.items()}


def time_with_matmul(
    thunks: Mapping[str, Callable[[], Any]], sizes: Sequence[int], *, reps: int, warmup: int = 1
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Times ``thunks`` round-robin with square float32 matmuls, the machine's FLOP/s reference.

    The reference is the best median GFLOP/s over ``sizes`` (on a loaded machine a large product
    can suffer more than a smaller one; the reference is what the machine reaches).

    Returns:
      ``(timings, matmul)``: every thunk's and every ``matmul_<n>``'s timing, and ``{"gflops",
      "best", "per_size_gflops", "times_s"}``.
    """
    mm, flops = {}, {}
    for n in sizes:
        a, b = jax.random.normal(jax.random.key(n), (2, n, n), jnp.float32)
        mm[f"matmul_{n}"] = compiled_thunk(jnp.matmul, a, b)[0]
        flops[f"matmul_{n}"] = 2.0 * n**3
    timings = time_interleaved({**thunks, **mm}, reps=reps, warmup=warmup)
    per = {name: f / timings[name].median_s / 1e9 for name, f in flops.items()}
    best = max(per, key=per.get)
    times = {name: timings[name].times_s for name in mm}
    return timings, {"gflops": per[best], "best": best, "per_size_gflops": per, "times_s": times}


def max_abs_diff(tree_a: Any, tree_b: Any) -> float:
    """``max |a - b|`` over the leaves of two trees of the same structure."""
    pairs = zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    return max(float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))) for a, b in pairs)


def code_fingerprint(*roots: str | os.PathLike) -> str:
    """A hash of every ``.py`` file under ``roots`` (names and contents), as they are now.

    The working tree is edited by others while benchmarks run: a benchmark comparing processes
    records this in each, so that results of different code are never compared (RESULTS.md, 6).
    Default roots: ``abo_jax`` and this folder.
    """
    roots = roots or (ROOT / "abo_jax", Path(__file__).resolve().parent)
    digest = hashlib.sha256()
    for root in map(Path, roots):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_python(code: str, *args: str, env: Mapping[str, str] | None = None, timeout_s: float):
    """Runs ``python -c code args`` in a fresh process (this checkout first on the path); returns
    its last stdout line parsed as JSON. For what must be set before JAX starts (device counts)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def env_info() -> dict[str, Any]:
    """Machine and software the figures were measured on (recorded in every JSON)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": _loadavg(),
        "git_commit": _git_commit(),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def to_jsonable(x: Any) -> Any:
    """Dataclasses, NamedTuples, numpy/JAX scalars and arrays as JSON values (NaN/inf -> None)."""
    if is_dataclass(x) and not isinstance(x, type):
        return to_jsonable(asdict(x))
    if isinstance(x, tuple) and hasattr(x, "_asdict"):
        return to_jsonable(x._asdict())
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array, np.generic)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically (a temporary file in the folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(v: Any, spec: str | None) -> str:
    if v is None:
        return "-"
    if spec and isinstance(v, (int, float, np.number)):
        return format(v, spec)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str | None]]):
    """A plain-text table; ``columns``: ``(key, header, format spec or None)`` each."""
    cells = [[h for _, h, _ in columns]] + [
        [_cell(r.get(k), s) for k, _, s in columns] for r in rows
    ]
    widths = [max(len(r[j]) for r in cells) for j in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_main(argv: Sequence[str] | None, bench: Any, *, skip_on=(), env_of=None) -> dict:
    """The ``main`` of every benchmark: parse the CLI, run, print the table, write the JSON.

    ``bench`` is the benchmark's module: ``NAME``, ``TITLE``, a docstring (its first line is the
    CLI's description), ``get_config(quick, **options) -> dataclass``, ``run(config, reps) ->
    dict`` (``reps`` None unless ``--reps`` was given), ``COLUMNS`` for ``result["rows"]`` or
    ``table(result) -> str``, optionally ``OPTIONS`` (``{flag: argparse keywords}``, passed to
    ``get_config`` by their ``dest``), ``notes(config, result) -> lines`` and ``json_name(config)``
    (default ``NAME``). Writes ``<out>/<json name>.json`` with ``benchmark``, ``quick``, ``config``, ``env`` (with the load average
    at the start) and the result's keys.

    Args:
      argv: the command line; ``None`` reads ``sys.argv``.
      bench: the module (``sys.modules[__name__]``).
      skip_on: exceptions meaning "cannot run here" (a missing optional dependency): the JSON then
        holds ``skipped`` with the message.
      env_of: ``env_of(result)`` where the figures were measured in other processes.
    """
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.bench.{bench.NAME}", description=bench.__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    p.add_argument(
        "--host-devices",
        type=int,
        default=1,
        help="JAX CPU devices for the process (jax_num_cpu_devices, set before JAX starts);"
        " benchmarks of the round also run it on a mesh of them",
    )
    options = getattr(bench, "OPTIONS", {})
    for flag, kwargs in options.items():
        p.add_argument(flag, **kwargs)
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    use_host_devices(args.host_devices)
    extra = {flag.lstrip("-").replace("-", "_") for flag in options}
    config = bench.get_config(args.quick, **{k: getattr(args, k) for k in extra})
    out: dict[str, Any] = {"benchmark": bench.NAME, "quick": args.quick, "config": asdict(config)}
    path = (
        args.out / f"{bench.json_name(config) if hasattr(bench, 'json_name') else bench.NAME}.json"
    )
    load_at_start = _loadavg()
    try:
        result = bench.run(config, args.reps)
    except skip_on as e:
        print(f"== {bench.TITLE}: skipped: {e}")
        out.update(skipped=str(e), env=env_info())
        write_json(path, out)
        return out
    env = {**(env_info() if env_of is None else env_of(result)), "loadavg_at_start": load_at_start}
    out.update(env=env, **result)
    table = bench.table(result) if hasattr(bench, "table") else None
    table = table or format_table(result["rows"], bench.COLUMNS)
    notes = [*(bench.notes(config, result) if hasattr(bench, "notes") else ())]
    print(f"== {bench.TITLE} ==")
    print(
        f"{env['date_utc']}  {env['cpu']}  nproc={env['nproc']}  {env['backend']} jax {env['jax']}"
    )
    print(f"load average (1, 5, 15 min): {env['loadavg']} at the end, {load_at_start} at the start")
    print("config:", json.dumps(to_jsonable(config)))
    print(table)
    for note in [*notes, f"targets: {json.dumps(to_jsonable(result.get('targets')))}"]:
        print("note:", note)
    print(f"wrote {write_json(path, out)}", flush=True)
    return out
