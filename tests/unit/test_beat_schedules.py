"""Schedule math with an injected instant: intervals, cron fields, zones and DST (issue #7)."""

from __future__ import annotations

import datetime
import itertools
import math
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmesh.beat.schedules import Crontab, Interval, crontab, to_schedule
from taskmesh.errors import ConfigurationError

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def at(zone: ZoneInfo, *parts: int, fold: int = 0) -> float:
    return datetime.datetime(*parts, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


def local(moment: float, zone: ZoneInfo) -> str:
    return datetime.datetime.fromtimestamp(moment, zone).isoformat()


def runs(schedule: str, zone: ZoneInfo, start: tuple[int, ...], count: int) -> list[str]:
    moments = crontab(schedule).upcoming(at(zone, *start), zone, count)
    return [local(moment, zone) for moment in moments]


def gaps(moments: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(moments)]


def runs_within(schedule: str, zone: ZoneInfo, start: float, end: float) -> list[float]:
    found = []
    moment = crontab(schedule).next_after(start, zone)
    while moment < end:
        found.append(moment)
        moment = crontab(schedule).next_after(moment, zone)
    return found


class TestInterval:
    def test_runs_at_multiples_of_the_period_since_the_epoch(self) -> None:
        schedule = Interval(300)
        assert schedule.next_after(1_000_000_000.5, UTC) == 1_000_000_200
        assert schedule.next_after(1_000_000_200, UTC) == 1_000_000_500

    def test_next_run_is_strictly_after_the_instant(self) -> None:
        assert Interval(1).next_after(10.0, UTC) == 11.0

    @pytest.mark.parametrize("period", [0.1, 0.3, 0.7, 1.1, 2.5])
    def test_fractional_periods_never_repeat_a_run(self, period: float) -> None:
        moments = Interval(period).upcoming(1_000_000.05, UTC, 2000)
        assert all(later > earlier for earlier, later in itertools.pairwise(moments))
        assert max(gaps(moments)) < period * 1.5

    @pytest.mark.parametrize("value", [0, -1, float("nan"), "5", True])
    def test_rejects_what_is_not_a_positive_number(self, value: object) -> None:
        with pytest.raises(ConfigurationError, match="interval"):
            Interval(value)  # type: ignore[arg-type]

    def test_to_schedule_reads_seconds_timedelta_and_cron_strings(self) -> None:
        assert to_schedule(30) == Interval(30)
        assert to_schedule(datetime.timedelta(minutes=2)) == Interval(120)
        assert to_schedule("*/5 * * * *") == crontab(minute="*/5")
        with pytest.raises(ConfigurationError, match="entry 'x'"):
            to_schedule([1], entry="x")


class TestCronFields:
    def test_every_five_minutes(self) -> None:
        assert runs("*/5 * * * *", UTC, (2024, 1, 1, 10, 2), 3) == [
            "2024-01-01T10:05:00+00:00",
            "2024-01-01T10:10:00+00:00",
            "2024-01-01T10:15:00+00:00",
        ]

    def test_keyword_form_with_day_names(self) -> None:
        schedule = crontab(minute=0, hour=3, day_of_week="mon-fri")
        assert schedule.expression == "0 3 * * mon-fri"
        moments = schedule.upcoming(at(UTC, 2024, 1, 5, 12), UTC, 3)  # a Friday
        assert [local(m, UTC) for m in moments] == [
            "2024-01-08T03:00:00+00:00",
            "2024-01-09T03:00:00+00:00",
            "2024-01-10T03:00:00+00:00",
        ]

    def test_ranges_steps_lists_and_month_names(self) -> None:
        assert runs("0-30/15 9,17 1 jan,jul *", UTC, (2024, 1, 1, 12), 4) == [
            "2024-01-01T17:00:00+00:00",
            "2024-01-01T17:15:00+00:00",
            "2024-01-01T17:30:00+00:00",
            "2024-07-01T09:00:00+00:00",
        ]

    @pytest.mark.parametrize(
        ("alias", "expression"),
        [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ],
    )
    def test_aliases(self, alias: str, expression: str) -> None:
        assert crontab(alias) == Crontab(expression)

    def test_29_february_runs_in_leap_years_only(self) -> None:
        assert runs("0 0 29 2 *", UTC, (2024, 3, 1), 2) == [
            "2028-02-29T00:00:00+00:00",
            "2032-02-29T00:00:00+00:00",
        ]

    def test_31st_skips_short_months(self) -> None:
        assert runs("0 0 31 * *", UTC, (2024, 1, 31, 1), 3) == [
            "2024-03-31T00:00:00+00:00",
            "2024-05-31T00:00:00+00:00",
            "2024-07-31T00:00:00+00:00",
        ]

    def test_day_of_month_and_day_of_week_both_restricted_match_either(self) -> None:
        # Cron's rule: the 13th of each month, and every Friday.
        assert runs("0 0 13 * fri", UTC, (2024, 1, 1), 4) == [
            "2024-01-05T00:00:00+00:00",
            "2024-01-12T00:00:00+00:00",
            "2024-01-13T00:00:00+00:00",
            "2024-01-19T00:00:00+00:00",
        ]

    def test_one_day_field_restricted_matches_it_alone(self) -> None:
        assert runs("0 0 13 * *", UTC, (2024, 1, 1), 2) == [
            "2024-01-13T00:00:00+00:00",
            "2024-02-13T00:00:00+00:00",
        ]
        assert runs("0 0 * * 0", UTC, (2024, 1, 1), 1) == ["2024-01-07T00:00:00+00:00"]

    @pytest.mark.parametrize(
        "expression", ["61 * * * *", "* * *", "* * * * * *", "0 0 30 2 *", "0 0 * * xyz"]
    )
    def test_invalid_expressions_are_configuration_errors(self, expression: str) -> None:
        with pytest.raises(ConfigurationError, match=r"(?i)cron expression"):
            crontab(expression)

    def test_expression_and_keywords_together_are_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="not both"):
            crontab("* * * * *", hour=3)

    def test_unknown_zone_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="Unknown time zone"):
            crontab("0 3 * * *", timezone="Mars/Olympus")

    def test_times_are_read_in_the_zone(self) -> None:
        assert runs("0 9 * * *", BERLIN, (2024, 1, 1, 12), 1) == ["2024-01-02T09:00:00+01:00"]
        schedule = crontab("0 9 * * *", timezone="America/New_York")
        moment = schedule.next_after(at(UTC, 2024, 1, 1, 12), BERLIN)
        assert local(moment, NEW_YORK) == "2024-01-01T09:00:00-05:00"

    def test_fingerprint_names_expression_and_zone(self) -> None:
        assert crontab("@daily").fingerprint(BERLIN) == "cron:0 0 * * *@Europe/Berlin"
        assert crontab("@daily").fingerprint(BERLIN) != crontab("@daily").fingerprint(NEW_YORK)


