"""FHIR value handling in one place: partial dates, instants, references and unit spellings.

Worked examples:

    >>> parse_fhir_datetime("2024").isoformat()
    '2024-01-01T00:00:00+00:00'
    >>> parse_fhir_datetime("2024-05-03T10:00:00+02:00").isoformat()
    '2024-05-03T08:00:00+00:00'
    >>> reference_key("https://ehr.example.org/fhir/Patient/123/_history/2")
    'Patient/123'
    >>> unit_key(" µg/L ")
    'ug/l'
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC (CAUTION: FHIR requires a zone).

    CAUTION: FHIR allows instants a few hours outside what Python can hold in UTC (the first hours of
    year 1 east of UTC, the last of year 9999 west of it); they are clamped to the nearest end, which
    keeps their order against every date the rules compare with:

        >>> as_utc(datetime.fromisoformat("9999-12-31T23:59:59-01:00")) == LATEST
        True
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year == 1 else LATEST


def parse_fhir_datetime(value: object) -> datetime | None:
    """A FHIR date, dateTime or instant (string, date or datetime) as an aware UTC datetime.

    CAUTION: a partial date ("2024", "2024-05") is read as the start of its period.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    text = str(value).strip()
    match = _PARTIAL_DATE.match(text)
    if match:
        year, month, day = match.groups()
        try:
            return datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
        except ValueError:
            return None
    try:
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def is_after(value: object, now: datetime) -> bool:
    """Is a FHIR date/dateTime later than `now`? A value without a time (a date, "2024-05") is compared
    by calendar date in `now`'s own zone, so a result dated today is never "in the future".

        >>> from zoneinfo import ZoneInfo
        >>> morning = datetime(2026, 6, 1, 8, tzinfo=ZoneInfo("Pacific/Auckland"))
        >>> is_after("2026-06-01", morning), is_after("2026-06-01T10:00:00+12:00", morning)
        (False, True)
    """
    if isinstance(value, datetime):
        return as_utc(value) > now
    text = value.isoformat() if isinstance(value, date) else str(value).strip()
    if _PARTIAL_DATE.match(text):
        start = parse_fhir_datetime(text)
        return start is not None and start.date() > now.date()
    parsed = parse_fhir_datetime(text)
    return parsed is not None and parsed > now


def subtract_months(moment: datetime, months: int) -> datetime:
    """The same clock time `months` calendar months earlier, clamped to the month's last day (and to
    the first instant Python holds, for a window reaching back before year 1)."""
    total = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(total, 12)
    month += 1
    if year < 1:  # a window that starts before year 1 holds every date there is
        return EARLIEST
    for day in range(moment.day, 27, -1):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return moment.replace(year=year, month=month, day=min(moment.day, 28))


def start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def end_of_day(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=UTC)


def whole_months_between(earlier: datetime, later: datetime) -> int:
    """Completed calendar months from `earlier` to `later` (negative when `earlier` is later)."""
    months = (later.year - earlier.year) * 12 + (later.month - earlier.month)
    if later.day < earlier.day:
        months -= 1
    return months


def months_back(earlier: datetime, now: datetime) -> int:
    """The smallest window in months, counted as evidence windows are (from the start of the day
    `months` calendar months before `now`), that holds `earlier`: a result or onset counts as within
    N months exactly when months_back(...) <= N, the same for observations, conditions and answers.

        >>> now = datetime(2026, 6, 1, 23, 59, tzinfo=UTC)
        >>> months_back(datetime(2025, 8, 1, tzinfo=UTC), now), months_back(datetime(2025, 7, 31, tzinfo=UTC), now)
        (10, 11)
    """
    months = max(whole_months_between(earlier, now), 0)
    while months > 0 and earlier >= start_of_day(subtract_months(now, months - 1)):
        months -= 1
    while earlier < start_of_day(subtract_months(now, months)):
        months += 1
    return months


def age_in_years(birth: date, on: date) -> int:
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years


def reference_key(reference: str | None) -> str | None:
    """`Type/id` for a relative or absolute literal reference; `urn:` references are returned as they are."""
    if not reference:
        return None
    text = reference.strip()
    if text.startswith("urn:"):
        return text
    match = _REFERENCE.search(text)
    if match is None:
        return None
    return f"{match.group(1)}/{match.group(2)}"


def unit_key(unit: str | None) -> str | None:
    """A unit spelling folded for lookup: trimmed, lower case, micro sign as `u`, no spaces."""
    if unit is None:
        return None
    folded = unit.strip().replace("µ", "u").replace("μ", "u").replace(" ", "").lower()
    return folded or None
