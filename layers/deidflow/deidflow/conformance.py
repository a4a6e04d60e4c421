"""What a value may hold, by its VR (PS3.5 6.2) and the dictionary's VM, checked on its bytes.

A kept value is written out as the bytes it was read from, so before it is kept it must be a value
of its VR and nothing more: an element header inside a text value (tags, VRs, lengths are control
characters and NULs), a binary value whose length is no multiple of its word, a number with more
values than the dictionary allows. Each of those is what a wrong length, VR or tag turns a
neighbour's identifiers into, and none of them occurs in a value written by the rules.

The repertoires and lengths pydicom validates values with (`pydicom.valuerep`) are its own; the
checks here are the ones that tell a value from something that is not one.
"""

from __future__ import annotations

import re
from functools import cache

from pydicom.datadict import dictionary_VM
from pydicom.valuerep import BYTE_VR_REGEXES, MAX_VALUE_LEN, VR_REGEXES

# Bytes a value may never hold, by how much of the control range its VR allows (PS3.5 6.1.2-6.1.3):
# short texts may switch character sets (ESC), long texts may also break lines and tab.
_CONTROL_SHORT_TEXT = re.compile(rb"[\x00-\x1a\x1c-\x1f\x7f]")
_CONTROL_LONG_TEXT = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_NOT_ASCII_GRAPHIC = re.compile(rb"[^\x20-\x7e]")
SHORT_TEXT_VRS = frozenset({"SH", "LO", "PN", "UC"})
# The most characters a value (a PN component group) may hold (PS3.5 6.2), and so the most bytes:
# four per character in any DICOM character set, and room for ISO 2022 escape sequences.
_TEXT_CHARACTERS = {"SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
_TEXT_BYTE_LIMITS = {vr: 4 * characters + 32 for vr, characters in _TEXT_CHARACTERS.items()}
LONG_TEXT_VRS = frozenset({"ST", "LT", "UT"})
# Strings of the default repertoire with a format (a regex in pydicom.valuerep), checked per value.
FORMATTED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
WORD_SIZES = {
    "US": 2, "SS": 2, "OW": 2,
    "UL": 4, "SL": 4, "FL": 4, "AT": 4, "OF": 4, "OL": 4,
    "FD": 8, "SV": 8, "UV": 8, "OD": 8, "OV": 8,
}  # fmt: skip
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"})


def _whole_value_regex(vr: str) -> re.Pattern[bytes]:
    """pydicom's one-value regex, for any number of backslash-separated values at once."""
    one = VR_REGEXES[vr].removeprefix("^").removesuffix("$").encode()
    return re.compile(rb"(?:%s)(?:\\(?:%s))*" % (one, one))


# VRs whose pydicom regex is a single alternative (DA, DT and TM allow ranges: checked per value).
_WHOLE_VALUE = {vr: _whole_value_regex(vr) for vr in ("AE", "AS", "CS", "DS", "IS", "UI")}


def size_problem(vr: str, length: int) -> str | None:
    """Why `length` bytes cannot be values of `vr`, a VR of fixed-size words; None when they can."""
    size = WORD_SIZES.get(vr)
    if size is not None and length % size:
        return f"{length} bytes is not a whole number of {vr} values"
    return None


def value_problem(vr: str, data: bytes, tag: int | None = None) -> str | None:
    """Why `data` cannot be the value of an element of `vr` (and, for a dictionary `tag`, its VM),
    in a sentence naming no value; None when it can be."""
    size = WORD_SIZES.get(vr)
    if size is not None:
        if len(data) % size:
            return size_problem(vr, len(data))
        if tag is not None and vr in NUMBER_VRS and data:
            count = len(data) // size
            if not _vm_allows(tag, count):
                return f"{count} values where the dictionary allows {dictionary_VM(tag)}"
        return None
    if vr in SHORT_TEXT_VRS or vr in LONG_TEXT_VRS:
        text = data.rstrip(b"\0 ")
        pattern = _CONTROL_SHORT_TEXT if vr in SHORT_TEXT_VRS else _CONTROL_LONG_TEXT
        if pattern.search(text) is not None:
            return f"control characters in a {vr} value"
        limit = _TEXT_BYTE_LIMITS.get(vr)
        if limit is not None and len(text) > limit:
            parts = text.split(b"\\") if vr in SHORT_TEXT_VRS else [text]
            if vr == "PN":
                parts = [group for value in parts for group in value.split(b"=")]
            longest = max(len(part) for part in parts)
            if longest > limit:
                return f"a {vr} value of {longest} bytes (a {vr} holds at most {_TEXT_CHARACTERS[vr]} characters)"
        return None
    if vr in FORMATTED_VRS:
        text = data.rstrip(b"\0 ")
        limit = MAX_VALUE_LEN.get(vr)
        whole = _WHOLE_VALUE.get(vr)
        if whole is not None and whole.fullmatch(text) is not None and (limit is None or len(text) <= limit):
            return None  # the common case: one short valid value (or several), checked at once
        if _NOT_ASCII_GRAPHIC.search(text.replace(b"\\", b"")) is not None:
            return f"characters outside the {vr} repertoire"
        regex = BYTE_VR_REGEXES[vr]
        for value in text.split(b"\\") if vr != "UR" else [text]:
            value = value.strip(b" ") if vr != "UI" else value.rstrip(b"\0")
            if not value:
                continue
            if limit is not None and len(value) > limit:
                return f"a {vr} value of {len(value)} characters (at most {limit})"
            if regex.match(value) is None:
                return f"a value that is not a valid {vr}"
        return None
    return None  # OB, UN, SQ: no repertoire to check


@cache
def _vm_range(tag: int) -> tuple[int, int | None, int]:
    """(minimum, maximum or None for n, step) from the dictionary's VM: "1", "1-3", "2-2n", "1-n"."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return 1, None, 1
    match = re.fullmatch(r"(\d+)(?:-(\d*)(n?))?", vm.strip())
    if match is None:
        return 1, None, 1
    low = int(match.group(1))
    if match.group(2) is None and not match.group(3):
        return low, low, 1
    if match.group(3):
        return low, None, int(match.group(2) or 1)
    return low, int(match.group(2)), 1


def _vm_allows(tag: int, count: int) -> bool:
    low, high, step = _vm_range(tag)
    if count < low or (high is not None and count > high):
        return False
    return high is not None or count % step == 0
