"""docs/beat.md's Python examples run as written and print what the page shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "beat.md"
PYTHON = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
TEXT = re.compile(r"^```text\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_examples_run_and_print_the_lines_the_page_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = PAGE.read_text()
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, code in enumerate(PYTHON.findall(text), 1):
        exec(compile(code, f"beat.md:block{number}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    shown = TEXT.findall(text)[0].splitlines()
    assert shown
    assert set(shown) <= set(printed)
