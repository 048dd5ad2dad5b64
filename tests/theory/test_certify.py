"""certify verdicts: PS strong+weak, SP weak only, a wrong operator caught and shrunk; client 0
only passes weak and strong but fails consistency, and the verdict says so; two-sided constants; CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wrong_operators as wo

from abo_jax import ABO, product_sum, sum_product
from theory.__main__ import main
from theory.certify import (
    HOLDS,
    NOT_APPLICABLE,
    VIOLATED,
    available_operators,
    certify,
    check_identities,
    resolve_operator,
)

WRONG = Path(__file__).resolve().parent  # wrong_operators.py, importable by the CLI from here


@pytest.fixture(scope="module")
def reports():
    return {
        "product_sum": certify(product_sum(), name="product_sum"),
        "sum_product": certify(sum_product(), name="sum_product"),
        "wrong": certify(wo.first_client_only(), name="first_client_only"),
        "client0": certify(wo.client_zero_only(), name="client_zero_only"),
    }


def _status(report):
    return {c.number: c.status for c in report.identities}


def test_product_sum_strong_and_weak(reports):
    rep = reports["product_sum"]
    assert rep.weak.status == HOLDS and rep.strong.status == HOLDS, rep.table()
    # strong mismatch of PS is the drift variance: R_B + R_A <= drift^2, so the constant is <= 1
    assert 0.5 < rep.strong.constant <= 1.0 + 1e-9
    st = _status(rep)
    assert st[4] == st[5] == st[1] == st[9] == HOLDS
    assert st[2] == st[3] == NOT_APPLICABLE
    assert st[7] == VIOLATED  # PS depends on the factors, not only on the products
    assert rep.weak.counterexample is None and rep.strong.counterexample is None


def test_sum_product_weak_only(reports):
    rep = reports["sum_product"]
    assert rep.weak.status == HOLDS and np.isfinite(rep.weak.constant), rep.table()
    assert rep.strong.status == VIOLATED and rep.strong.constant == np.inf
    st = _status(rep)
    assert st[2] == st[3] == st[7] == st[8] == st[9] == HOLDS
    assert st[4] == st[5] == NOT_APPLICABLE
    # Hypothesis shrinks the strong counterexample to one 1x1 client: SP re-splits B A evenly
    ce = rep.strong.counterexample
    assert ce["shape"] == {"m": 1, "d": 1, "k": 1, "r": 1}
    assert ce["ratios"][1] > 100 * ce["ratios"][0]


def test_wrong_operator_violates_weak_with_shrunk_counterexample(reports):
    rep = reports["wrong"]
    assert rep.weak.status == VIOLATED, rep.table()
    ce = rep.weak.counterexample
    assert ce["shape"]["m"] == 2 and ce["shape"]["d"] == ce["shape"]["k"] == ce["shape"]["r"] == 1
    assert ce["start_kind"] == "generic"
    # replay the counterexample independently: R_w / delta^2 grows like delta^-2
    b0, a0 = np.asarray(ce["start"]["B0"]), np.asarray(ce["start"]["A0"])
    u, v = np.asarray(ce["directions"]["U"]), np.asarray(ce["directions"]["V"])
    w = np.asarray(ce["weights"])
    ratios = []
    for delta in ce["deltas"]:
        b, a = b0[None] + delta * u, a0[None] + delta * v
        prod = (w[0] * b[0]) @ (w[0] * a[0])
        r_w = sum(w[i] * np.sum((prod - b[i] @ a[i]) ** 2) for i in range(len(w)))
        ratios.append(r_w / delta**2)
    np.testing.assert_allclose(ratios, ce["ratios"], rtol=1e-9)
    assert _status(rep)[9] == VIOLATED  # not permutation invariant either


def test_exact_operators_when_available():
    ops = available_operators()
    assert {"sum_product", "product_sum"} <= set(ops)
    for name in ("fedex", "flora", "ffa"):
        if name in ops:  # exact in product: broadcast product plus base_delta reproduces Zbar
            checks, traits = check_identities(ops[name](), cases=1)
            assert traits["exact_in_product"], name
            assert all(c.status != VIOLATED for c in checks), (name, checks)


def test_certify_bad_input():
    with pytest.raises(ValueError, match="unknown"):
        certify("no_such_operator")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_operator("no.such.module:f")
    with pytest.raises(ValueError, match="expected an ABO"):
        certify(42)
    with pytest.raises(ValueError, match="deltas"):
        certify(product_sum(), deltas=(0.1, 0.0, 0.01))
    if str(WRONG) not in sys.path:
        sys.path.insert(0, str(WRONG))
    assert isinstance(resolve_operator("wrong_operators:first_client_only")[1], ABO)
    import theory

    assert not hasattr(theory, "first_client_only")  # the wrong operator lives in the tests


def test_cli_table_and_json_in_process(capsys):
    assert main(["certify", "product_sum"]) == 0
    out = capsys.readouterr().out
    assert "operator: product_sum" in out and "weak      holds" in out and "strong    holds" in out
    assert "counterexample" not in out
    assert main(["certify", "product_sum", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["operator"] == "product_sum" and doc[0]["strong"]["status"] == HOLDS
    assert main(["certify", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_cli_subprocess():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WRONG), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "theory", "certify", "wrong_operators:first_client_only", "--json"],
        capture_output=True, text=True, timeout=300, check=True, env=env,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc[0]["weak"]["status"] == VIOLATED
    assert doc[0]["weak"]["counterexample"]["shape"]["m"] == 2
    assert doc[0]["consistency"]["status"] == VIOLATED
    assert doc[0]["consistency"]["fixed_point"] == VIOLATED  # p_1^2 B_1 A_1 != B_0 A_0


def test_client_zero_weak_and_strong_hold_consistency_flags_it(reports):
    rep = reports["client0"]
    assert rep.weak.status == HOLDS and rep.strong.status == HOLDS, rep.table()
    c = rep.consistency
    assert c.status == VIOLATED and c.fixed_point == HOLDS
    w = c.witness
    assert w["shape"] == {"m": 2, "d": 1, "k": 1, "r": 1}
    # largest defect over the points: uniform m = 3 weights, ((1 - p_0)/p_0)^(1/2) = sqrt(2)
    assert c.defect == pytest.approx(np.sqrt(2.0), rel=1e-9)
    assert w["defect"] == pytest.approx(1.0, rel=1e-9)
    verdict = rep.verdict()
    assert verdict and "WARNING" in verdict[0] and "does NOT mean convergence" in verdict[0]
    assert "WARNING: weak and strong hold" in rep.table()
    doc = json.loads(rep.to_json())
    assert doc["consistency"]["status"] == VIOLATED
    assert doc["consistency"]["witness"]["direction"]["U"]
    assert doc["verdict"][0].startswith("WARNING")
    row = rep.markdown_row()  # the README's certify table
    assert row.startswith("| `client_zero_only` | holds, ") and "**violated**: first-order" in row
    assert reports["product_sum"].markdown_row().endswith("| holds, 1 / 1 (bound 1) | holds |")


def test_consistent_operators_pass_all_three(reports):
    for name in ("product_sum", "sum_product"):
        rep = reports[name]
        assert rep.consistency.status == HOLDS and rep.consistency.fixed_point == HOLDS
        assert not any("WARNING" in line for line in rep.verdict())
        assert any("weak + consistency" in line for line in rep.verdict())


def test_two_sided_constants(reports):
    for name in ("product_sum", "sum_product", "client0"):
        t = reports[name].weak.two_sided
        w = t["witness"]
        b0, a0 = np.asarray(w["B0"]), np.asarray(w["A0"])
        # the search's witness is a lower bound; its float64 re-check agrees
        assert t["lower_float64"] == pytest.approx(t["lower"], rel=1e-8)
        # the witness direction's ratio tends to its exact limit (delta = 1e-3: O(delta) apart)
        assert t["limit_at_witness"] == pytest.approx(t["lower"], rel=2e-2)
        # upper side: the sup over directions at that start, at least the witness direction's limit
        assert t["upper"] >= t["limit_at_witness"] * (1 - 1e-9)
        assert t["gap"] == pytest.approx(t["upper"] - t["lower"])
        if name != "client0":  # consistent: the closed form ||A_0||^2 + ||B_0||^2 is exact (m >= 2)
            bound = np.linalg.norm(a0, 2) ** 2 + np.linalg.norm(b0, 2) ** 2
            assert t["bound"] == pytest.approx(bound, rel=1e-9)
            assert t["upper"] == pytest.approx(bound, rel=1e-6)
            assert t["bound_c"] >= t["bound"]
        else:
            assert t["bound"] is None
    ps = reports["product_sum"].strong.two_sided
    assert ps["bound"] == 1.0 and ps["upper"] == pytest.approx(1.0, rel=1e-9)
    assert reports["sum_product"].strong.two_sided["upper"] == np.inf
