import pytest
from deidflow.dates import shift_by_units, shift_date, shift_date_and_time, shift_datetime, shift_time
from deidflow.pseudonym import DateShift

BACK_400_DAYS_PLUS_5H = DateShift(days=-400, seconds=5 * 3600)


def test_date_moves_by_whole_days():
    assert shift_date("20200301", DateShift(-1, 0)) == "20200229"
    assert shift_date("20200101\\20200102", DateShift(-1, 100)) == "20191231\\20200101"


def test_time_paired_with_its_date_carries_over_midnight():
    assert shift_date_and_time("20200101", "213000.123", BACK_400_DAYS_PLUS_5H) == ("20181128", "023000.123")
    assert shift_date_and_time("20200101", "0100", DateShift(0, -7200)) == ("20191231", "2300")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2130", "0230"), ("21", "02"), ("213015", "023015"), ("21:30:15.5", "023015.5")],
)
def test_time_alone_keeps_its_precision_and_wraps(value, expected):
    assert shift_time(value, BACK_400_DAYS_PLUS_5H) == expected


def test_datetime_keeps_precision_and_offset():
    assert shift_datetime("20200101213000.5+0100", BACK_400_DAYS_PLUS_5H) == "20181128023000.5+0100"
    assert shift_datetime("20200101", BACK_400_DAYS_PLUS_5H) == "20181127"
    assert shift_datetime("2020", DateShift(-366, 0)) == "2019"


def test_intervals_between_paired_instants_are_preserved():
    from datetime import datetime

    shift = DateShift(-1234, -31000)
    a = shift_date_and_time("20210315", "235959", shift)
    b = shift_date_and_time("20210316", "000105", shift)

    def instant(pair):
        return datetime.strptime(pair[0] + pair[1], "%Y%m%d%H%M%S")

    assert (instant(b) - instant(a)).total_seconds() == 66


@pytest.mark.parametrize("bad", ["2020-01-01x", "notadate", "20201340"])
def test_unreadable_values_return_none_so_the_caller_removes_them(bad):
    assert shift_date(bad, BACK_400_DAYS_PLUS_5H) is None
    assert shift_datetime(bad, BACK_400_DAYS_PLUS_5H) is None


def test_research_pacs_units():
    assert shift_by_units("20200110", "DA", -9) == "20200101"
    assert shift_by_units("120000", "TM", 90) == "120130"
    assert shift_by_units("20200101000030", "DT", -60) == "20191231235930"
