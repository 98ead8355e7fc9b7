"""``taskmesh demo``: real worker processes on a temporary SQLite file.

It starts ``taskmesh worker`` as a child process, sends one ``count_words`` task
per file of a folder, shows progress while the worker runs them, sums the
counts with a ``total`` task, prints what it found and how long it took, and
stops the worker with SIGTERM. Nothing needs to be installed or configured.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from taskmesh.app import TaskMesh
from taskmesh.errors import TaskmeshError
from taskmesh.result import AsyncResult

__all__ = ["app", "count_words", "run_demo", "total"]

app = TaskMesh("demo")

_TEXT_SUFFIXES = {".md", ".rst", ".txt", ".py"}


@app.task(name="demo.count_words")
def count_words(path: str) -> int:
    """Count the whitespace-separated words of a text file."""
    return len(Path(path).read_text(encoding="utf-8", errors="replace").split())


@app.task(name="demo.total")
def total(counts: list[int]) -> int:
    """Add up counts."""
    return sum(counts)


def _files(path: str | None) -> list[Path]:
    if path is not None:
        root = Path(path)
    elif Path("docs").is_dir():
        root = Path("docs")
    else:
        root = Path(__file__).parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    if not files:
        raise click.ClickException(f"No text files (.md, .rst, .txt, .py) under {root}.")
    return files


def _progress(done: int, count: int) -> None:
    width = 30
    filled = width * done // count
    click.echo(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{count} files", nl=False)


def _wait_all(results: list[AsyncResult], worker: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    pending = list(results)
    shown = -1
    while pending:
        if worker.poll() is not None:
            raise click.ClickException(f"The worker exited early with status {worker.returncode}.")
        if time.monotonic() > deadline:
            raise click.ClickException(f"{len(pending)} tasks were not done after {limit:.0f} s.")
        pending = [r for r in pending if not r.ready()]
        done = len(results) - len(pending)
        if done != shown:
            _progress(done, len(results))
            shown = done
        if pending:
            time.sleep(0.05)
    click.echo()


def run_demo(concurrency: int = 2, path: str | None = None) -> int:
    """Run the demo; return the exit status."""
    files = _files(path)
    folder = tempfile.mkdtemp(prefix="taskmesh-demo-")
    url = f"sqlite:///{folder}/demo.db"
    os.environ["TASKMESH_BROKER_URL"] = url
    os.environ["TASKMESH_RESULT_BACKEND"] = url
    click.echo(f"taskmesh demo: {len(files)} files, {concurrency} worker processes, broker {url}")
    command = [
        sys.executable,
        "-m",
        "taskmesh",
        "-A",
        "taskmesh.demo",
        "worker",
        "-c",
        str(concurrency),
        "-l",
        "warning",
    ]
    # The worker runs in the temporary folder, so a source checkout in the
    # current folder cannot shadow the installed package.
    worker = subprocess.Popen(command, cwd=folder)
    try:
        started = time.perf_counter()
        results = [count_words.delay(str(file.resolve())) for file in files]
        _wait_all(results, worker, limit=120)
        counts = [r.get(timeout=10) for r in results]
        grand_total = total.delay(counts).get(timeout=30)
        elapsed = time.perf_counter() - started
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(timeout=60)
        app.close()
        shutil.rmtree(folder, ignore_errors=True)
    ranked = sorted(zip(counts, files, strict=True), reverse=True)
    click.echo("Most words:")
    for words, file in ranked[:5]:
        click.echo(f"  {words:>7}  {file}")
    click.echo(f"Total: {grand_total} words in {len(files)} files.")
    click.echo(
        f"Took {elapsed * 1000:.0f} ms for {len(files) + 1} tasks "
        f"({(len(files) + 1) / elapsed:.0f} tasks/s); worker stopped with status {status}."
    )
    return 0 if status == 0 else 1
