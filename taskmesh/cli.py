"""The ``taskmesh`` command: worker, beat, call, result, purge, demo.

``taskmesh -A proj worker`` imports ``proj`` and uses its ``app``;
``-A proj.tasks:application`` names another attribute. The current folder is
put on ``sys.path`` first, as a project's own modules expect.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from typing import Any

import click

from taskmesh import __version__
from taskmesh.app import TaskMesh
from taskmesh.errors import TaskmeshError
from taskmesh.result import AsyncResult

__all__ = ["main"]

logger = logging.getLogger(__name__)

_LEVELS = ["debug", "info", "warning", "error", "critical"]


def configure_logging(level: str) -> None:
    """Send log lines to stderr, one per event, at ``level``."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Broker drivers log every failed connection attempt at ERROR; the
    # adapters already say "broker connection lost" once per outage.
    for driver in ("pika", "kombu", "amqp", "botocore", "urllib3"):
        logging.getLogger(driver).setLevel(logging.CRITICAL)


def _user_traceback(exc: BaseException) -> str:
    """Format ``exc`` without the frames of importlib and of this module."""
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in summary.stack
            if not frame.filename.startswith("<frozen")
            and "importlib" not in frame.filename
            and frame.filename != __file__
        ]
    )
    return "".join(summary.format()).rstrip()


def locate_app(spec: str) -> TaskMesh:
    """Import the app named by ``module[:attr]``.

    Raises:
        click.UsageError: The module cannot be imported or holds no app.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except TaskmeshError as exc:
        # A setting the module applies is wrong: the message says which.
        raise click.ClickException(f"Importing {module_name!r} failed: {exc}") from exc
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise click.UsageError(
                f"Cannot import {module_name!r} given to -A: {exc}. Run from the folder that "
                "holds it, or put that folder on PYTHONPATH."
            ) from exc
        raise click.ClickException(
            f"Importing {module_name!r} failed:\n{_user_traceback(exc)}"
        ) from exc
    except Exception as exc:
        # The user's own module is broken: show where, as Python would.
        raise click.ClickException(
            f"Importing {module_name!r} failed:\n{_user_traceback(exc)}"
        ) from exc
    if attr:
        app = getattr(module, attr, None)
    else:
        app = getattr(module, "app", None)
        if not isinstance(app, TaskMesh):
            found = [v for v in vars(module).values() if isinstance(v, TaskMesh)]
            app = found[0] if len(found) == 1 else None
    if not isinstance(app, TaskMesh):
        where = f"{module_name}:{attr or 'app'}"
        raise click.UsageError(f"{where} is not a TaskMesh app. Use -A module:attribute.")
    return app


class _Context:
    def __init__(self, app_spec: str | None) -> None:
        self.app_spec = app_spec

    @property
    def app(self) -> TaskMesh:
        if self.app_spec is None:
            return TaskMesh()
        return locate_app(self.app_spec)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", metavar="MODULE[:ATTR]", help="The app to use.")
@click.version_option(__version__, prog_name="taskmesh")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None) -> None:
    """Run and send background tasks through your broker."""
    ctx.obj = _Context(app_spec)


@main.command()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Processes or threads.")
@click.option(
    "-P", "--pool", type=click.Choice(["prefork", "threads"]), help="Execution pool [prefork]."
)
@click.option("-Q", "--queues", help="Comma-separated queues, polled in this order.")
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(_LEVELS, False),
    default="info",
    show_default=True,
    help="Log level.",
)
@click.option("-n", "--hostname", help="The worker's name [pid@host].")
@click.option("-B", "--beat", "embed_beat", is_flag=True, help="Also run beat, in a child process.")
@click.pass_obj
def worker(
    obj: _Context,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    loglevel: str,
    hostname: str | None,
    embed_beat: bool,
) -> None:
    """Run tasks from the broker until SIGTERM or Ctrl-C."""
    from taskmesh.beat.scheduler import spawn_beat_process, stop_beat_process
    from taskmesh.worker import Worker

    configure_logging(loglevel)
    app = obj.app
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        runner = Worker(app, names, concurrency=concurrency, pool=pool, hostname=hostname)
        runner.wait_for_servers()
        beat_process = spawn_beat_process(app) if embed_beat else None
        try:
            status = runner.run()
        finally:
            if beat_process is not None:
                stop_beat_process(beat_process)
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


@main.command()
@click.option("--list", "list_only", is_flag=True, help="Print each entry's next runs and exit.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Run times per entry with --list.",
)
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(_LEVELS, False),
    default="info",
    show_default=True,
    help="Log level.",
)
@click.pass_obj
def beat(obj: _Context, list_only: bool, count: int, loglevel: str) -> None:
    """Send the periodic tasks of beat_schedule until SIGTERM or Ctrl-C.

    Several beat processes may run against one state store; one leads and sends.
    """
    from taskmesh.beat.scheduler import describe, run_beat

    app = obj.app
    try:
        if list_only:
            for line in describe(app, count):
                click.echo(line)
            return
        configure_logging(loglevel)
        app.finalize()
        run_beat(app)
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc


def _json_option(value: str, what: str, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} is not JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}, got {value!r}")
    return parsed


@main.command()
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue", help="Send to this queue.")
@click.option("--countdown", type=float, help="Seconds to wait before it may run.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait.")
@click.pass_obj
def call(
    obj: _Context,
    name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    countdown: float | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Send task NAME and print its id (or, with --wait, its result)."""
    args = _json_option(args_json, "--args", list)
    kwargs = _json_option(kwargs_json, "--kwargs", dict)
    app = obj.app
    try:
        result = app.send_task(name, args, kwargs, queue=queue, countdown=countdown)
        if not wait:
            click.echo(result.id)
            return
        value = result.get(timeout=timeout, propagate=False)
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc
    if isinstance(value, BaseException):
        raise click.ClickException(
            f"Task {name} (id {result.id}) failed: {type(value).__name__}: {value}\n"
            f"{result.traceback or ''}".rstrip()
        )
    click.echo(json.dumps(value))


@main.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is done.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait.")
@click.pass_obj
def result(obj: _Context, task_id: str, wait: bool, timeout: float | None) -> None:
    """Print the state and result of task TASK_ID as JSON."""
    handle = AsyncResult(task_id, obj.app)
    try:
        if wait:
            handle.get(timeout=timeout, propagate=False)
        state = handle.state
        value = handle.result
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc
    if isinstance(value, BaseException):
        value = f"{type(value).__name__}: {value}"
    click.echo(json.dumps({"id": task_id, "state": str(state), "result": value}, default=repr))


@main.command()
@click.option("-Q", "--queue", "queues", help="Comma-separated queues [the default queue].")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(obj: _Context, queues: str | None, force: bool) -> None:
    """Delete every waiting message of a queue."""
    app = obj.app
    names = [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]
    if not force:
        click.confirm(f"Delete every waiting message of {', '.join(names)}?", abort=True)
    try:
        with app.connect_broker() as transport:
            for name in names:
                click.echo(f"{name}: {transport.purge(name)} messages deleted")
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--path",
    type=click.Path(exists=True, file_okay=False),
    help="Folder whose files to count [docs/ here, else taskmesh's own source].",
)
def demo(concurrency: int, path: str | None) -> None:
    """Start a worker on a temporary SQLite file and count words with it."""
    from taskmesh.demo import run_demo

    try:
        sys.exit(run_demo(concurrency, path))
    except TaskmeshError as exc:
        raise click.ClickException(str(exc)) from exc
