"""The Redis broker on a real redis-server: the contract, then issue #3's scenarios."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from taskmesh.errors import BrokerError, BrokerUnavailable
from taskmesh.result import State, TaskRecord, task_key
from taskmesh.transport import Outgoing, Transport, connect
from tests.integration.contract import TransportContract, receive_until
from tests.integration.harness import Scenario, scenario_context, wait_until
from tests.servers import LOOPBACK, RedisServer, free_port, prefixed

pytestmark = pytest.mark.redis


class TestRedisTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, redis: RedisServer) -> str:
        return prefixed(redis)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, to crash or to count its commands."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(free_port(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def command_calls(server: RedisServer, command: str) -> int:
    """How many times the server ran ``command`` since it started."""
    with closing(redis_py.Redis(host=LOOPBACK, port=server.port)) as client:
        stats = client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


def results(scenario: Scenario, ids: list[str]) -> list[TaskRecord | None]:
    raws = scenario.app.result_store().get_many([task_key(task_id) for task_id in ids])
    return [None if raw is None else TaskRecord.from_bytes(raw) for raw in raws]


def all_succeeded(scenario: Scenario, ids: list[str]) -> bool:
    return all(r is not None and r.state is State.SUCCESS for r in results(scenario, ids))


def outages(log: str) -> int:
    """How many times a worker's log reports losing Redis."""
    phrases = ("broker connection lost", "redis unreachable", "result store unreachable")
    return sum(log.count(phrase) for phrase in phrases)


def queue_size(scenario: Scenario) -> int:
    with scenario.app.connect_broker() as transport:
        return transport.size(scenario.queue)


# the broker on its own ----------------------------------------------------------------------


def test_key_prefix_keeps_apps_apart(redis: RedisServer) -> None:
    queue = f"shared-{uuid.uuid4().hex[:8]}"
    with connect(prefixed(redis)) as first, connect(prefixed(redis)) as second:
        first.publish(Outgoing(queue, b"first's"))
        assert second.receive([queue], 1, 0.3) == []
        assert second.size(queue) == 0
        [delivery] = first.receive([queue], 1, 5.0)
        assert delivery.body == b"first's"


def warm_up(transport: Transport) -> None:
    """Run every script once, so Redis knows them and no NOSCRIPT retry is counted."""
    transport.publish_many([Outgoing("warm-up", b"x"), Outgoing("warm-up", b"y")])
    first, second = receive_until(transport, ["warm-up"], 2)
    transport.extend_leases([first, second], 10)
    transport.ack_many([first])
    transport.reject(second, "warm-up")
    transport.purge("warm-up.dead")


def test_receive_of_zero_messages_leases_none(redis: RedisServer) -> None:
    with connect(prefixed(redis)) as transport:
        transport.publish(Outgoing("q", b"stays"))
        assert transport.receive(["q"], 0, 0.1) == []
        assert [d.body for d in transport.receive(["q"], 5, 1.0)] == [b"stays"]


def test_publish_many_is_one_round_trip_per_500_messages(own_redis: RedisServer) -> None:
    with connect(prefixed(own_redis)) as transport:
        warm_up(transport)
        before = command_calls(own_redis, "evalsha") + command_calls(own_redis, "eval")
        transport.publish_many([Outgoing("bulk", str(i).encode()) for i in range(1000)])
        after = command_calls(own_redis, "evalsha") + command_calls(own_redis, "eval")
        assert transport.size("bulk") == 1000
    assert after - before == 2


def test_receive_takes_a_batch_in_one_script_call(own_redis: RedisServer) -> None:
    with connect(prefixed(own_redis)) as transport:
        warm_up(transport)
        transport.publish_many([Outgoing("batch", str(i).encode()) for i in range(300)])
        before = command_calls(own_redis, "evalsha")
        taken = transport.receive(["batch"], 250, 5.0)
        assert command_calls(own_redis, "evalsha") - before == 1
        assert [int(d.body) for d in taken] == list(range(250))
        before = command_calls(own_redis, "evalsha")
        transport.ack_many(taken)
        assert command_calls(own_redis, "evalsha") - before == 1
        assert transport.size("batch") == 50


def test_reject_is_one_atomic_call_and_fenced(own_redis: RedisServer) -> None:
    with connect(prefixed(own_redis), lease_seconds=0.5) as transport:
        warm_up(transport)
        transport.publish(Outgoing("work", b"poison", {"x-trace": "t"}))
        [stale] = receive_until(transport, ["work"], 1)
        [fresh] = receive_until(transport, ["work"], 1)  # after the short lease lapsed
        transport.reject(stale, "too late")  # the stale holder decides nothing
        assert transport.size("work.dead") == 0
        before = command_calls(own_redis, "evalsha")
        transport.reject(fresh, "bad input")
        assert command_calls(own_redis, "evalsha") - before == 1
        assert transport.size("work") == 0
        [dead] = transport.receive(["work.dead"], 1, 5.0)
        assert dict(dead.headers) == {
            "x-trace": "t",
            "x-dead-letter-reason": "bad input",
            "x-original-queue": "work",
        }
        assert (dead.body, dead.delivery_count) == (b"poison", 1)


