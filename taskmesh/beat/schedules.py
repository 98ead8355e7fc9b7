"""When a periodic task runs: fixed intervals and crontab expressions.

A schedule answers one question, :meth:`Schedule.next_after`: the first run
instant strictly after a given instant. Instants are epoch seconds (UTC), so
every beat process computes the same run times, and each run time names one
run: beat claims ``(entry, run time)`` once across all its processes.

:class:`Interval` runs at whole multiples of its period counted from the Unix
epoch (``every 300 s`` runs at :00, :05, :10 ... UTC), so two processes agree
on its run times without talking to each other.

:class:`Crontab` reads five-field cron expressions in a time zone. croniter
(the ``taskmesh[cron]`` extra) finds matching wall-clock times; this module maps
each wall-clock time to instants, because croniter's own time-zone handling
runs a fixed-time job twice on the night clocks go back. The mapping, as ISC
(Vixie) cron does it:

- a wall-clock time the clocks skip (02:30 on the spring-forward night in
  New York) runs once, at the first valid instant after it: the end of the gap
  (03:00 local). A job whose hour field is ``*`` skips that time instead, since
  it runs again within the hour;
- a wall-clock time that happens twice (01:30 on the fall-back night) runs at
  its first occurrence only, unless the hour field is ``*``: an hourly or
  minutely job runs at both, so it runs every real hour (or minute).
"""

from __future__ import annotations

import abc
import datetime
import importlib
import itertools
import math
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.beat.cronfields import CronFields

__all__ = ["Crontab", "Interval", "Schedule", "crontab", "load_zone", "to_schedule"]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Wall-clock candidates examined for one next run before giving up: enough for
# a minutely job across a two-hour gap, far from any real schedule's need.
_MAX_CANDIDATES = 10_000


def load_zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name``.

    Raises:
        ConfigurationError: No such zone is known to this system's tz database.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC' "
            "(install the tzdata package where the system has no tz database)."
        ) from exc


class Schedule(abc.ABC):
    """When an entry runs."""

    @abc.abstractmethod
    def next_after(self, moment: float, zone: ZoneInfo) -> float:
        """Return the first run instant strictly after ``moment``.

        Args:
            moment: Epoch seconds.
            zone: The app's time zone, for schedules that read wall-clock time.

        Raises:
            ConfigurationError: The schedule never runs again.
        """

    @abc.abstractmethod
    def fingerprint(self, zone: ZoneInfo) -> str:
        """Return a short text that changes whenever the run times change."""

    def upcoming(self, moment: float, zone: ZoneInfo, count: int) -> list[float]:
        """Return the next ``count`` run instants after ``moment``."""
        runs: list[float] = []
        for _ in range(count):
            moment = self.next_after(moment, zone)
            runs.append(moment)
        return runs


