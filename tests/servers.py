"""Real broker servers for the integration tests, each on a free loopback port.

Every server runs from a temporary folder of its own and is stopped by its PID
when the fixture ends, also when the test failed. A server whose program is
missing skips its tests, unless ``TASKMESH_REQUIRE_SERVERS=1`` (set by
``.ci/run``), which turns the skip into a failure so CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


def servers_required() -> bool:
    """Whether a missing server must fail the run instead of skipping."""
    return os.environ.get("TASKMESH_REQUIRE_SERVERS", "") not in ("", "0")


def missing(what: str) -> None:
    """Skip (locally) or fail (in CI) because ``what`` is not available."""
    message = f"{what} is not available"
    if servers_required():
        pytest.fail(f"{message}, and TASKMESH_REQUIRE_SERVERS is set", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts connections on ``port``, or fail."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} in time")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


@dataclass
class RedisServer:
    """One redis-server on loopback, in its own folder."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = True

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
            return
        command = [
            binary,
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "yes",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, time.monotonic() + 15, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """Run a redis-server for the duration of the block."""
    server = RedisServer(free_port(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
"""Dummy credentials and no profile or metadata look-ups: boto3 in tests and in
the workers they start can only ever talk to the endpoint a URL names."""


@contextlib.contextmanager
def aws_environment() -> Iterator[None]:
    """Set :data:`AWS_TEST_ENVIRONMENT` in ``os.environ`` for the block, then restore it."""
    saved = {name: os.environ.get(name) for name in (*AWS_TEST_ENVIRONMENT, "AWS_PROFILE")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(AWS_TEST_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class MotoServer:
    """moto's server mode (SQS, S3, DynamoDB and more) on loopback."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        try:
            import moto.server  # noqa: F401 - only checks that moto[server] is installed
        except ImportError:
            missing("moto[server]")
            return
        command = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
        with open(self.folder / "moto.log", "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
            )
        wait_for_port(self.port, time.monotonic() + 30, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextlib.contextmanager
def moto_server(folder: Path) -> Iterator[MotoServer]:
    """Run moto's server for the block, with dummy AWS credentials in the environment."""
    server = MotoServer(free_port(), folder)
    with aws_environment():
        server.start()
        try:
            yield server
        finally:
            server.stop()