def test_idle_receive_blocks_instead_of_polling(own_redis: RedisServer) -> None:
    with connect(prefixed(own_redis)) as transport:
        warm_up(transport)
        before = command_calls(own_redis, "evalsha")
        assert transport.receive(["idle"], 10, 3.0) == []
        # One look before blocking on the wake list, one after.
        assert command_calls(own_redis, "evalsha") - before <= 3


@contextmanager
def blocked_receive(server: RedisServer, queue: str) -> Iterator[tuple[Transport, list[Any]]]:
    """A receive of ``queue`` blocked on its wake list in a thread; yields a producer."""
    url = prefixed(server)
    with connect(url) as consumer, connect(url) as producer:
        warm_up(consumer)
        taken: list[Any] = []
        waiter = threading.Thread(target=lambda: taken.extend(consumer.receive([queue], 5, 20.0)))
        waiter.start()
        wait_until(lambda: blocked_clients(server) == 1, 10, "the receive to block")
        yield producer, taken
        waiter.join(10)


def test_a_woken_receive_leases_in_the_same_round_trip(own_redis: RedisServer) -> None:
    with blocked_receive(own_redis, "w") as (producer, taken):
        # The script runs once before blocking and once, sent with the BLPOP,
        # when the publish wakes it: no third call after the wake.
        before = command_calls(own_redis, "evalsha")
        producer.publish(Outgoing("w", b"wake"))
    assert [d.body for d in taken] == [b"wake"]
    assert command_calls(own_redis, "evalsha") - before == 2  # the publish, the receive


def test_a_woken_receive_survives_a_script_flush(own_redis: RedisServer) -> None:
    with blocked_receive(own_redis, "f") as (producer, taken):
        with closing(redis_py.Redis(host=LOOPBACK, port=own_redis.port)) as admin:
            admin.script_flush()
        producer.publish(Outgoing("f", b"after flush"))
    assert [d.body for d in taken] == [b"after flush"]


def blocked_clients(server: RedisServer) -> int:
    with closing(redis_py.Redis(host=LOOPBACK, port=server.port)) as client:
        return int(client.info("clients")["blocked_clients"])


