"""Reproducible benchmarks of taskmesh against its peers (issue #8).

``python -m bench.run`` is the one command; bench/README.md says what it measures
and holds the latest table. Everything under ``bench/`` except :mod:`bench.run`,
:mod:`bench.ceiling` and :mod:`bench.apps.taskmesh_app` also runs inside the
peers' separate virtual environment, so those modules use the standard library
only.
"""
