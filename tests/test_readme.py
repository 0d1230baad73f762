"""The README: its set-up block is the one CI runs, and its Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_setup_block_is_intact():
    text = README.read_text()
    block = re.search(r"<!-- setup -->\n```\n(.*?)```\n<!-- /setup -->", text, flags=re.S)
    assert block is not None
    assert block.group(1).splitlines() == ['python -m pip install -e ".[test]"', "python -m pytest -q"]


def test_python_examples_run(tmp_path, monkeypatch):
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))          # the dataset example looks in ~/data: empty here
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "overlay.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0


def test_api_reference_is_generated_from_the_current_docstrings():
    import runpy

    render = runpy.run_path(str(README.parent / "docs" / "render_api.py"), run_name="render_api")
    assert render["main"](["--check"]) == 0, "docs/api.md is out of date: run python docs/render_api.py"