def test_unix_socket_url(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tmr", dir="/tmp"))
    server = RedisServer(free_port(), tmp_path, unixsocket=folder / "r.sock")
    try:
        server.start()
        url = f"unix://{folder}/r.sock?db=3&key_prefix=t:"
        with connect(url) as transport:
            transport.publish(Outgoing("local", b"over a socket"))
            [delivery] = transport.receive(["local"], 1, 5.0)
            assert delivery.body == b"over a socket"
        with closing(redis_py.Redis(host=LOOPBACK, port=server.port, db=3)) as client:
            assert client.exists("t:local:messages")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and a server certificate for 127.0.0.1 into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taskmesh test CA")])
    ca_cert = certificate("taskmesh test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate(LOOPBACK, server_key, ca_name, ca_key, ca=False)
    paths = (folder / "server.crt", folder / "server.key", folder / "ca.crt")
    paths[0].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def test_rediss_url_speaks_tls_and_checks_the_certificate(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path, tls=make_certificates(tmp_path))
    try:
        server.start()
        ca = tmp_path / "ca.crt"
        with connect(f"{server.url}?ssl_ca_certs={ca}") as transport:
            transport.publish(Outgoing("secure", b"encrypted on the wire"))
            [delivery] = transport.receive(["secure"], 1, 5.0)
            assert delivery.body == b"encrypted on the wire"
        # Without the CA, the server's certificate is not trusted.
        with connect(f"{server.url}?retry_timeout=0") as transport:
            with pytest.raises(BrokerUnavailable, match="certificate"):
                transport.publish(Outgoing("secure", b"x"))
    finally:
        server.stop()


def test_wrong_password_is_broker_unavailable_and_never_shows_it(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path, password="right-one")
    try:
        server.start()
        url = f"redis://:wrong-one@{LOOPBACK}:{server.port}/0?retry_timeout=0"
        with connect(url) as transport:
            with pytest.raises(BrokerUnavailable) as caught:
                transport.publish(Outgoing("q", b"x"))
            assert "wrong-one" not in str(caught.value)
            assert "wrong-one" not in repr(transport)
        with connect(server.url) as transport:
            transport.publish(Outgoing("q", b"x"))
            assert transport.size("q") == 1
    finally:
        server.stop()


def test_publish_to_a_dead_server_fails_after_its_retry_window() -> None:
    url = f"redis://:secret@{LOOPBACK}:{free_port()}/0?retry_timeout=1"
    with connect(url) as transport:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="cannot be reached") as caught:
            transport.publish(Outgoing("q", b"lost?"))
        assert 1.0 <= time.monotonic() - started < 10.0
        assert "secret" not in str(caught.value)
        with pytest.raises(BrokerUnavailable):
            transport.receive(["q"], 1, 0.1)


def test_transport_survives_a_crash_and_reconnects(own_redis: RedisServer) -> None:
    with connect(prefixed(own_redis, "retry_timeout=0")) as transport:
        transport.publish(Outgoing("durable", b"kept by the AOF"))
        own_redis.kill()
        with pytest.raises(BrokerError):
            transport.receive(["durable"], 1, 0.5)
        with pytest.raises(BrokerUnavailable):
            transport.receive(["durable"], 1, 0.5)
        own_redis.start()
        [delivery] = receive_until(transport, ["durable"], 1)
        assert delivery.body == b"kept by the AOF"


# worker scenarios of issue #3 -----------------------------------------------------------------


@pytest.fixture
def redis_scenario(redis: RedisServer, tmp_path: Path) -> Iterator[Scenario]:
    url = prefixed(redis)
    yield from scenario_context(url, url, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_2000_tasks_complete_across_a_redis_crash(own_redis: RedisServer, tmp_path: Path) -> None:
    url = prefixed(own_redis)
    scenario = Scenario(url, url, tmp_path)
    # A receive whose reply the crash swallowed leaves its messages leased to
    # no one until the lease runs out: keep that wait short.
    scenario.settings["broker_lease_seconds"] = 5
    try:
        workers = [scenario.start_worker(4, "threads") for _ in range(2)]
        app = scenario.app
        envelopes = [app.build_envelope("scenario.mark", [f"k{i}"]) for i in range(2000)]
        ids = [envelope.id for envelope in envelopes]
        for start in range(0, 1000, 100):
            app.publish(envelopes[start : start + 100])
        wait_until(lambda: len(scenario.lines("mark")) >= 300, 60, "300 tasks to run")
        own_redis.kill()
        # The producer keeps publishing through the outage: its calls retry.
        producer = threading.Thread(
            target=lambda: [app.publish(envelopes[s : s + 100]) for s in range(1000, 2000, 100)]
        )
        producer.start()
        wait_until(
            lambda: all(outages(worker.output()) for worker in workers),
            30,
            "both workers to notice the outage",
        )
        time.sleep(3)  # the outage's length, an input of the test and not a margin
        own_redis.start()
        producer.join(120)
        assert not producer.is_alive()
        wait_until(lambda: all_succeeded(scenario, ids), 180, "all 2000 results", every=0.5)
        assert set(scenario.lines("mark")) == {f"k{i}" for i in range(2000)}
        wait_until(lambda: queue_size(scenario) == 0, 60, "every message to be acked")
        for worker in workers:
            assert worker.process.poll() is None
            # Once per connection (the loop's, each executor's store), not per retry.
            log = worker.output()
            assert 1 <= outages(log) <= 6
            assert log.count("reachable again") + log.count("connection restored") >= 1
    finally:
        scenario.close()


@pytest.mark.slow
def test_eta_beyond_several_leases_runs_once_and_not_early(redis_scenario: Scenario) -> None:
    redis_scenario.settings["broker_lease_seconds"] = 5
    redis_scenario.start_worker(1, "threads")
    redis_scenario.start_worker(1, "threads")
    sent = time.time()
    result = redis_scenario.app.send_task("scenario.started_at", ["eta"], countdown=20)
    assert result.get(timeout=60) >= sent + 20
    wait_until(lambda: queue_size(redis_scenario) == 0, 20, "the message to be acked")
    assert len(redis_scenario.lines("started")) == 1


@pytest.mark.slow
def test_task_running_three_lease_periods_runs_once(redis_scenario: Scenario) -> None:
    redis_scenario.settings["broker_lease_seconds"] = 2
    redis_scenario.start_worker(1, "threads")
    redis_scenario.start_worker(1, "threads")
    result = redis_scenario.app.send_task("scenario.sleep", [6.5, "long"])
    assert result.get(timeout=60) == 6.5
    wait_until(lambda: queue_size(redis_scenario) == 0, 20, "the message to be acked")
    assert redis_scenario.lines("sleep-start") == ["long"]
