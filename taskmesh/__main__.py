"""``python -m taskmesh``: the same as the ``taskmesh`` command."""

from taskmesh.cli import main

main()
