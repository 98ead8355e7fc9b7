"""The benchmark tasks on Dramatiq (run in the peers' environment only)."""

from __future__ import annotations

import time

import dramatiq

from bench import cpu, probe
from bench.apps import result_url, settings

_url, _queue, _results = settings()

if _url.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # Its defaults: persistent messages, no publisher confirms, prefetch 2 per thread.
    broker: dramatiq.Broker = RabbitmqBroker(url=_url)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=_url)
if _results:
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=result_url())))
dramatiq.set_broker(broker)

_options = {"queue_name": _queue, "max_retries": 0}
if _results:
    _options["store_results"] = True


@dramatiq.actor(actor_name="bench_noop", **_options)
def noop() -> None:
    """Do nothing."""
    probe.tick()


@dramatiq.actor(actor_name="bench_burn", **_options)
def burn(iterations: int) -> int:
    """Burn a fixed amount of CPU."""
    value = cpu.burn(iterations)
    probe.tick()
    return value


@dramatiq.actor(actor_name="bench_stamp", **_options)
def stamp(sent: float, record: bool) -> None:
    """Record the time since ``sent``."""
    if record:
        probe.latency(time.time() - sent)
    probe.tick()
