"""`make demo`'s --quick form end to end: verdict, certify tables and plots written, paths printed."""

from experiments import demo
from experiments.common.io import read_json
from experiments.common.plotting import is_valid_png


def test_demo_quick_writes_verdict_certify_and_plots(tmp_path, capsys):
    result = demo.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    folder = result["folder"]
    assert folder == tmp_path / "demo-quick"
    saved = read_json(folder / "demo.json")
    assert saved["wall_seconds"] > 0
    assert set(saved["verdict"]) == {"digits"}
    certify = (folder / "certify.txt").read_text()
    for name in ("sum_product", "product_sum"):
        assert f"theory.certify('{name}')" in certify
        assert (
            "failed" not in result["certify"][name] and "unavailable" not in result["certify"][name]
        )
    assert result["plots"] and all(is_valid_png(p) for p in result["plots"])
    out = capsys.readouterr().out
    assert str(folder.resolve()) in out and "Claim check on digits" in out
