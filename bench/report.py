"""Turning one run's figures into the Markdown tables of bench/README.md."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(ours: Any, theirs: Any) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def _systems_table(report: dict[str, Any]) -> list[str]:
    limit = report["cpu_limit"]
    lines = [
        "| system | broker | delay()/s | bulk/s | drain no-op/s, results off "
        "| drain no-op/s, results on | on vs off | CPU task/s | share of CPU limit "
        "| p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["systems"]:
        off, on = row.get("drain_noop"), row.get("drain_noop_results")
        change = f"{(on / off - 1) * 100:+.0f} %" if off and on else "n/a"
        share = f"{row['drain_cpu'] / limit * 100:.0f} %" if row.get("drain_cpu") else "n/a"
        name = row["system"] + (f" (error: {row['error']})" if row.get("error") else "")
        lines.append(
            f"| {name} | {row.get('broker', '')} | {_num(row.get('enqueue_single'))} "
            f"| {_num(row.get('enqueue_bulk'))} | {_num(off)} | {_num(on)} | {change} "
            f"| {_num(row.get('drain_cpu'))} | {share} | {_num(row.get('latency_p50_ms'), 2)} "
            f"| {_num(row.get('latency_p99_ms'), 2)} |"
        )
    return lines


def _ratio_table(ours: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"taskmesh ({ours['system']}, {ours.get('broker')}) divided by each peer "
        "(above 1 is better for taskmesh; for p99 latency, the peer's over taskmesh's):",
        "",
        "| peer | delay() | drain, results off | drain, results on | CPU task | p99 latency |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer in peers:
        lines.append(
            f"| {peer['system']} "
            f"| {_ratio(ours.get('enqueue_single'), peer.get('enqueue_single'))} "
            f"| {_ratio(ours.get('drain_noop'), peer.get('drain_noop'))} "
            f"| {_ratio(ours.get('drain_noop_results'), peer.get('drain_noop_results'))} "
            f"| {_ratio(ours.get('drain_cpu'), peer.get('drain_cpu'))} "
            f"| {_ratio(peer.get('latency_p99_ms'), ours.get('latency_p99_ms'))} |"
        )
    return lines


def _targets(
    report: dict[str, Any], ours: dict[str, Any], peers: list[dict[str, Any]]
) -> list[str]:
    ceiling = report["ceiling"]
    broker = ours.get("broker", "")
    checks: list[tuple[str, float | None, float | None]] = []
    fastest = max((p.get("drain_noop") or 0 for p in peers), default=0)
    celery = next((p for p in peers if p["system"] == "celery"), {})
    if broker == "redis" and fastest:
        checks.append(("drain >= 2x the fastest peer", ours.get("drain_noop"), 2 * fastest))
    if broker == "amqp" and fastest:
        checks.append(
            ("RabbitMQ drain >= 1.5x the fastest peer", ours.get("drain_noop"), 1.5 * fastest)
        )
    if broker == "sqlite" and celery.get("drain_noop"):
        checks.append(
            (
                "SQLite drain >= Celery prefork on Redis",
                ours.get("drain_noop"),
                celery["drain_noop"],
            )
        )
    if ours.get("drain_noop"):
        checks.append(
            ("results on >= 70 % of results off", ours.get("drain_noop_results"),
             0.7 * ours["drain_noop"])
        )  # fmt: skip
    if ours.get("drain_cpu"):
        checks.append(
            ("CPU task >= 85 % of the limit", ours["drain_cpu"], 0.85 * report["cpu_limit"])
        )
    one_trip = {
        "redis": ceiling.get("redis-py lpush, one round trip each"),
        "sqlite": ceiling.get("sqlite3 insert, one transaction each"),
        "amqp": ceiling.get("pika publish, confirm each (one round trip)"),
    }.get(broker)
    if one_trip:
        checks.append(
            ("delay() >= 90 % of one round trip", ours.get("enqueue_single"), 0.9 * one_trip)
        )
    if celery.get("enqueue_single"):
        checks.append(
            ("bulk >= 20x Celery's delay() loop", ours.get("enqueue_bulk"),
             20 * celery["enqueue_single"])
        )  # fmt: skip
    lines = ["| target | taskmesh | needed | met |", "| --- | ---: | ---: | --- |"]
    for label, value, needed in checks:
        met = "yes" if value is not None and needed is not None and value >= needed else "NO"
        lines.append(f"| {label} | {_num(value)} | {_num(needed)} | {met} |")
    p99 = ours.get("latency_p99_ms")
    if p99 is not None:
        bound = {"redis": 1.0, "amqp": 2.0}.get(broker)
        met = "n/a" if bound is None else ("yes" if p99 <= bound else "NO")
        label = f"p99 latency <= {bound} ms ({broker})" if bound else "p99 latency (no target)"
        lines.append(f"| {label} | {p99:.2f} ms | {bound or 'n/a'} | {met} |")
    return lines


def render(report: dict[str, Any]) -> str:
    """Return the report as Markdown."""
    machine = report["machine"]
    out = [
        f"Run {report['when']} on {machine['cores']} cores ({machine['cpu']}), "
        f"Python {machine['python']}; {report['tasks']:,} tasks per drain; "
        f"results stored in {report.get('result_store', 'the broker')}; "
        f"`{report['command']}`",
        "",
        f"CPU task: {report['cpu_task_seconds'] * 1000:.2f} ms of CPU; the CPU-bound limit "
        f"is {report['concurrency']} cores / that = {report['cpu_limit']:,.0f} tasks/s.",
        "",
        *_systems_table(report),
        "",
        "Broker ceiling (operations/s, or milliseconds where the name says ms):",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *(
            f"| {name} | {_num(value, 2 if name.endswith(' ms') else 0)} |"
            for name, value in report["ceiling"].items()
        ),
    ]
    ours_all = [r for r in report["systems"] if r["system"].startswith("taskmesh")]
    peers = [r for r in report["systems"] if not r["system"].startswith("taskmesh")]
    for ours in ours_all:
        if peers:
            out += ["", *_ratio_table(ours, peers)]
        out += ["", f"Targets of issue #8 for {ours['system']}:", ""]
        out += _targets(report, ours, peers)
    return "\n".join(out)