class TestSpringForward:
    """Clocks jump 02:00 -> 03:00 (New York 10 March 2024, Berlin 31 March 2024)."""

    @pytest.mark.parametrize(
        ("zone", "day", "expected"),
        [
            (
                NEW_YORK,
                (2024, 3, 9, 12),
                ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"],
            ),
            (BERLIN, (2024, 3, 30, 12), ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]),
        ],
    )
    def test_skipped_time_runs_once_at_the_end_of_the_gap(
        self, zone: ZoneInfo, day: tuple[int, ...], expected: list[str]
    ) -> None:
        assert runs("30 2 * * *", zone, day, 2) == expected

    def test_several_skipped_times_of_one_job_run_once(self) -> None:
        found = runs("*/15 2 * * *", NEW_YORK, (2024, 3, 9, 12), 2)
        assert found == ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"]

    @pytest.mark.parametrize("zone", [NEW_YORK, BERLIN])
    @pytest.mark.parametrize("day", [(2024, 3, 10), (2024, 3, 31)])
    def test_hourly_job_runs_every_real_hour(self, zone: ZoneInfo, day: tuple[int, ...]) -> None:
        start = at(zone, *day) - 3600
        found = runs_within("0 * * * *", zone, start, start + 6 * 3600 + 1)
        assert gaps(found) == [3600.0] * 5

    def test_half_past_every_hour_skips_the_missing_half_past_two(self) -> None:
        found = runs("30 * * * *", NEW_YORK, (2024, 3, 10, 0, 45), 3)
        assert found == [
            "2024-03-10T01:30:00-05:00",
            "2024-03-10T03:30:00-04:00",
            "2024-03-10T04:30:00-04:00",
        ]


