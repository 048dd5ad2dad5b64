"""Checkpoints that vouch for themselves: a content checksum, a fingerprint of the run, an atomic write.

File format (version 2), three text lines then the body::

    ABO-JAX-CHECKPOINT 2
    sha256 <hex digest of everything after this line>
    {"body_bytes": ..., "fingerprint": ..., "round": ..., "history_rounds": ...}   (JSON, one line)
    <body: a pickle of {"leaves", "history", "extra"}>

The checksum is verified before the body is unpickled, so a changed, truncated or foreign file is
refused with a :class:`CheckpointError` naming it and never reaches ``pickle``. The body is still a
pickle: load only checkpoints you wrote (or trust).

A *fingerprint* (:func:`run_fingerprint`) records what defines a run (the state's structure, the
initial state, the data, the round's program, the user's own description) so that a resume with
other arguments is refused, naming the field that differs, instead of continuing another run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from abo_jax.distributed import broadcast_from_primary, fetch, global_digests, is_primary

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_header",
    "run_fingerprint",
    "compare_fingerprints",
    "history_rounds",
]

MAGIC = b"ABO-JAX-CHECKPOINT 2\n"
_HEADER_LIMIT = 1 << 24  # a header line longer than 16 MiB is not ours

#: What each derived fingerprint field stands for (in refusal messages).
FIELDS = {
    "user": "the run's description passed as fingerprint=",
    "state": "the run state's structure (model, LoRA ranks, operator state, optimizer state, "
    "num_runs)",
    "init": "the initial state (seed / key, base and LoRA initialization, weights, hparams, "
    "lora_scale)",
    "data": "the clients' data (shapes, dtypes or values)",
    "test": "the test set (shapes, dtypes or values)",
    "program": "the round's program (operator or its arguments, optimizer hyper-parameters, local "
    "epochs, batch size, sampling, metrics_fn)",
    "options": "the loop's options",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or does not belong to this run; names the file."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        super().__init__(f"checkpoint {self.path}: {message}")


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        return _jsonable(a.item()) if a.ndim == 0 else _jsonable(a.tolist())
    if isinstance(x, float) and x != x:
        return "nan"
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


# ------------------------------------------------------------------------------------- fingerprint


def _hash_arrays(leaves) -> str:
    h = hashlib.sha256()
    leaves = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    # Split over several processes (the clients' data): hashed where it lies, never gathered.
    split = [
        i
        for i, x in enumerate(leaves)
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)
    ]
    digests = dict(zip(split, global_digests([leaves[i] for i in split]), strict=True))
    rest = [i for i in range(len(leaves)) if i not in digests]
    host = dict(zip(rest, fetch([leaves[i] for i in rest]), strict=True))
    for i in range(len(leaves)):
        if i in digests:
            h.update(digests[i])
            continue
        a = host[i]
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _structure(tree) -> str:
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [(str(getattr(x, "dtype", type(x).__name__)), tuple(np.shape(x))) for x in leaves]
    return hashlib.sha256(f"{treedef}|{shapes}".encode()).hexdigest()


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _canonical(jaxpr: Any, out: list[str], consts: list[Any]) -> None:
    """Appends a canonical text of ``jaxpr`` to ``out``: variables numbered in order of first use,
    sub-jaxprs written out in place (the printer's names for shared sub-jaxprs depend on which
    traces JAX's caches happened to share), object addresses removed."""
    names: dict[Any, str] = {}

    def var(x):
        if isinstance(x, jex_core.Literal):
            return f"{x.val!r}:{x.aval.str_short()}"
        if x not in names:
            names[x] = f"v{len(names)}:{x.aval.str_short()}"
        return names[x]

    def param(value):
        if isinstance(value, jex_core.ClosedJaxpr):
            consts.extend(value.consts)
            sub: list[str] = []
            _canonical(value.jaxpr, sub, consts)
            return "{" + " ".join(sub) + "}"
        if isinstance(value, jex_core.Jaxpr):
            sub = []
            _canonical(value, sub, consts)
            return "{" + " ".join(sub) + "}"
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(param(v) for v in value) + ")"
        return _ADDRESS.sub("", repr(value))

    out.append("in " + ",".join(var(x) for x in [*jaxpr.constvars, *jaxpr.invars]) + ";")
    for eqn in jaxpr.eqns:
        args = ",".join(var(x) for x in eqn.invars)
        params = ";".join(f"{k}={param(eqn.params[k])}" for k in sorted(eqn.params))
        outs = ",".join(var(x) for x in eqn.outvars)
        out.append(f"{outs}={eqn.primitive.name}[{params}]({args});")
    out.append("out " + ",".join(var(x) for x in jaxpr.outvars) + ";")


def _program_hash(fn, *args) -> str:
    """sha256 of a canonical text of ``fn``'s jaxpr and of its captured constants."""
    closed = jax.make_jaxpr(fn)(*args)
    text: list[str] = []
    consts = list(closed.consts)
    _canonical(closed.jaxpr, text, consts)
    h = hashlib.sha256("\n".join(text).encode())
    h.update(_hash_arrays(consts).encode())
    return h.hexdigest()


def run_fingerprint(
    sim: Any,
    state: Any,
    data: Any,
    test: Any = None,
    *,
    options: Mapping[str, Any] | None = None,
    user: Any = None,
) -> dict[str, Any]:
    """What defines a run, as short hashes, to store in a checkpoint and compare on resume.

    Args:
      sim: a :class:`~abo_jax.FederatedRound` (its ``apply`` is traced once) or a
        :class:`~abo_jax.simulation.Simulation` (its un-jitted ``round_step``).
      state: the run's *initial* state (``sim.init(key, data, ...)``, before any resume).
      data: the clients' :class:`~abo_jax.data.ClientData`.
      test: ``(x, y)`` test set, or None.
      options: loop options that change the history (e.g. ``{"eval_every": 1}``).
      user: any JSON-able description of the run (e.g. an experiment's cell dict), compared key by
        key.

    Returns:
      ``{"state", "init", "data", "test", "program", "jax", "options", "user"}``: ``state`` hashes
      the structure, shapes and dtypes (model, ranks, operator and optimizer state); ``init`` the
      initial values (seed / key, initializations, weights, hparams, lora_scale); ``program`` the
      round's jaxpr (operator and its arguments, optimizer hyper-parameters as traced constants,
      local epochs, batch size, sampling, ``metrics_fn``), compared only under the same JAX version
      (``jax``).
    """
    return {
        "state": _structure(state),
        "init": _hash_arrays(jax.tree.leaves(state)),
        "data": _hash_arrays(jax.tree.leaves(data)),
        "test": None if test is None else _hash_arrays(jax.tree.leaves(tuple(test))),
        "program": _program_hash(getattr(sim, "round_step", None) or sim.apply, state, data, None),
        "jax": jax.__version__,
        "options": _jsonable(dict(options or {})),
        "user": _jsonable(user),
    }


def _differs(stored: Any, current: Any, where: str) -> str | None:
    """The first place where two JSON-able values differ, as ``where[key]: stored x, now y``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for k in sorted(set(stored) | set(current)):
            if k not in stored:
                return f"{where}[{k!r}]: absent from the checkpoint, now {current[k]!r}"
            if k not in current:
                return f"{where}[{k!r}]: stored {stored[k]!r}, absent now"
            found = _differs(stored[k], current[k], f"{where}[{k!r}]")
            if found:
                return found
        return None
    if stored != current:
        return f"{where}: stored {stored!r}, now {current!r}"
    return None


def compare_fingerprints(path: str | os.PathLike, stored: Any, current: Mapping[str, Any]) -> None:
    """Raises :class:`CheckpointError` naming the first field of ``current`` that ``stored`` lacks
    or holds with another value (``program`` only when both were traced by the same JAX)."""
    if not isinstance(stored, Mapping):
        raise CheckpointError(
            path,
            "has no fingerprint of its run (written by save_checkpoint without fingerprint=), so "
            "it cannot be matched to this run; remove it, or use another checkpoint path",
        )
    fields = [f for f in FIELDS if f in current] + [f for f in current if f not in FIELDS]
    for field in fields:
        if field == "jax":
            continue
        if field == "program" and stored.get("jax") != current.get("jax"):
            warnings.warn(
                f"checkpoint {os.fspath(path)}: written under JAX {stored.get('jax')}, resumed "
                f"under {current.get('jax')}: the round's program is not compared",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if field not in stored:
            raise CheckpointError(
                path, f"its fingerprint has no {field!r} field ({FIELDS.get(field, field)})"
            )
        if field in ("user", "options"):
            found = _differs(stored[field], _jsonable(current[field]), field)
        else:
            found = None if stored[field] == current[field] else field
        if found:
            what = FIELDS.get(field, field)
            raise CheckpointError(
                path,
                f"was written by another run: {found} differs ({what}). Resume with the arguments "
                "that wrote it, or use another checkpoint path (remove this file to start over)",
            )


# ----------------------------------------------------------------------------------------- history


def history_rounds(history: Any) -> list[int] | None:
    """The round numbers a history holds, in order, or None when it is not a list of records.

    Two layouts are understood: one record per round (``{"round": r, ...}``, as
    :func:`abo_jax.run` stores) and one record per chunk of rounds (``{"round": (n,) array}``).
    """
    if not isinstance(history, (list, tuple)) or not all(
        isinstance(h, Mapping) and "round" in h for h in history
    ):
        return None
    out: list[int] = []
    for h in history:
        out.extend(int(r) for r in np.ravel(np.asarray(h["round"])))
    return out


def _check_history(path, state: Any, history: Any) -> None:
    rounds = history_rounds(history)
    if rounds is None or not hasattr(state, "round"):
        return
    at = np.unique(np.asarray(state.round))
    if at.size != 1:
        raise CheckpointError(path, f"its runs are at different rounds {at.tolist()}")
    done = int(at[0])
    if rounds != list(range(1, done + 1)):
        shown = rounds if len(rounds) <= 12 else [*rounds[:5], "...", *rounds[-5:]]
        raise CheckpointError(
            path,
            f"the state is at round {done} but the history holds rounds {shown} "
            f"({len(rounds)} records; expected exactly 1..{done}): the file is inconsistent",
        )


# ------------------------------------------------------------------------------------------ format


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint (fingerprint, round, sizes) without reading the body.

    Raises:
      CheckpointError: the file is not a version-2 abo_jax checkpoint.
    """
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        if head != MAGIC:
            raise CheckpointError(path, _foreign(head))
        line = f.readline(200)
        if not line.startswith(b"sha256 ") or not line.endswith(b"\n"):
            raise CheckpointError(path, "its checksum line is damaged")
        header = f.readline(_HEADER_LIMIT)
    return _parse_header(path, header)


def _foreign(head: bytes) -> str:
    if head[:1] == b"\x80":
        return (
            "is a pickle without a checksum (the format of older abo_jax versions, or another "
            "program's file); it cannot be verified: remove it to start the run over"
        )
    if not head:
        return "is empty (a write that never finished?)"
    return "is not an abo_jax checkpoint (no 'ABO-JAX-CHECKPOINT 2' line)"


def _parse_header(path, header: bytes) -> dict[str, Any]:
    try:
        out = json.loads(header.decode())
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(path, "its header is damaged (not JSON)") from None
    if not isinstance(out, dict) or "body_bytes" not in out:
        raise CheckpointError(path, "its header is damaged (no body size)")
    return out


def save_checkpoint(
    path: str | os.PathLike,
    state: Any,
    *,
    history: Any = None,
    extra: Any = None,
    fingerprint: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Writes ``state`` (any pytree, typed PRNG keys included) and ``history`` atomically.

    A reader sees either the previous checkpoint or the new one, never a partial file: the data go
    to a temporary file in the same directory, are flushed to disk, get the mode a new file gets
    (``0o666`` less the umask) and replace ``path`` with ``os.replace``.

    An existing ``path`` is replaced only if it is an abo_jax checkpoint with the same
    ``fingerprint`` (the same run, one step further), unless ``overwrite``: a foreign, damaged or
    other run's file is never written over by mistake.

    Args:
      path: the checkpoint file.
      state: the run state pytree (e.g. a :class:`~abo_jax.simulation.SimState`).
      history: a picklable record (e.g. a list of per-round dicts of numpy arrays, each with a
        ``"round"``: then checked against ``state.round`` on load).
      extra: any small picklable metadata.
      fingerprint: what defines the run (see :func:`run_fingerprint`), stored in the header and
        compared by :func:`load_checkpoint`.
      overwrite: replace ``path`` whatever it holds.

    In a run of several processes (:mod:`abo_jax.distributed`) every process calls it: the
    state's arrays are gathered from all of them, process 0 alone checks and writes the file, and
    every process returns once it is written (so any of them may resume from it).

    Raises:
      CheckpointError: ``path`` exists and is not this run's checkpoint (without ``overwrite``).
    """
    path = os.fspath(path)
    leaves = fetch(jax.tree.leaves(state))  # a collective across processes
    at = fetch(state.round) if hasattr(state, "round") else None
    if is_primary():
        _write_checkpoint(path, leaves, at, history, extra, fingerprint, overwrite)
    broadcast_from_primary(np.int32(0))  # several processes: return once the file is written


def _write_checkpoint(path, leaves, at, history, extra, fingerprint, overwrite) -> None:
    if not overwrite and os.path.lexists(path):
        stored = read_checkpoint_header(path)  # raises for a foreign or damaged file
        if fingerprint is not None or stored.get("fingerprint") is not None:
            if fingerprint is None:
                raise CheckpointError(
                    path, "holds a run with a fingerprint; refusing to replace it by one without"
                )
            compare_fingerprints(path, stored.get("fingerprint"), fingerprint)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    body = pickle.dumps(
        {"leaves": leaves, "history": history, "extra": extra}, protocol=pickle.HIGHEST_PROTOCOL
    )
    rounds = history_rounds(history)
    header = {
        "body_bytes": len(body),
        "fingerprint": None if fingerprint is None else _jsonable(dict(fingerprint)),
        "round": None if at is None else _jsonable(at),
        "history_rounds": None if rounds is None else len(rounds),
        "arrays": len(leaves),
    }
    rest = json.dumps(header, sort_keys=True).encode() + b"\n" + body
    digest = hashlib.sha256(rest).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + b"sha256 " + digest + b"\n")
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_verified(path) -> tuple[dict[str, Any], bytes]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise CheckpointError(path, f"cannot be read: {err}") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(path, _foreign(raw[: len(MAGIC)]))
    stream = io.BytesIO(raw)
    stream.seek(len(MAGIC))
    line = stream.readline(200)
    if not line.startswith(b"sha256 ") or not line.endswith(b"\n"):
        raise CheckpointError(path, "its checksum line is damaged (a truncated file?)")
    rest = raw[stream.tell() :]
    header_line, sep, body = rest.partition(b"\n")
    if not sep:
        raise CheckpointError(path, "is truncated (its header line does not end)")
    header = _parse_header(path, header_line)
    if len(body) != header["body_bytes"]:
        raise CheckpointError(
            path,
            f"is truncated or padded: its body has {len(body)} bytes, its header says "
            f"{header['body_bytes']}",
        )
    if hashlib.sha256(rest).hexdigest() != line[len(b"sha256 ") :].strip().decode(errors="replace"):
        raise CheckpointError(
            path,
            "fails its content checksum: the file was changed or damaged after it was written. "
            "Remove it to start the run over (or restore a copy)",
        )
    return header, body


def load_checkpoint(
    path: str | os.PathLike, template: Any, *, fingerprint: Mapping[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` into the structure of ``template``.

    In order: the content checksum (a changed, truncated or foreign file is refused before
    anything is unpickled), the ``fingerprint`` (when given: the field that differs is named), the
    arrays' structure, shapes and dtypes against ``template``, and ``state.round`` against the
    history's round numbers (when the history is a list of records with a ``"round"``).

    Args:
      path: the checkpoint file.
      template: a pytree with the same structure, shapes and dtypes (e.g. a freshly initialized
        state); its typed PRNG keys give the key implementation.
      fingerprint: this run's fingerprint (:func:`run_fingerprint`), compared with the stored one.

    Returns:
      ``(state, history, extra)``.

    Raises:
      CheckpointError: (a ``ValueError``) naming ``path`` and what is wrong.
    """
    path = os.fspath(path)
    header, body = _read_verified(path)
    if fingerprint is not None:
        compare_fingerprints(path, header.get("fingerprint"), fingerprint)
    try:
        payload = pickle.loads(body)
    except Exception as err:  # verified bytes that do not unpickle: written by another program
        raise CheckpointError(
            path, f"its body does not unpickle ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or "leaves" not in payload:
        raise CheckpointError(path, "its body is not an abo_jax checkpoint payload")
    leaves, treedef = jax.tree.flatten(template)
    saved = payload["leaves"]
    if len(saved) != len(leaves):
        raise CheckpointError(
            path,
            f"has {len(saved)} arrays, the run state has {len(leaves)} "
            "(different model, operator or options?)",
        )
    out = []
    for i, (x, t) in enumerate(zip(saved, leaves, strict=True)):
        if _is_key(t):
            expected = jax.random.key_data(t)
            if x.shape != expected.shape:
                raise CheckpointError(
                    path, f"key #{i} has shape {x.shape}, expected {expected.shape}"
                )
            out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)))
            continue
        if x.shape != np.shape(t) or x.dtype != np.dtype(t.dtype):
            raise CheckpointError(
                path,
                f"array #{i} is {x.dtype}{list(x.shape)}, the run state expects "
                f"{np.dtype(t.dtype)}{list(np.shape(t))} (different model, operator or options?)",
            )
        out.append(jnp.asarray(x))
    state = jax.tree.unflatten(treedef, out)
    _check_history(path, state, payload["history"])
    return state, payload["history"], payload["extra"]
