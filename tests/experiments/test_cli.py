"""The experiments' command lines: help for every option, usage errors (exit 2) before any work,
the module in the usage line, a locked results folder, the usual file permissions."""

import dataclasses
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments.common.config import field_docs, parse_config
from experiments.common.grid import run_grid
from experiments.common.io import atomic_write_json
from experiments.common.lock import FolderLocked, folder_lock

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), ABO_PROGRESS="0")


def _configs():
    from experiments.operators.run import OperatorsConfig
    from experiments.paper.config import PaperConfig
    from experiments.rates.run import RatesConfig

    return {"paper": PaperConfig, "operators": OperatorsConfig, "rates": RatesConfig}


def _mains():
    from experiments.operators.run import main as operators
    from experiments.paper.run import main as paper
    from experiments.rates.run import main as rates

    return {"paper": paper, "operators": operators, "rates": rates}


@pytest.mark.parametrize("name", ["paper", "operators", "rates"])
def test_every_config_field_has_a_help_text(name):
    cls = _configs()[name]
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"{name}: fields without an Attributes entry: {missing}"


@pytest.mark.parametrize("name", ["paper", "operators", "rates"])
def test_help_names_the_module_and_describes_every_option(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _mains()[name](["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m experiments.{name} ")
    options = re.findall(r"^  (--[a-z0-9-]+)(?: [A-Z|a-z,.]+)?\s*(.*)$", out, re.M)
    fields = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(_configs()[name])}
    assert fields <= {o for o, _ in options} | {"--help"}
    # every option's line (or the next) carries a description beyond the default
    blocks = re.split(r"\n  (?=--)", out.split("options:", 1)[1])
    for block in blocks[1:]:
        text = re.sub(r"\(default: .*?\)", "", " ".join(block.split()[1:]), flags=re.S)
        assert len(text.strip()) > 8, f"{name}: option without a description: {block[:60]!r}"


@pytest.mark.parametrize(
    "name, argv, option",
    [
        ("paper", ["--epochs", "0"], "--epochs"),
        ("paper", ["--datasets", "cifar10"], "--datasets"),
        ("paper", ["--seeds", "0"], "--seeds"),
        ("paper", ["--deltas", "0"], "--deltas"),
        ("paper", ["--seeds", "two"], "--seeds"),
        ("operators", ["--rounds", "0"], "--rounds"),
        ("operators", ["--operators", "sp"], "--operators"),
        ("operators", ["--clients-per-round", "11"], "--clients-per-round"),
        ("operators", ["--dirichlet-alpha", "inf"], "--dirichlet-alpha"),
        ("operators", ["--dataset", "cifar10"], "--dataset"),
        ("rates", ["--etas", "0.1,-1"], "--etas"),
        ("rates", ["--horizons", "0"], "--horizons"),
        ("rates", ["--problem", "svm"], "--problem"),
        ("rates", ["--sweep-operators", "hetlora"], "--sweep-operators"),
    ],
)
def test_bad_options_are_two_line_usage_errors_before_any_work(
    name, argv, option, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_:
        _mains()[name]([*argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"usage: python -m experiments.{name}")
    assert lines[1].startswith(f"python -m experiments.{name}: error: ") and option in lines[1]
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_bench_and_demo_usage_errors_and_help(tmp_path, capsys):
    from experiments.bench.__main__ import main as bench
    from experiments.demo import main as demo

    for fn, argv, prog in (
        (bench, ["--only", "nope"], "bench"),
        (demo, ["--out", str(Path(__file__))], "demo"),  # a file, not a folder
        (demo, ["--bogus"], "demo"),
    ):
        with pytest.raises(SystemExit) as exit_:
            fn(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"python -m experiments.{prog}: error:" in err and "Traceback" not in err
    for fn, prog in ((bench, "bench"), (demo, "demo")):
        with pytest.raises(SystemExit):
            fn(["--help"])
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m experiments.{prog} ")
        blocks = re.split(r"\n  (?=--)", out.split("options:", 1)[1])
        assert all(len(" ".join(b.split()[1:])) > 8 for b in blocks[1:]), out


def test_parse_config_without_a_quick_setting_is_a_usage_error(capsys):
    @dataclasses.dataclass(frozen=True)
    class Toy:
        """Toy.

        Attributes:
          n: a count.
        """

        n: int = 1

    with pytest.raises(SystemExit) as exit_:
        parse_config(Toy, ["--quick"], prog="toy")
    assert exit_.value.code == 2 and "toy: error: --quick" in capsys.readouterr().err
    assert parse_config(Toy, ["--n", "3"], prog="toy") == Toy(3)


def test_results_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "r.json", {"a": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(umask)


def _holder_script(folder: Path, hold: float) -> str:
    return textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from experiments.common.lock import folder_lock
        with folder_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep({hold})
        """
    )


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "cells"
    with subprocess.Popen(
        [sys.executable, "-c", _holder_script(folder, 60)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(FolderLocked, match=rf"in use by process {holder.pid}\b") as err:
                run_grid([{"i": 0}], lambda c: {"v": 1}, folder, show_progress=False)
            assert str(folder) in str(err.value)
            assert not list(folder.glob("*.json"))  # refused before any cell
            t0 = time.monotonic()
            with pytest.raises(FolderLocked):  # waiting is bounded by its timeout
                with folder_lock(folder, timeout=0.5):
                    pass
            assert 0.4 < time.monotonic() - t0 < 5
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    # the dead holder's lock file is left behind and taken over
    assert (folder / ".lock").exists()
    records, counts = run_grid([{"i": 0}], lambda c: {"v": 1}, folder, show_progress=False)
    assert counts == {"run": 1, "skipped": 0} and records[0]["result"] == {"v": 1}
    assert not (folder / ".lock").exists()


def test_the_cli_refuses_a_locked_results_folder_with_one_line(tmp_path):
    from experiments.rates.run import get_quick_config, run_name

    cfg = dataclasses.replace(get_quick_config(), out=str(tmp_path))
    folder = tmp_path / run_name(cfg) / "cells"
    with folder_lock(folder):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.rates", "--quick", "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
        )  # fmt: skip
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert f"in use by process {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(folder.glob("*.json"))
