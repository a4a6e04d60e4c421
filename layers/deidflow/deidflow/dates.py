"""Shifting DA, DT and TM values by a `DateShift`, keeping each value's precision.

A date and the time that belongs to it (StudyDate + StudyTime, ...) are shifted together as one
instant, so a time pushed past midnight carries into the date. A time with no date can only wrap
around the clock; a date with no time moves by whole days. A value that cannot be parsed returns
None: the caller removes it rather than keep something it could not shift.

The shifts are pure functions of their arguments and cached: the instances of a series share most
of their dates and times (study, series, birth date), and parsing and formatting them is most of
what shifting costs. The cache lives in the process, like the data sets it serves.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache

from .pseudonym import DateShift

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_MIN_YEAR = 1


def _split_values(value: str) -> list[str]:
    return value.split("\\")


def _format_fraction(micro: int, digits: int) -> str:
    return "." + f"{micro:06d}"[:digits] if digits else ""


def _parse_time(text: str) -> tuple[int, int, int, int, int] | None:
    """(hour, minute, second, microsecond, precision) where precision counts the parts given."""
    match = _TM.match(text.strip())
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    parts = 1 + (mm is not None) + (ss is not None)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    hour, minute, second = int(hh), int(mm or 0), int(ss or 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, min(second, 59), micro, parts * 10 + (len(frac) - 1 if frac else 0)


def _format_time(moment: datetime, precision: int) -> str:
    parts, digits = divmod(precision, 10)
    text = f"{moment.hour:02d}"
    if parts >= 2:
        text += f"{moment.minute:02d}"
    if parts >= 3:
        text += f"{moment.second:02d}" + _format_fraction(moment.microsecond, digits)
    return text


def _shift_date_value(text: str, days: int) -> str | None:
    match = _DA.match(text.strip())
    if not match:
        return None
    try:
        year, month, day = (int(part) for part in match.groups())
        moved = datetime(year, month, day) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d") if moved.year >= _MIN_YEAR else None


@lru_cache(maxsize=4096)
def shift_date(value: str, shift: DateShift) -> str | None:
    """DA (possibly multi-valued): whole days only."""
    if not value:
        return value
    out = [_shift_date_value(v, shift.days) if v else v for v in _split_values(value)]
    return None if any(v is None for v in out) else "\\".join(out)  # type: ignore[arg-type]


@lru_cache(maxsize=4096)
def shift_time(value: str, shift: DateShift) -> str | None:
    """TM with no date to carry into: wraps around midnight (intervals kept modulo a day)."""
    if not value:
        return value
    out: list[str] = []
    for text in _split_values(value):
        if not text:
            out.append(text)
            continue
        parsed = _parse_time(text)
        if parsed is None:
            return None
        hour, minute, second, micro, precision = parsed
        moment = datetime(2000, 1, 1, hour, minute, second, micro)
        moment += timedelta(seconds=shift.seconds)
        out.append(_format_time(moment, precision))
    return "\\".join(out)


@lru_cache(maxsize=4096)
def shift_date_and_time(date_value: str, time_value: str, shift: DateShift) -> tuple[str, str] | None:
    """A date and its time as one instant; single-valued pairs only (else shift separately)."""
    date_match = _DA.match(date_value.strip()) if date_value else None
    parsed = _parse_time(time_value) if time_value else None
    if date_match is None or parsed is None:
        return None
    hour, minute, second, micro, precision = parsed
    try:
        year, month, day = (int(part) for part in date_match.groups())
        moment = datetime(year, month, day, hour, minute, second, micro)
        moment += timedelta(seconds=shift.total_seconds)
    except (ValueError, OverflowError):
        return None
    if moment.year < _MIN_YEAR:
        return None
    return moment.strftime("%Y%m%d"), _format_time(moment, precision)


@lru_cache(maxsize=4096)
def shift_datetime(value: str, shift: DateShift) -> str | None:
    """DT: a value with a time part moves by the full shift, a date-only value by whole days."""
    if not value:
        return value
    out: list[str] = []
    for text in _split_values(value):
        if not text:
            out.append(text)
            continue
        match = _DT.match(text.strip())
        if not match:
            return None
        year, month, day, hour, minute, second, frac, offset = match.groups()
        try:
            # A year- or month-precision value is anchored mid-period so the shift moves it fairly.
            moment = datetime(
                int(year),
                int(month or 7),
                int(day or 15),
                int(hour or 0),
                int(minute or 0),
                min(int(second or 0), 59),
                int((frac[1:] + "000000")[:6]) if frac else 0,
            )
            moment += timedelta(seconds=shift.total_seconds if hour else shift.days * 86400)
        except (ValueError, OverflowError):
            return None
        if moment.year < _MIN_YEAR:
            return None
        shifted = moment.strftime("%Y")
        for part, fmt in ((month, "%m"), (day, "%d"), (hour, "%H"), (minute, "%M"), (second, "%S")):
            if part is None:
                break
            shifted += moment.strftime(fmt)
        if frac and second is not None:
            shifted += _format_fraction(moment.microsecond, len(frac) - 1)
        out.append(shifted + (offset or ""))
    return "\\".join(out)


def shift_by_units(value: str, vr: str, amount: int) -> str | None:
    """research-pacs ShiftDateTime: DA moves by `amount` days, TM and DT by `amount` seconds."""
    if vr == "DA":
        return shift_date(value, DateShift(days=amount, seconds=0))
    if vr == "TM":
        return shift_time(value, DateShift(days=0, seconds=amount % 86400))
    return shift_datetime(value, DateShift(days=amount // 86400, seconds=amount % 86400))
