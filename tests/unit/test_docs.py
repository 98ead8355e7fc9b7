"""The Python examples of the user docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", ["guide.md"])
def test_python_examples_run_in_order(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = BLOCK.findall((DOCS / page).read_text())
    assert blocks, f"no python examples in {page}"
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{page}:block{number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{page} example {number} failed: {exc!r}\n{code}")
    printed = capsys.readouterr().out
    assert "Did you mean 'result_expires'" in printed
