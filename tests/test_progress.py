"""Long work speaks: progress lines in logs, and a warning before a method that will take long."""

from __future__ import annotations

import io

import torch

from fxai import registry
from fxai._core.progress import LineProgress, progress_bar
from fxai.app.explain_notes import cost_warning


def test_a_log_gets_a_line_per_step_or_per_percent():
    out = io.StringIO()
    bar = progress_bar(total=3, desc="maps", unit="map", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["maps:  33% 1/3 map", "maps:  66% 2/3 map", "maps: 100% 3/3 map"]
    out = io.StringIO()
    bar = progress_bar(range(1000), desc="steps", file=out)
    assert sum(1 for _ in bar) == 1000
    assert len(out.getvalue().splitlines()) == 101                      # the first step, then each percent


def test_a_costly_method_says_so_with_the_option_that_bounds_it():
    rise = registry.method("rise")
    text = cost_warning(rise, {"num_masks": 4000}, 0.05, (224, 224), torch.device("cpu"))
    assert text.startswith("rise: num_masks=4000 at 224×224 on cpu will take about 200 s per image")
    assert "--option rise.num_masks=400 " in text
    assert cost_warning(rise, {"num_masks": 100}, 0.05, (224, 224), torch.device("cpu")) is None
    assert cost_warning(registry.method("gradient"), {}, 10.0, (224, 224), torch.device("cpu")) is None
