"""The Python examples of docs/canvas.md run as written, in order (issue #4)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "canvas.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_canvas_examples_run_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 8
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"canvas.md:block{number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"canvas.md example {number} failed: {exc!r}\n{code}")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "failed: ValueError('card declined')"
    assert printed[1].startswith("failed: ChordError('Chord ")
    assert "header task album.fail" in printed[1]
    assert len(printed) == 2
