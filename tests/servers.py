"""Real broker servers for the integration tests, each on a free loopback port.

Every server runs from a temporary folder of its own and is stopped by its PID
when the fixture ends, also when the test failed. A server whose program is
missing skips its tests, unless ``TASKMESH_REQUIRE_SERVERS=1`` (set by
``.ci/run``), which turns the skip into a failure so CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    unixsocket: Path | None = None
    password: str | None = None
    tls: tuple[Path, Path, Path] | None = None
    """Certificate, key and CA files: serve TLS only, on ``port``."""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{LOOPBACK}:{self.port}/0"

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
        if self.unixsocket is not None:
            command += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        if self.password is not None:
            command += ["--requirepass", self.password]
        if self.tls is not None:
            cert, key, ca = self.tls
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            command += ["--tls-ca-cert-file", str(ca)]
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

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``start`` brings it back from its AOF."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def prefixed(server: RedisServer, *options: str) -> str:
    """Return the server's URL with a key prefix no other test uses."""
    query = "&".join((f"key_prefix=t{uuid.uuid4().hex[:10]}:", *options))
    return f"{server.url}?{query}"


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


def run_moto(host: str, port: int) -> None:
    """Run moto's server in this process, atomic where the AWS services are.

    moto serves each request on a thread of its own and takes no lock, so two
    concurrent ReceiveMessage calls can hand out the same message, and two
    concurrent UpdateItem calls can both return the item after both updates.
    Real SQS and DynamoDB do neither, and the exactly-once and chord-count
    tests would fail at random. So one lock serializes every DynamoDB request
    and the scan-and-lease step of every SQS receive; a long poll waits
    outside the lock, retrying the step, so it never blocks other clients.
    """
    import threading

    import moto.server
    from moto.dynamodb.responses import DynamoHandler
    from moto.sqs.models import SQSBackend

    lock = threading.Lock()
    receive = SQSBackend.receive_message
    call_action = DynamoHandler.call_action

    def atomic_receive(
        self: SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> object:
        deadline = time.monotonic() + wait_seconds_timeout
        while True:
            with lock:
                found = receive(
                    self, queue_name, count, 0, visibility_timeout, message_attribute_names
                )
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    def atomic_call(self: DynamoHandler) -> object:
        with lock:
            return call_action(self)

    SQSBackend.receive_message = atomic_receive
    DynamoHandler.call_action = atomic_call
    moto.server.main(["-H", host, "-p", str(port)])


@dataclass
class MotoServer:
    """moto's server mode (SQS, S3, DynamoDB and more) on loopback, see :func:`run_moto`."""

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
        launch = (
            "import sys; from tests.servers import run_moto; "
            "run_moto(sys.argv[1], int(sys.argv[2]))"
        )
        command = [sys.executable, "-c", launch, LOOPBACK, str(self.port)]
        with open(self.folder / "moto.log", "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1]
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


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQ_USER = "rabbitmq"


@dataclass
class RabbitMQServer:
    """One rabbitmq-server node on loopback, with its own epmd and node folder.

    The node runs as the ``rabbitmq`` user from a folder under ``/tmp`` that the
    user owns (pytest's own temporary folders are private to root). Its name,
    AMQP port, distribution port and epmd port are all its own, so several nodes
    (other test sessions) can run side by side. The management plugin is off.
    """

    port: int
    dist_port: int
    epmd_port: int
    folder: Path
    node: str = field(default_factory=lambda: f"tm{uuid.uuid4().hex[:10]}@localhost")
    settings: dict[str, str] = field(default_factory=dict)
    advanced: str = "[]."
    process: subprocess.Popen[bytes] | None = None
    epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        folder = str(self.folder)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=folder,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE=f"{folder}/rabbitmq-env.conf",
            RABBITMQ_CONFIG_FILE=f"{folder}/rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{folder}/advanced.config",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{folder}/enabled_plugins",
            RABBITMQ_PLUGINS_EXPAND_DIR=f"{folder}/plugins",
            RABBITMQ_MNESIA_BASE=f"{folder}/mnesia",
            RABBITMQ_LOG_BASE=f"{folder}/log",
            RABBITMQ_PID_FILE=f"{folder}/rabbitmq.pid",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _write_config(self) -> None:
        settings = {
            "listeners.tcp.1": f"{LOOPBACK}:{self.port}",
            "log.console": "false",
            "log.file.level": "info",
            **self.settings,
        }
        lines = [f"{key} = {value}" for key, value in settings.items()]
        (self.folder / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "advanced.config").write_text(self.advanced + "\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        record = pwd.getpwnam(RABBITMQ_USER)
        for path in [self.folder, *self.folder.rglob("*")]:
            os.chown(path, record.pw_uid, record.pw_gid)

    def start(self) -> None:
        epmd = shutil.which("epmd")
        if not os.path.exists(RABBITMQ_SERVER) or epmd is None:
            missing("rabbitmq-server")
            return
        try:
            pwd.getpwnam(RABBITMQ_USER)
        except KeyError:
            missing("the rabbitmq user")
            return
        self._write_config()
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                [epmd, "-address", LOOPBACK, "-port", str(self.epmd_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=RABBITMQ_USER,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
            wait_for_port(self.epmd_port, time.monotonic() + 15, self.epmd)
        with open(self.folder / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.folder,
                user=RABBITMQ_USER,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        self._wait_ready(time.monotonic() + 90)

    def _wait_ready(self, deadline: float) -> None:
        """Wait until an AMQP connection opens (the port listens before that)."""
        import pika
        import pika.exceptions

        params = pika.ConnectionParameters(
            LOOPBACK,
            self.port,
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=2,
        )
        process = self.process
        if process is None:
            return
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited with status {process.returncode}:\n{self.console()}"
                )
            try:
                pika.BlockingConnection(params).close()
                return
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"rabbitmq-server not ready in time:\n{self.console()}")

    def console(self) -> str:
        path = self.folder / "console.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=30)
            self.process = None

    def close(self) -> None:
        self.stop()
        if self.epmd is not None:
            stop_group(self.epmd)
            self.epmd = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies.

    A pytest killed from outside runs no ``finally``; this way its node (the
    rabbitmq-server script stops the VM on SIGTERM) and epmd still go.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process started with ``start_new_session`` and what it spawned.

    SIGTERM to the leader first (the rabbitmq-server script turns it into a clean
    node stop); if the leader does not exit in time, SIGKILL its whole group,
    which is ours alone since the process leads its own session.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout)


@contextlib.contextmanager
def rabbitmq_server(advanced: str = "[].", **settings: str) -> Iterator[RabbitMQServer]:
    """Run a rabbitmq-server node for the duration of the block.

    Args:
        advanced: The node's ``advanced.config`` (Erlang terms).
        settings: Extra ``rabbitmq.conf`` lines, as key and value.
    """
    folder = Path(tempfile.mkdtemp(prefix="taskmesh-rabbitmq-"))
    ports = free_port(), free_port(), free_port()
    server = RabbitMQServer(*ports, folder, settings=settings, advanced=advanced)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
