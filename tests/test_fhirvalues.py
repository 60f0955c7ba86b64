"""FHIR value handling: partial dates, time zones, month arithmetic, ages, references, unit spellings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from cds.fhirvalues import (
    age_in_years,
    as_utc,
    end_of_day,
    is_after,
    parse_fhir_datetime,
    reference_key,
    start_of_day,
    subtract_months,
    unit_key,
    whole_months_between,
)

AUCKLAND = ZoneInfo("Pacific/Auckland")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2024", datetime(2024, 1, 1, tzinfo=UTC), id="year-only-is-start-of-year"),
        pytest.param("2024-05", datetime(2024, 5, 1, tzinfo=UTC), id="year-month-is-start-of-month"),
        pytest.param("2024-05-03", datetime(2024, 5, 3, tzinfo=UTC), id="date-is-utc-midnight"),
        pytest.param(
            "2024-05-03T10:00:00+02:00", datetime(2024, 5, 3, 8, 0, tzinfo=UTC), id="offset-converted-to-utc"
        ),
        pytest.param("2024-05-03T10:00:00Z", datetime(2024, 5, 3, 10, 0, tzinfo=UTC), id="zulu"),
        pytest.param(
            "2024-05-03T23:30:00-05:00",
            datetime(2024, 5, 4, 4, 30, tzinfo=UTC),
            id="negative-offset-next-day",
        ),
        pytest.param(
            "2024-05-03T10:00:00.123456+00:00",
            datetime(2024, 5, 3, 10, 0, 0, 123456, tzinfo=UTC),
            id="fractional-seconds",
        ),
        pytest.param("2024-05-03T10:00:00", datetime(2024, 5, 3, 10, 0, tzinfo=UTC), id="naive-taken-as-utc"),
        pytest.param("  2024-05-03 ", datetime(2024, 5, 3, tzinfo=UTC), id="surrounding-space-trimmed"),
        pytest.param("2024-02-30", None, id="impossible-day"),
        pytest.param("2024-13", None, id="impossible-month"),
        pytest.param("yesterday", None, id="not-a-date"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
    ],
)
def test_parse_fhir_datetime_text(text: str | None, expected: datetime | None) -> None:
    parsed = parse_fhir_datetime(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(date(2024, 5, 3), datetime(2024, 5, 3, tzinfo=UTC), id="date-object"),
        pytest.param(
            datetime(2024, 5, 3, 10, 0), datetime(2024, 5, 3, 10, 0, tzinfo=UTC), id="naive-datetime"
        ),
        pytest.param(
            datetime(2024, 5, 3, 10, 0, tzinfo=AUCKLAND),
            datetime(2024, 5, 2, 22, 0, tzinfo=UTC),
            id="auckland-datetime-previous-utc-day",
        ),
        pytest.param(
            datetime(2024, 5, 3, 10, 0, tzinfo=timezone(timedelta(hours=-3))),
            datetime(2024, 5, 3, 13, 0, tzinfo=UTC),
            id="fixed-offset-datetime",
        ),
    ],
)
def test_parse_fhir_datetime_objects(value: object, expected: datetime) -> None:
    parsed = parse_fhir_datetime(value)
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(datetime(2024, 1, 1, 12), datetime(2024, 1, 1, 12, tzinfo=UTC), id="naive"),
        pytest.param(
            datetime(2024, 1, 1, 12, tzinfo=AUCKLAND), datetime(2023, 12, 31, 23, tzinfo=UTC), id="aware"
        ),
    ],
)
def test_as_utc(value: datetime, expected: datetime) -> None:
    converted = as_utc(value)
    assert converted == expected
    assert converted.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        pytest.param(
            datetime(2025, 3, 31, 9, tzinfo=UTC),
            1,
            datetime(2025, 2, 28, 9, tzinfo=UTC),
            id="mar-31-to-feb-28",
        ),
        pytest.param(
            datetime(2024, 3, 31, 9, tzinfo=UTC),
            1,
            datetime(2024, 2, 29, 9, tzinfo=UTC),
            id="mar-31-to-feb-29-leap",
        ),
        pytest.param(
            datetime(2025, 5, 31, tzinfo=UTC), 1, datetime(2025, 4, 30, tzinfo=UTC), id="may-31-to-apr-30"
        ),
        pytest.param(
            datetime(2025, 3, 30, tzinfo=UTC), 1, datetime(2025, 2, 28, tzinfo=UTC), id="mar-30-to-feb-28"
        ),
        pytest.param(
            datetime(2024, 2, 29, tzinfo=UTC),
            12,
            datetime(2023, 2, 28, tzinfo=UTC),
            id="leap-day-minus-a-year",
        ),
        pytest.param(
            datetime(2026, 1, 15, tzinfo=UTC), 1, datetime(2025, 12, 15, tzinfo=UTC), id="across-new-year"
        ),
        pytest.param(
            datetime(2026, 6, 1, tzinfo=UTC), 12, datetime(2025, 6, 1, tzinfo=UTC), id="twelve-months"
        ),
        pytest.param(
            datetime(2026, 6, 1, tzinfo=UTC), 30, datetime(2023, 12, 1, tzinfo=UTC), id="thirty-months"
        ),
        pytest.param(
            datetime(2026, 6, 27, tzinfo=UTC), 4, datetime(2026, 2, 27, tzinfo=UTC), id="day-27-kept"
        ),
        pytest.param(datetime(2026, 6, 1, tzinfo=UTC), 0, datetime(2026, 6, 1, tzinfo=UTC), id="zero-months"),
        pytest.param(
            datetime(2026, 6, 1, 21, 30, tzinfo=AUCKLAND),
            12,
            datetime(2025, 6, 1, 21, 30, tzinfo=AUCKLAND),
            id="keeps-local-clock-and-zone",
        ),
    ],
)
def test_subtract_months(moment: datetime, months: int, expected: datetime) -> None:
    result = subtract_months(moment, months)
    assert result == expected
    assert result.tzinfo is moment.tzinfo


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        pytest.param(date(2025, 6, 1), date(2026, 6, 1), 12, id="exactly-a-year"),
        pytest.param(date(2025, 6, 2), date(2026, 6, 1), 11, id="a-day-short-of-a-year"),
        pytest.param(date(2026, 1, 31), date(2026, 2, 28), 0, id="jan-31-to-feb-28-not-complete"),
        pytest.param(date(2026, 1, 31), date(2026, 3, 1), 1, id="jan-31-to-mar-1"),
        pytest.param(date(2026, 6, 1), date(2026, 6, 1), 0, id="same-day"),
        pytest.param(date(2026, 6, 1), date(2026, 5, 1), -1, id="negative-when-reversed"),
        pytest.param(date(2023, 12, 1), date(2026, 6, 1), 30, id="thirty-months"),
    ],
)
def test_whole_months_between(earlier: date, later: date, expected: int) -> None:
    start = datetime.combine(earlier, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(later, datetime.min.time(), tzinfo=UTC)
    assert whole_months_between(start, end) == expected


@pytest.mark.parametrize(
    ("birth", "on", "expected"),
    [
        pytest.param(date(1981, 6, 1), date(2026, 6, 1), 45, id="on-45th-birthday"),
        pytest.param(date(1981, 6, 2), date(2026, 6, 1), 44, id="day-before-45th-birthday"),
        pytest.param(date(1981, 5, 31), date(2026, 6, 1), 45, id="day-after-45th-birthday"),
        pytest.param(date(2000, 2, 29), date(2025, 2, 28), 24, id="leap-day-born-before-mar-1"),
        pytest.param(date(2000, 2, 29), date(2025, 3, 1), 25, id="leap-day-born-on-mar-1"),
        pytest.param(date(2000, 2, 29), date(2024, 2, 29), 24, id="leap-day-born-on-leap-day"),
        pytest.param(date(2026, 6, 1), date(2026, 6, 1), 0, id="born-today"),
    ],
)
def test_age_in_years(birth: date, on: date, expected: int) -> None:
    assert age_in_years(birth, on) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        pytest.param("Patient/123", "Patient/123", id="relative"),
        pytest.param("https://ehr.example.org/fhir/Patient/123", "Patient/123", id="absolute"),
        pytest.param(
            "https://ehr.example.org/fhir/Patient/123/_history/2", "Patient/123", id="absolute-history"
        ),
        pytest.param("Patient/123/_history/7", "Patient/123", id="relative-history"),
        pytest.param("Medication/med-1.a", "Medication/med-1.a", id="id-with-dash-and-dot"),
        pytest.param(
            "urn:uuid:9d5ed678-fe57-4cf2-a5a4-ccf5c6a6ad2e",
            "urn:uuid:9d5ed678-fe57-4cf2-a5a4-ccf5c6a6ad2e",
            id="urn-uuid-kept",
        ),
        pytest.param("urn:oid:1.2.3", "urn:oid:1.2.3", id="urn-oid-kept"),
        pytest.param("  Patient/123  ", "Patient/123", id="trimmed"),
        pytest.param("#med1", None, id="contained"),
        pytest.param("patient/123", None, id="lower-case-type"),
        pytest.param("Patient/" + "x" * 65, None, id="id-too-long"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
    ],
)
def test_reference_key(reference: str | None, expected: str | None) -> None:
    assert reference_key(reference) == expected


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        pytest.param("ng/mL", "ng/ml", id="lower-cased"),
        pytest.param(" µg/L ", "ug/l", id="micro-sign"),
        pytest.param("μIU/mL", "uiu/ml", id="greek-mu"),
        pytest.param("µIU/mL", "uiu/ml", id="micro-sign-iu"),
        pytest.param("u[IU]/mL", "u[iu]/ml", id="ucum-brackets"),
        pytest.param("mmol / L", "mmol/l", id="inner-spaces"),
        pytest.param("MEQ/L", "meq/l", id="upper-case"),
        pytest.param("mEq/L", "meq/l", id="mixed-case"),
        pytest.param("   ", None, id="blank"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
    ],
)
def test_unit_key(unit: str | None, expected: str | None) -> None:
    assert unit_key(unit) == expected


def test_micro_spellings_fold_to_one_key() -> None:
    spellings = ["µIU/mL", "μIU/mL", "uIU/mL", "UIU/ML", " u IU / mL "]
    assert {unit_key(s) for s in spellings} == {"uiu/ml"}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(
            datetime(2026, 6, 1, 21, 30, 5, 7, tzinfo=AUCKLAND),
            datetime(2026, 6, 1, tzinfo=AUCKLAND),
            id="local",
        ),
        pytest.param(
            datetime(2026, 6, 1, 0, 0, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC), id="already-start"
        ),
    ],
)
def test_start_of_day(moment: datetime, expected: datetime) -> None:
    assert start_of_day(moment) == expected


def test_end_of_day_is_last_microsecond_utc() -> None:
    end = end_of_day(date(2026, 6, 1))
    assert end == datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=UTC)
    assert end + timedelta(microseconds=1) == datetime(2026, 6, 2, tzinfo=UTC)


MORNING = datetime(2026, 6, 1, 8, 0, tzinfo=AUCKLAND)  # 2026-05-31 20:00 UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2026-06-01", False, id="date-today-local-not-future"),
        pytest.param("2026-06-02", True, id="date-tomorrow"),
        pytest.param("2026-05-31", False, id="date-yesterday"),
        pytest.param("2026-06", False, id="this-month"),
        pytest.param("2026-07", True, id="next-month"),
        pytest.param("2026", False, id="this-year"),
        pytest.param("2027", True, id="next-year"),
        pytest.param("2026-06-01T07:59:00+12:00", False, id="earlier-this-morning"),
        pytest.param("2026-06-01T08:01:00+12:00", True, id="a-minute-later"),
        pytest.param("2026-05-31T20:30:00Z", True, id="utc-half-hour-later"),
        pytest.param(date(2026, 6, 1), False, id="date-object-today"),
        pytest.param(datetime(2026, 6, 1, 9, 0, tzinfo=AUCKLAND), True, id="datetime-object-later"),
        pytest.param("not a date", False, id="unparseable"),
    ],
)
def test_is_after_compares_dates_in_the_evaluation_zone(value: object, expected: bool) -> None:
    assert is_after(value, MORNING) is expected
