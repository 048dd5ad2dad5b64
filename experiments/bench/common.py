"""Shared benchmark machinery: interleaved timing, matmul peak, environment, JSON and tables.

Every benchmark compares its variants side by side in one process. The machines are shared and
noisy, so variants are timed round-robin (one call of each per repetition, so that a burst of load
hits all of them alike), warm-up calls are excluded, compile time is measured separately (lowering
+ compilation of the jitted function), and the figure reported is the median over repetitions.
Ratios between variants of the same run are the numbers to quote, not absolute times.
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

from experiments.devices import host_mesh, mesh_devices, use_host_devices  # noqa: F401 - re-exported

__all__ = [
    "Timing",
    "bench_main",
    "bench_parser",
    "compile_timed",
    "code_fingerprint",
    "compiled_thunk",
    "env_info",
    "format_table",
    "matmul_flops",
    "matmul_peak",
    "matmul_reference",
    "matmul_thunk",
    "print_report",
    "time_interleaved",
    "time_with_matmul",
    "times_of",
    "to_jsonable",
    "write_json",
]

DEFAULT_OUT = Path("results") / "bench"


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one variant: the median and every repetition (warm-up excluded)."""

    median_s: float
    min_s: float
    times_s: tuple[float, ...]


def compile_timed(fn: Callable, *args: Any, **kwargs: Any):
    """Lowers and compiles ``jax.jit(fn)`` (or an already-jitted ``fn``) for ``args``.

    Returns:
      ``(compiled, seconds)``: the compiled executable (call it with the same arguments) and the
      time lowering + compilation took.
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def compiled_thunk(fn: Callable, *args: Any):
    """:func:`compile_timed` of ``fn`` for ``args``, as a zero-argument thunk to time.

    Returns:
      ``(thunk, compiled, compile_seconds)``; ``thunk()`` calls the executable on ``args``.
    """
    compiled, seconds = compile_timed(fn, *args)
    return (lambda: compiled(*args)), compiled, seconds


def _block(x: Any) -> None:
    leaves = [y for y in jax.tree.leaves(x) if isinstance(y, jax.Array)]
    if leaves:
        jax.block_until_ready(leaves)


def time_interleaved(
    thunks: Mapping[str, Callable[[], Any]],
    *,
    reps: int = 5,
    warmup: int = 1,
    min_time_s: float = 0.0,
) -> dict[str, Timing]:
    """Times several zero-argument callables round-robin; returns each one's median.

    Each repetition calls every thunk once, in turn, and blocks on the JAX arrays it returns (a torch
    or numpy result is already computed when the call returns); the turn order rotates by one each
    repetition, so that no variant always follows the same one (a large matmul leaves the caches
    cold for whatever runs next: a millisecond variant that always followed it measured 1.5x slower
    than an identical one). ``warmup`` rounds run first, in the given order, and are discarded.
    When ``min_time_s`` is positive, repetitions continue past ``reps`` until the slowest variant
    has accumulated that much time (at most ``4 * reps`` repetitions).
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    names = list(thunks)
    for _ in range(warmup):
        for name in names:
            _block(thunks[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    i = 0
    while True:
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            _block(thunks[name]())
            times[name].append(time.perf_counter() - t0)
        i += 1
        if i >= reps and (min(sum(v) for v in times.values()) >= min_time_s or i >= 4 * reps):
            break
    return {name: Timing(statistics.median(v), min(v), tuple(v)) for name, v in times.items()}


def times_of(timings: Mapping[str, Timing]) -> dict[str, tuple[float, ...]]:
    """Every repetition's seconds per variant (for the JSON)."""
    return {name: t.times_s for name, t in timings.items()}


def time_with_matmul(
    thunks: Mapping[str, Callable[[], Any]],
    matmul_sizes: Sequence[int],
    *,
    reps: int,
    warmup: int = 1,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Times ``thunks`` round-robin together with square matmuls, the machine's FLOP/s reference.

    Returns:
      ``(timings, matmul)``: the timings of every thunk and of every ``matmul_<n>``, and
      :func:`matmul_peak`'s summary plus each size's repetitions (``matmul["times_s"]``).
    """
    mm_thunks, mm_flops = matmul_reference(tuple(matmul_sizes))
    timings = time_interleaved({**thunks, **mm_thunks}, reps=reps, warmup=warmup)
    matmul = matmul_peak(timings, mm_flops)
    matmul["times_s"] = {name: timings[name].times_s for name in mm_flops}
    return timings, matmul


def matmul_flops(n: int) -> float:
    """FLOPs of an ``(n, n) @ (n, n)`` product: ``2 n^3``."""
    return 2.0 * n**3


def matmul_thunk(n: int = 2048, dtype: Any = jnp.float32, *, seed: int = 0):
    """A jitted ``(n, n) @ (n, n)`` product as a thunk, the machine's reference FLOP/s.

    Time it in the same :func:`time_interleaved` call as the code it is compared with, so both see
    the same load. The matrices are already on the device; only the product is timed.

    Returns:
      ``(thunk, flops, compile_seconds)``.
    """
    key_a, key_b = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    compiled, compile_s = compile_timed(jnp.matmul, a, b)
    return (lambda: compiled(a, b)), matmul_flops(n), compile_s


def matmul_reference(sizes=(512, 1024, 2048), dtype: Any = jnp.float32):
    """Thunks for square matmuls of several sizes, to time alongside the code under test.

    The machine's matmul FLOP/s is the best median over the sizes (:func:`matmul_peak`): on a loaded
    machine a large multi-threaded product can suffer more than a smaller one, and the reference
    should be what the machine can reach, not one unlucky size.

    Returns:
      ``({"matmul_<n>": thunk}, {"matmul_<n>": flops})``.
    """
    thunks, flops = {}, {}
    for n in sizes:
        thunk, f, _ = matmul_thunk(n, dtype)
        thunks[f"matmul_{n}"], flops[f"matmul_{n}"] = thunk, f
    return thunks, flops


def matmul_peak(timings: Mapping[str, Timing], flops: Mapping[str, float]) -> dict[str, Any]:
    """``{"gflops": best, "size": name, "per_size": {name: GFLOP/s}}`` from :func:`matmul_reference`."""
    per = {name: flops[name] / timings[name].median_s / 1e9 for name in flops}
    best = max(per, key=per.get)
    return {"gflops": per[best], "best": best, "per_size_gflops": per}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_fingerprint(*roots: str | os.PathLike) -> str:
    """A hash of every ``.py`` file under ``roots`` (names and contents), as they are now.

    The benchmarks run in a working tree that others edit: a benchmark that compares the results of
    several processes records this in each, so that results of different code are never compared.
    Default roots: the ``abo_jax`` package and this benchmark folder.
    """
    if not roots:
        here = Path(__file__).resolve().parent
        roots = (here.parents[1] / "abo_jax", here)
    digest = hashlib.sha256()
    for root in map(Path, roots):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _loadavg() -> list[float] | None:
    """``uptime``'s 1, 5 and 15 minute load averages (the machine is shared)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def env_info() -> dict[str, Any]:
    """Machine and software the figures were measured on (for the JSON and the table header)."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": _loadavg(),
        "git_commit": _git_commit(),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def to_jsonable(x: Any) -> Any:
    """Converts dataclasses, NamedTuples, numpy/JAX scalars and arrays to JSON-ready values."""
    if is_dataclass(x) and not isinstance(x, type):
        return to_jsonable(asdict(x))
    if isinstance(x, tuple) and hasattr(x, "_asdict"):
        return to_jsonable(x._asdict())
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        return to_jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/Inf
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, type) or hasattr(x, "dtype"):
        return str(x)
    return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically (temporary file in the same folder, then rename)."""
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


def format_cell(v: Any, spec: str | None) -> str:
    """One table cell: ``-`` for None, ``spec`` for numbers, 4 significant digits for floats."""
    if v is None:
        return "-"
    if spec and isinstance(v, (int, float, np.number)):
        return format(v, spec)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str | None]]):
    """A plain-text table; ``columns`` is a list of ``(key, header, format spec or None)``."""
    cells = [[header for _, header, _ in columns]]
    cells += [[format_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(title: str, config: Any, env: Mapping[str, Any], table: str, notes=()) -> None:
    """Prints a benchmark's configuration, environment, table and notes to stdout."""
    print(f"== {title} ==")
    print(
        f"{env['date_utc']}  {env['cpu']}  nproc={env['nproc']}  backend={env['backend']} "
        f"({env['device_kind']}, {len(env['devices'])} device(s))  jax {env['jax']}"
        + (f"  torch {env['torch']}" if "torch" in env else "")
    )
    load = env.get("loadavg")
    if load is not None:
        print(
            f"load average (1, 5, 15 min): {load} at the end, {env.get('loadavg_at_start')} at the start"
        )
    print("config:", json.dumps(to_jsonable(config)))
    print(table)
    for note in notes:
        print("note:", note)
    sys.stdout.flush()


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The CLI every benchmark shares: ``--quick``, ``--out DIR``, ``--reps N``, ``--host-devices N``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs (no figures)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    p.add_argument(
        "--host-devices",
        type=int,
        default=1,
        help="run with this many JAX CPU devices (jax_num_cpu_devices); rounds that take a mesh"
        " also run sharded over them",
    )
    return p


def bench_main(
    argv: Sequence[str] | None,
    bench: Any,
    *,
    env_of: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    skip_on: tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """The ``main`` every benchmark shares: parse the CLI, run, print the report, write the JSON.

    ``bench`` is the benchmark's module, which defines ``NAME``, ``TITLE``, a docstring (its first
    line describes the CLI), ``get_config(quick) -> Config`` (a dataclass), ``run(config, reps) ->
    result`` (``reps`` is None unless ``--reps`` was given), ``notes(config, result, env) -> lines``
    or constant ``NOTES``, and either ``table(result) -> str`` or ``COLUMNS`` for ``result["rows"]``
    (:func:`format_table`). Writes ``<out>/<NAME>.json`` with ``benchmark``, ``quick``, ``config``,
    ``env`` (including the load average at the start of the run) and the keys of the result; the
    notes printed end with the round under test (``result["round_impl"]``) and the targets.

    Args:
      argv: the command line (``--quick``, ``--out``, ``--reps``; see :func:`bench_parser`).
      bench: the benchmark module (``sys.modules[__name__]``).
      env_of: ``env_of(result)``, where the figures were measured elsewhere (a subprocess);
        default :func:`env_info` in this process.
      skip_on: exceptions that mean "cannot run here" (a missing optional dependency): the JSON then
        holds ``skipped`` with the message instead of results.
    """
    args = bench_parser(bench.__doc__.splitlines()[0]).parse_args(argv)
    use_host_devices(args.host_devices)
    config = bench.get_config(args.quick)
    out: dict[str, Any] = {"benchmark": bench.NAME, "quick": args.quick, "config": asdict(config)}
    path = args.out / f"{bench.NAME}.json"
    load_at_start = _loadavg()
    try:
        result = bench.run(config, args.reps)
    except skip_on as e:
        print(f"== {bench.TITLE}: skipped: {e}")
        out.update(skipped=str(e), env=env_info())
        write_json(path, out)
        return out
    env = dict(env_info() if env_of is None else env_of(result))
    env["loadavg_at_start"] = load_at_start
    out.update(env=env, **result)
    if hasattr(bench, "table"):
        table = bench.table(result)
    else:
        table = format_table(result["rows"], bench.COLUMNS)
    notes = bench.notes(config, result, env) if hasattr(bench, "notes") else bench.NOTES
    notes = [*notes, f"targets: {result.get('targets')}"]
    if "round_impl" in result:
        from experiments.bench.rounds import describe

        notes.insert(0, f"round: {describe(result['round_impl'])}")
    print_report(bench.TITLE, config, env, table, notes)
    print(f"wrote {write_json(path, out)}")
    return out