class TestFallBack:
    """Clocks go 02:00 -> 01:00 in New York (3 November 2024), 03:00 -> 02:00 in Berlin."""

    @pytest.mark.parametrize(
        ("zone", "expression", "day", "expected"),
        [
            (
                NEW_YORK,
                "30 1 * * *",
                (2024, 11, 2, 12),
                ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"],
            ),
            (
                BERLIN,
                "30 2 * * *",
                (2024, 10, 26, 12),
                ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"],
            ),
        ],
    )
    def test_repeated_time_runs_once_at_its_first_occurrence(
        self, zone: ZoneInfo, expression: str, day: tuple[int, ...], expected: list[str]
    ) -> None:
        assert runs(expression, zone, day, 2) == expected

    def test_after_the_first_occurrence_the_second_does_not_run(self) -> None:
        first = at(NEW_YORK, 2024, 11, 3, 1, 30)
        second = at(NEW_YORK, 2024, 11, 3, 1, 30, fold=1)
        assert crontab("30 1 * * *").next_after(first, NEW_YORK) > second + 86000
        assert crontab("30 1 * * *").next_after(second - 1, NEW_YORK) > second + 86000

    @pytest.mark.parametrize(("zone", "day"), [(NEW_YORK, (2024, 11, 3)), (BERLIN, (2024, 10, 27))])
    def test_hourly_job_runs_every_real_hour(self, zone: ZoneInfo, day: tuple[int, ...]) -> None:
        start = at(zone, *day) - 1
        found = runs_within("0 * * * *", zone, start, start + 7 * 3600)
        assert gaps(found) == [3600.0] * 6

    def test_every_twenty_minutes_runs_every_real_twenty_minutes(self) -> None:
        start = at(NEW_YORK, 2024, 11, 3, 0, 50)
        found = runs_within("*/20 * * * *", NEW_YORK, start, start + 3 * 3600)
        assert gaps(found) == [1200.0] * 8

    def test_fixed_hour_every_twenty_minutes_runs_in_the_first_pass_only(self) -> None:
        assert runs("*/20 1 * * *", NEW_YORK, (2024, 11, 3), 4) == [
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T01:20:00-04:00",
            "2024-11-03T01:40:00-04:00",
            "2024-11-04T01:00:00-05:00",
        ]

    def test_from_inside_the_second_pass_the_next_run_is_the_next_real_one(self) -> None:
        moment = at(NEW_YORK, 2024, 11, 3, 1, 10, fold=1)
        assert local(crontab("*/20 * * * *").next_after(moment, NEW_YORK), NEW_YORK) == (
            "2024-11-03T01:20:00-05:00"
        )

    def test_from_the_first_pass_an_hourly_job_runs_again_in_the_second(self) -> None:
        moment = at(NEW_YORK, 2024, 11, 3, 1, 45)
        assert local(crontab("30 * * * *").next_after(moment, NEW_YORK), NEW_YORK) == (
            "2024-11-03T01:30:00-05:00"
        )


@pytest.mark.xfail(
    strict=True,
    reason="croniter 7 with aware datetimes runs 01:30 twice on a fall-back night; "
    "taskmesh.beat maps wall-clock times to instants itself (issue #7)",
)
def test_croniter_alone_runs_a_repeated_time_once() -> None:
    from croniter import croniter

    matches = croniter("30 1 * * *", datetime.datetime(2024, 11, 2, 12, tzinfo=NEW_YORK))
    first = matches.get_next(datetime.datetime)
    second = matches.get_next(datetime.datetime)
    assert second.timestamp() - first.timestamp() > 23 * 3600


EXPRESSIONS = [
    "* * * * *",
    "*/7 * * * *",
    "30 * * * *",
    "0 */3 * * *",
    "30 1 * * *",
    "30 2 * * *",
    "15 2,3 * * *",
    "0 0 * * sun",
    "45 23 31 * *",
    "0 12 13 * fri",
]
DST_YEAR = (at(UTC, 2024, 1, 1), at(UTC, 2025, 1, 1))


@settings(max_examples=120, deadline=None)
@given(
    expression=st.sampled_from(EXPRESSIONS),
    zone=st.sampled_from([NEW_YORK, BERLIN]),
    moment=st.one_of(
        st.floats(*DST_YEAR),
        # Dense around the four change nights, where the mapping is subtle.
        st.sampled_from(
            [
                at(UTC, 2024, 3, 10, 5),
                at(UTC, 2024, 11, 3, 4),
                at(UTC, 2024, 3, 31, 0),
                at(UTC, 2024, 10, 27, 0),
            ]
        ).flatmap(lambda base: st.floats(base, base + 4 * 3600)),
    ),
)
def test_next_run_is_a_matching_instant_and_none_is_skipped(
    expression: str, zone: ZoneInfo, moment: float
) -> None:
    schedule = crontab(expression)
    found = schedule.next_after(moment, zone)
    assert found > moment
    # Asking from any earlier instant in between gives the same answer.
    middle = (moment + found) / 2
    assert middle >= found or schedule.next_after(middle, zone) == found
    assert schedule.next_after(found - 0.5, zone) == found
    # No instant in between (checked minute by minute, up to six hours) fires.
    minute = math.floor(moment / 60) * 60 + 60
    while minute < min(found, moment + 6 * 3600):
        local = datetime.datetime.fromtimestamp(minute, zone)
        fires = croniter.match(expression, local.replace(tzinfo=None))
        assert not (fires and (local.fold == 0 or schedule.every_hour)), local
        minute += 60
    wall = datetime.datetime.fromtimestamp(found, zone)
    if croniter.match(expression, wall.replace(tzinfo=None)):
        return
    # Otherwise it stands in for a skipped time: the clocks jumped right then.
    before = datetime.datetime.fromtimestamp(found - 1, zone)
    assert before.utcoffset() != wall.utcoffset()
    assert not schedule.every_hour
