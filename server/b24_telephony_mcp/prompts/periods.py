"""Named periods a person says ("last 7 days") as the dates a tool takes: `from` inclusive, `to` exclusive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

Span = tuple[date, date]
"""First day, and the day after the last."""


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())  # ISO weeks start on Monday, as the analytics' week groups do


def _month_start(day: date) -> date:
    return day.replace(day=1)


PERIODS: dict[str, Callable[[date], Span]] = {
    "today": lambda today: (today, today + timedelta(days=1)),
    "yesterday": lambda today: (today - timedelta(days=1), today),
    "this week": lambda today: (_week_start(today), today + timedelta(days=1)),
    "last week": lambda today: (_week_start(today) - timedelta(days=7), _week_start(today)),
    "last 7 days": lambda today: (today - timedelta(days=6), today + timedelta(days=1)),
    "this month": lambda today: (_month_start(today), today + timedelta(days=1)),
    "last month": lambda today: (_month_start(_month_start(today) - timedelta(days=1)), _month_start(today)),
    "last 30 days": lambda today: (today - timedelta(days=29), today + timedelta(days=1)),
}
"""The names argument completion offers, each up to and including today."""


def span_of(period: str, today: date | None = None) -> Span | None:
    """The dates of a named period (any case, spaces trimmed); None for anything else, which a prompt passes on
    to the model as the person wrote it."""
    name = " ".join(period.lower().split())
    make = PERIODS.get(name)
    return make(today or date.today()) if make else None
