"""The report: aggregation over repeats, the random-control flag, the files; the command line."""

from __future__ import annotations

import json
import os
import statistics

import pytest

import fxai
from fxai.app import cli
from fxai.roar import jobs, report


def _result(method, fill, mode, fraction, repeat, acc):
    return {"method": method, "fill": fill, "mode": mode, "fraction": fraction, "repeat": repeat, "accuracy": acc}


RESULTS = {
    "b0": _result(None, None, None, 0.0, 0, 0.9), "b1": _result(None, None, None, 0.0, 1, 1.0),
    "g0": _result("gradient", "mean", "roar", 0.5, 0, 0.4), "g1": _result("gradient", "mean", "roar", 0.5, 1, 0.6),
    "r0": _result("random", "mean", "roar", 0.5, 0, 0.7), "r1": _result("random", "mean", "roar", 0.5, 1, 0.8),
    "s0": _result("sobel", "mean", "roar", 0.5, 0, 0.9), "s1": _result("sobel", "mean", "roar", 0.5, 1, 0.7),
    "k0": _result("gradient", "mean", "kar", 0.5, 0, 0.5), "k1": _result("random", "mean", "kar", 0.5, 0, 0.6),
    "e": {**_result("vargrad(gradient)", "mean", "roar", 0.5, 0, None), "error": "RuntimeError: boom"},
}
del RESULTS["e"]["accuracy"]


def test_aggregate_and_flags():
    agg = report.aggregate(RESULTS)
    base = (0.95, statistics.stdev([0.9, 1.0]), 2)
    assert agg[("gradient", "mean", "roar")][0.0] == pytest.approx(base)
    assert agg[("gradient", "mean", "roar")][0.5] == pytest.approx((0.5, statistics.stdev([0.4, 0.6]), 2))
    assert agg[("random", "mean", "kar")][0.5] == (0.6, 0.0, 1)
    assert ("vargrad(gradient)", "mean", "roar") not in agg
    flagged = report.flags(agg)
    # sobel's ROAR accuracy (0.8) is not below random's (0.75); gradient's KAR (0.5) is not above random's (0.6)
    assert flagged == {("sobel", "mean", "roar"): pytest.approx(0.05), ("gradient", "mean", "kar"): pytest.approx(-0.1)}


def test_written_report(tmp_path):
    folder = str(tmp_path / "grid")
    settings = {"config": {"train": {"arch": "smallcnn", "width": 4, "epochs": 1}, "dataset": "shapes",
                           "train_count": 8, "test_count": 4, "size": 16, "repeats": 2, "reduce": "abs_sum"},
                "classes": 4, "base_accuracy": 0.97, "mean": [0.5, 0.5, 0.5]}
    jobs.write_grid(folder, [{"id": k} for k in RESULTS], settings)
    for k, r in RESULTS.items():
        jobs.write_result(folder, k, r)
    summary = fxai.roar.write_report(str(tmp_path))
    files = sorted(os.listdir(tmp_path / "report"))
    assert files == ["accuracy.png", "results.json", "summary.md", "table.md"]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "lower ROAR accuracy is better" in text and "higher KAR accuracy is better" in text
    assert "No better than random" in text and "sobel (mean fill, ROAR): +0.050" in text
    assert "- e: RuntimeError: boom" in text
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| gradient | mean | 0.500 ± 0.141 | 0.500 ± 0.000 |" in table
    data = json.loads((tmp_path / "report" / "results.json").read_text())
    assert data["finished"] == len(RESULTS) and summary["errors"] == {"e": "RuntimeError: boom"}


@pytest.mark.slow
def test_cli_roar_runs_a_small_grid_and_extract(tmp_path, capsys):
    out = str(tmp_path / "run")
    status = cli.main(["roar", "--quick", "--out", out, "--methods", "gradient,random", "--modes", "roar",
                       "--repeats", "1", "--control-fill", "mean", "--epochs", "1", "--train-count", "48",
                       "--test-count", "16"])
    assert status == 0
    summary = json.loads(open(os.path.join(out, "report", "results.json")).read())
    assert summary["finished"] == summary["jobs"] == 3 and not summary["errors"]
    assert summary["settings"]["config"]["methods"] == ["gradient", "random"]
    assert cli.main(["roar", "--quick", "--out", out, "--methods", "gradient,random", "--modes", "roar",
                     "--repeats", "1", "--control-fill", "mean", "--epochs", "1", "--train-count", "48",
                     "--test-count", "16", "--only", "report"]) == 0
    maps = str(tmp_path / "maps")
    assert cli.main(["extract", "--method", "sobel", "--weights", os.path.join(out, "model", "model.safetensors"),
                     "--width", "8", "--size", "16", "--train-count", "48", "--test-count", "16", "--out", maps]) == 0
    assert fxai.roar.load_maps(maps).shape == (16, 16, 16)
    capsys.readouterr()
    assert cli.main(["roar", "--out", out, "--repeats", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["roar", "--methods", "gradientt"])
    assert "unknown method" in capsys.readouterr().err
    assert cli.main(["extract", "--method", "gradient", "--weights", str(tmp_path / "none.pt"), "--out", maps]) == 2
    assert "--weights" in capsys.readouterr().err
