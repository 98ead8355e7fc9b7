"""Matching wall-clock times of a five-field cron expression, through croniter.

croniter is imported here, at the top, so a missing ``taskmesh[cron]`` extra is
one ``ImportError`` that :func:`taskmesh.beat.schedules.crontab` turns into a
``ConfigurationError`` naming the extra.

Only naive wall-clock times pass through croniter; mapping them to instants in
a time zone is :mod:`taskmesh.beat.schedules`' job. croniter 7 with aware
datetimes fires ``30 1 * * *`` twice on a fall-back night (at 01:30 before and
after the change), which beat must not do.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from croniter import CroniterError, croniter

from taskmesh.errors import ConfigurationError

__all__ = ["CronFields"]

_FIELDS = 5
_HOURS = set(range(24))


class CronFields:
    """A validated five-field expression.

    Args:
        expression: Minute, hour, day of month, month, day of week.

    Raises:
        ConfigurationError: Not five fields, a field out of range, or a date
            that never exists (30 February).
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression
        if len(expression.split()) != _FIELDS:
            raise ConfigurationError(
                f"Cron expression {expression!r} must have five fields (minute hour "
                "day-of-month month day-of-week) or be an alias such as '@daily'."
            )
        try:
            probe = croniter(expression, datetime.datetime(2000, 1, 1))
            # Probing across a leap day proves the expression can match at all.
            probe.get_next(datetime.datetime)
        except CroniterError as exc:
            raise ConfigurationError(f"Invalid cron expression {expression!r}: {exc}.") from exc
        hours = probe.expanded[1]
        self.every_hour = hours == ["*"] or set(hours) == _HOURS

    def walls_from(self, start: datetime.datetime) -> Iterator[datetime.datetime]:
        """Yield matching naive wall-clock times strictly after ``start``, in order."""
        matches = croniter(self.expression, start)
        while True:
            value: datetime.datetime = matches.get_next(datetime.datetime)
            yield value