class Interval(Schedule):
    """Every ``seconds``, at whole multiples of it since the epoch.

    Args:
        seconds: The period; more than 0.

    Raises:
        ConfigurationError: The period is not a positive number.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ConfigurationError(f"An interval must be a number of seconds, got {seconds!r}.")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError(f"An interval must be more than 0 seconds, got {seconds!r}.")
        self.seconds = float(seconds)

    def __repr__(self) -> str:
        return f"<Interval every {self.seconds:g} s>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)

    def next_after(self, moment: float, zone: ZoneInfo) -> float:
        """Return the next multiple of the period after ``moment``."""
        count = math.floor(moment / self.seconds) + 1
        # With a fractional period, k * period / period can round to just
        # under k, which would hand back the run at `moment` itself.
        while count * self.seconds <= moment:
            count += 1
        return count * self.seconds

    def fingerprint(self, zone: ZoneInfo) -> str:
        """Return ``every:<seconds>``; the zone plays no part."""
        return f"every:{self.seconds!r}"


class Crontab(Schedule):
    """A five-field cron expression, read in the app's zone or its own.

    Build one with :func:`crontab`.

    Args:
        expression: Minute, hour, day of month, month, day of week.
        timezone: An IANA zone overriding the app's ``timezone`` setting.
    """

    def __init__(self, expression: str, timezone: str | None = None) -> None:
        self.expression = expression
        self.timezone = timezone
        self._zone = load_zone(timezone) if timezone is not None else None
        self._fields: CronFields = _cron_fields(expression)

    def __repr__(self) -> str:
        zone = f" {self.timezone}" if self.timezone else ""
        return f"<Crontab {self.expression!r}{zone}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Crontab)
            and other.expression == self.expression
            and other.timezone == self.timezone
        )

    def __hash__(self) -> int:
        return hash((self.expression, self.timezone))

    @property
    def every_hour(self) -> bool:
        """Whether the hour field matches all 24 hours (DST rules differ, see module)."""
        return self._fields.every_hour

    def zone(self, default: ZoneInfo) -> ZoneInfo:
        """The zone its times are read in: its own, else ``default``."""
        return self._zone or default

    def fingerprint(self, zone: ZoneInfo) -> str:
        """Return the expression and the zone it is read in."""
        return f"cron:{self.expression}@{self.zone(zone).key}"

    def next_after(self, moment: float, zone: ZoneInfo) -> float:
        """Return the first instant after ``moment`` whose local time matches.

        Wall-clock matches are taken in order and mapped to instants (see the
        module docstring for skipped and repeated times); the earliest instant
        after ``moment`` wins. Once a match maps no earlier than the best found,
        no later match can map earlier, so the search stops there.
        """
        zone = self.zone(zone)
        local = datetime.datetime.fromtimestamp(moment, zone)
        start = local.replace(tzinfo=None, fold=0)
        if local.fold == 0 and _is_repeated(start, zone):
            # The hour about to repeat holds times whose second occurrence
            # lies after `moment` although their wall-clock time lies before.
            first = start.replace(tzinfo=zone, fold=0).utcoffset()
            second = start.replace(tzinfo=zone, fold=1).utcoffset()
            if first is not None and second is not None:
                start -= first - second
        best: float | None = None
        walls = self._fields.walls_from(start - datetime.timedelta(seconds=1))
        for wall in itertools.islice(walls, _MAX_CANDIDATES):
            instants = wall_to_instants(wall, zone, both_folds=self.every_hour)
            if not instants:
                continue
            if best is not None and instants[0] >= best:
                return best
            for instant in instants:
                if instant > moment and (best is None or instant < best):
                    best = instant
        if best is None:
            raise ConfigurationError(f"Crontab {self.expression!r} found no run time in range.")
        return best


def _is_repeated(wall: datetime.datetime, zone: ZoneInfo) -> bool:
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    second = wall.replace(tzinfo=zone, fold=1).timestamp()
    return first < second


def _gap_end(before: float, after: float, zone: ZoneInfo) -> float:
    """Return the transition instant in ``(before, after]`` where the offset changes."""
    offset = datetime.datetime.fromtimestamp(before, zone).utcoffset()
    low, high = int(before), math.ceil(after)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return float(high)


def wall_to_instants(wall: datetime.datetime, zone: ZoneInfo, *, both_folds: bool) -> list[float]:
    """Map a naive wall-clock time in ``zone`` to the instants it runs at, in order.

    Args:
        wall: A naive local time.
        zone: Its zone.
        both_folds: Run a repeated time at both occurrences, and skip a time
            the clocks jump over (an every-hour job), instead of the first
            occurrence only and the end of the gap.

    Returns:
        One instant for an ordinary time; one or two for a repeated time; none
        or one (the end of the gap) for a skipped time.
    """
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    second = wall.replace(tzinfo=zone, fold=1).timestamp()
    if first == second:
        return [first]
    if first < second:
        return [first, second] if both_folds else [first]
    # PEP 495: in a gap, fold=0 reads the time with the offset before the
    # change and fold=1 with the one after, so `second` < `first` here.
    return [] if both_folds else [_gap_end(second, first, zone)]


def _cron_fields(expression: str) -> CronFields:
    try:
        module = importlib.import_module("taskmesh.beat.cronfields")
    except ImportError as exc:
        raise ConfigurationError(
            f"crontab({expression!r}) needs croniter: pip install 'taskmesh[cron]'."
        ) from exc
    fields: CronFields = module.CronFields(expression)
    return fields


def crontab(
    expression: str | None = None,
    *,
    minute: str | int = "*",
    hour: str | int = "*",
    day_of_month: str | int = "*",
    month_of_year: str | int = "*",
    day_of_week: str | int = "*",
    timezone: str | None = None,
) -> Crontab:
    """Return a cron schedule, from an expression or from keyword fields.

    ``crontab("*/5 * * * *")``, ``crontab("@daily")`` or
    ``crontab(minute=0, hour=3, day_of_week="mon-fri")``. Fields take numbers,
    ranges (``1-5``), steps (``*/15``, ``0-30/10``), lists (``1,15``), and
    month and day names (``jan``, ``mon-fri``). When both day of month and
    day of week are restricted, a day matching either runs, as cron defines.

    Args:
        expression: Five fields, or one of ``@yearly``, ``@annually``,
            ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``.
        minute: 0-59.
        hour: 0-23.
        day_of_month: 1-31.
        month_of_year: 1-12 or ``jan``-``dec``.
        day_of_week: 0-7 (0 and 7 are Sunday) or ``sun``-``sat``.
        timezone: An IANA zone for this entry; the app's ``timezone`` if unset.

    Raises:
        ConfigurationError: Both forms given, a field is invalid, or the
            expression can never match (such as 30 February).
    """
    fields = [minute, hour, day_of_month, month_of_year, day_of_week]
    if expression is not None:
        if any(str(value) != "*" for value in fields):
            raise ConfigurationError(
                f"crontab({expression!r}) takes an expression or keyword fields, not both."
            )
        text = " ".join(expression.split())
        text = ALIASES.get(text.lower(), text)
    else:
        text = " ".join(str(value).strip() for value in fields)
    return Crontab(text, timezone)


def to_schedule(value: Any, *, entry: str = "") -> Schedule:
    """Turn a ``beat_schedule`` entry's ``schedule`` into a :class:`Schedule`.

    Accepts a number of seconds, a ``timedelta``, a cron expression string, or
    a :class:`Schedule`.

    Raises:
        ConfigurationError: None of these, or an invalid one.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, datetime.timedelta):
        return Interval(value.total_seconds())
    if isinstance(value, str):
        return crontab(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Interval(value)
    where = f" of beat entry {entry!r}" if entry else ""
    raise ConfigurationError(
        f"Invalid schedule{where}: {value!r}. Use seconds, a timedelta, a cron string "
        "such as '*/5 * * * *', or crontab(...)."
    )
