"""certify verdicts: PS strong+weak, SP weak only, a wrong operator caught and shrunk; CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from abo_jax import ABO, product_sum, sum_product
from theory.__main__ import main
from theory.certify import (
    HOLDS,
    NOT_APPLICABLE,
    VIOLATED,
    available_operators,
    certify,
    check_identities,
    first_client_only,
    resolve_operator,
)


@pytest.fixture(scope="module")
def reports():
    return {
        "product_sum": certify(product_sum(), name="product_sum"),
        "sum_product": certify(sum_product(), name="sum_product"),
        "wrong": certify(first_client_only(), name="first_client_only"),
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
    assert isinstance(resolve_operator("theory.certify:first_client_only")[1], ABO)


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
    out = subprocess.run(
        [sys.executable, "-m", "theory", "certify", "theory.certify:first_client_only", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc[0]["weak"]["status"] == VIOLATED
    assert doc[0]["weak"]["counterexample"]["shape"]["m"] == 2
