"""Every Python block in docs/*.md runs as written, the blocks of a page in order in one namespace (a page
reads top to bottom, like a notebook: its first block sets up what the later ones use).

A block that cannot run here (it needs a GPU, downloaded weights or data files) is preceded by the visible
line ``<!-- not run: REASON -->``, and is reported as skipped with that reason. ``docs/api.md`` is generated
from the docstrings, whose examples tests/test_docstrings.py runs. Pages are sized to run in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "api.md")
# pages whose examples take seconds (3 to 11 s each on a busy 2-core machine): run with the slow tests
SLOW = {"getting-started.md", "perturbation.md", "deeplift.md", "layers.md", "models.md", "metrics.md"}
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```", flags=re.S | re.M)


def blocks(page: str) -> list[tuple[str | None, str]]:
    """``(reason it is not run or None, code)`` of each Python block of ``page``."""
    return [(m.group("why"), m.group("code")) for m in BLOCK.finditer((DOCS / page).read_text())]


def test_every_page_is_covered():
    assert {"getting-started.md", "lrp.md", "roar.md", "metrics.md"} <= set(PAGES)


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    found = blocks(page)
    if not found:
        pytest.skip(f"{page} has no Python blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"__docs_{page}__"}
    skipped = []
    for i, (why, code) in enumerate(found):
        if why is not None:
            skipped.append(f"block {i + 1}: {why}")
            continue
        exec(compile(code, f"docs/{page} python block {i + 1}", "exec"), namespace)
    if skipped:
        pytest.skip(f"{page}: ran {len(found) - len(skipped)} blocks; not run: {'; '.join(skipped)}")
