"""The RabbitMQ adapter against a real rabbitmq-server node (issue #5).

The contract suite runs as on every broker, with two documented differences:
AMQP reports no count of unacked messages, so ``size`` and ``purge`` see ready
and delayed messages only; and a lease ends when its channel closes.
"""

from __future__ import annotations

import pytest

from taskmesh.transport import Delivery, Outgoing, Transport
from tests.integration.contract import TransportContract, receive_until
from tests.servers import RabbitMQServer

pytestmark = pytest.mark.rabbitmq


def drop_connection(transport: Transport) -> None:
    """Close the transport's connection under it, as a network failure would."""
    transport._drop()  # type: ignore[attr-defined]


class TestRabbitMQTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, rabbitmq: RabbitMQServer) -> str:
        return rabbitmq.url

    def let_lease_expire(self, transport: Transport, delivery: Delivery) -> None:
        drop_connection(transport)

    def test_size_counts_ready_delayed_and_leased(self, transport: Transport, queue: str) -> None:
        transport.publish_many([Outgoing(queue, b"ready-1"), Outgoing(queue, b"held", delay=3600)])
        transport.publish(Outgoing(queue, b"ready-2"))
        [leased] = receive_until(transport, [queue], 1)
        # Limitation: AMQP counts ready messages only; the delayed one is in a
        # delay queue the adapter adds up, the leased one is not counted.
        assert transport.size(queue) == 2
        transport.ack(leased)

    def test_purge_leaves_leased_messages(self, transport: Transport, queue: str) -> None:
        transport.publish(Outgoing(queue, b"leased"))
        [leased] = receive_until(transport, [queue], 1)
        transport.publish_many([Outgoing(queue, b"ready"), Outgoing(queue, b"delayed", delay=3600)])
        assert transport.purge(queue) == 2
        assert transport.size(queue) == 0
        transport.ack(leased)
        assert transport.receive([queue], 1, 0.3) == []
