"""Pins the public names of the taskmesh package."""

from __future__ import annotations

import taskmesh


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(taskmesh) if not n.startswith("_")} - {"annotations"}
    modules = {name for name in public if type(getattr(taskmesh, name)).__name__ == "module"}
    assert set(taskmesh.__all__) - {"__version__"} == public - modules
