"""Beat: emits periodic tasks into the broker, once per run, across processes.

Modules: ``schedules`` (interval and crontab math), ``state`` (last runs, run
claims and the leader lock, kept in a result store), ``scheduler`` (the loop
that decides what is due and sends it through ``app.send_task``).
"""

from __future__ import annotations

from taskmesh.beat.schedules import Crontab, Interval, Schedule, crontab, to_schedule

__all__ = ["Crontab", "Interval", "Schedule", "crontab", "to_schedule"]
