"""QIDO-RS (PS3.18 10.6): query parameters, attribute matching (PS3.4 C.2.2.2) and result records.

Results are built from the instances the caller can see, never from a summary: a study's
NumberOfStudyRelatedInstances, ModalitiesInStudy and its attributes come from its visible
instances, so a hidden series changes neither a count nor whether a study matches.

Matching: single value; `*`/`?` wildcards on text (PN case-insensitive, as most archives do);
UID lists (backslash- or comma-separated, or the key repeated); DA/TM/DT ranges `a-b`, `-b`, `a-`;
an empty value is universal matching (the attribute is returned). `fuzzymatching` is accepted and
ignored (answered with a Warning), relational and sequence matching are not supported (400).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from .header import InstanceRecord

LEVELS = ("study", "series", "instance")
MAX_LIMIT = 1000
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

STUDY_UID, SERIES_UID = 0x0020000D, 0x0020000E
MODALITIES_IN_STUDY, MODALITY = 0x00080061, 0x00080060
STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT, SERIES_INSTANCE_COUNT = 0x00201206, 0x00201208, 0x00201209
RETRIEVE_URL, INSTANCE_AVAILABILITY = 0x00081190, 0x00080056

# PS3.18 Tables 10.6.3-3/4/5: what every result of a level carries (when the header has it).
RETURN_ATTRIBUTES: dict[str, tuple[int, ...]] = {
    "study": (
        0x00080005, 0x00080020, 0x00080030, 0x00080050, 0x00080056, 0x00080061, 0x00080090, 0x00080201,
        0x00081190, 0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x0020000D, 0x00200010, 0x00201206,
        0x00201208,
    ),
    "series": (
        0x00080005, 0x00080060, 0x00080201, 0x0008103E, 0x00081190, 0x0020000E, 0x00200011, 0x00201209,
        0x00400244, 0x00400245, 0x00400275,
    ),
    "instance": (
        0x00080005, 0x00080016, 0x00080018, 0x00080056, 0x00080201, 0x00081190, 0x00200013, 0x00280010,
        0x00280011, 0x00280100, 0x00280008,
    ),
}  # fmt: skip
# The keys a level can be matched on (its return attributes, the parents' UIDs, and these).
_EXTRA_MATCH_KEYS: dict[str, tuple[int, ...]] = {
    "study": (0x00081030,),
    "series": (0x0020000D, 0x00080021, 0x00080031, 0x00180015),
    "instance": (0x0020000D, 0x0020000E),
}
# Parents' UIDs that results carry when the path does not fix them (/series, /instances).
_PARENT_UIDS = {"study": (), "series": (STUDY_UID,), "instance": (STUDY_UID, SERIES_UID)}
# includefield=all (PS3.18 10.6.3.3): the level's own optional keys (PS3.4 C.6.2.1), not whatever
# the first instance happens to carry. Study: the Patient, General Study and Patient Study modules
# (every group 0010 attribute too); series: General Series, General Equipment, Frame of Reference.
_OPTIONAL_KEYS: dict[str, tuple[int, ...]] = {
    "study": (
        0x00080020, 0x00080030, 0x00080050, 0x00080051, 0x00080090, 0x00080096, 0x00081030, 0x00081032,
        0x00081048, 0x00081049, 0x00081060, 0x00081062, 0x00081080, 0x00081110, 0x00200010, 0x00201070,
        0x00321032, 0x00321033, 0x00321060, 0x00324000, 0x00380010, 0x00380014, 0x00380060, 0x00400244,
        0x00400245,
    ),
    "series": (
        0x00080021, 0x00080031, 0x00080060, 0x00080068, 0x00080070, 0x00080080, 0x00081010, 0x00081040,
        0x00081050, 0x00081052, 0x00081070, 0x00081072, 0x00081090, 0x0008103E, 0x0008103F, 0x00081111,
        0x00081250, 0x00180015, 0x00181000, 0x00181020, 0x00181030, 0x00185100, 0x00200011, 0x00200052,
        0x00200060, 0x00201040, 0x00280108, 0x00280109, 0x00400244, 0x00400245, 0x00400253, 0x00400254,
        0x00400260, 0x00400275, 0x00400280,
    ),
}  # fmt: skip
_COMPUTED = {STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT, SERIES_INSTANCE_COUNT, MODALITIES_IN_STUDY}
_RANGE_VRS = {"DA", "TM", "DT"}
_NUMBER_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"}


class BadQuery(ValueError):
    """A 400: the reason is for the caller (it names parameters, never data)."""


@dataclass(frozen=True)
class Match:
    tag: int
    vr: str
    values: tuple[str, ...]  # several only for UID lists; () is universal matching

    def matches(self, element: Mapping[str, Any] | None) -> bool:
        if not self.values:
            return True
        if element is None:
            return False
        present = [_text(v) for v in element.get("Value") or ()]
        present = [p for p in present if p != ""]
        if not present:
            return False  # an empty attribute matches no constraint
        if self.vr == "UI":
            return any(p in self.values for p in present)
        (wanted,) = self.values
        if self.vr in _RANGE_VRS and "-" in wanted:
            low, high = wanted.split("-", 1)
            return any(_in_range(p, low, high, self.vr) for p in present)
        if self.vr in _NUMBER_VRS:
            try:
                return any(float(p) == float(wanted) for p in present)
            except ValueError:
                return False
        if self.vr == "PN":
            return any(fnmatch.fnmatchcase(p.lower(), wanted.lower()) for p in present)
        if "*" in wanted or "?" in wanted:
            return any(fnmatch.fnmatchcase(p, wanted) for p in present)
        return wanted in present


@dataclass(frozen=True)
class QidoQuery:
    level: str
    matches: tuple[Match, ...]
    include: frozenset[int] | None  # None: includefield=all
    limit: int | None
    offset: int
    warnings: tuple[str, ...] = ()
    normalized: str = ""
    fixed: frozenset[int] = frozenset()  # the UIDs the path sets (/studies/{study}/...)

    def match_tags(self) -> set[int]:
        return {m.tag for m in self.matches}

    def may_match(self, summary: Mapping[str, Any]) -> bool:
        """Whether a study could match, from its catalog summary (`study_summary`): the counts and
        ModalitiesInStudy, which depend on what the caller sees, are decided on the result."""
        return all(m.matches(summary.get(f"{m.tag:08X}")) for m in self.matches if m.tag not in _COMPUTED)

    def accepts(self, record: Mapping[str, Any]) -> bool:
        return all(m.matches(record.get(f"{m.tag:08X}")) for m in self.matches)

    def page(self, records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """The requested page and whether more results exist beyond it."""
        limit = MAX_LIMIT if self.limit is None else self.limit
        chosen = list(records[self.offset : self.offset + limit])
        return chosen, len(records) > self.offset + limit


def parse_query(params: Mapping[str, Sequence[str]], level: str, *, fixed: Iterable[int] = ()) -> QidoQuery:
    """QIDO parameters (each name with its values, in order) for a level; BadQuery says what is wrong.

    `fixed` are the UIDs the path already sets (/studies/{study}/series): not matchable again.
    """
    if level not in LEVELS:
        raise ValueError(level)
    allowed = set(RETURN_ATTRIBUTES[level]) | set(_EXTRA_MATCH_KEYS[level]) | set(_PARENT_UIDS[level])
    allowed -= set(fixed)
    matches: list[Match] = []
    include: set[int] | None = set()
    limit: int | None = None
    offset = 0
    warnings: list[str] = []
    normal: list[tuple[str, str]] = []
    for name, values in sorted(params.items()):
        values = [v for value in values for v in [value]]
        if name == "limit":
            limit = _count(name, values, upper=None)
            if limit > MAX_LIMIT:
                warnings.append(f"limit {limit} is above this server's maximum of {MAX_LIMIT}")
                limit = MAX_LIMIT
        elif name == "offset":
            offset = _count(name, values, upper=None)
        elif name == "fuzzymatching":
            if any(v.lower() not in ("true", "false") for v in values):
                raise BadQuery("fuzzymatching must be true or false")
            if any(v.lower() == "true" for v in values):
                warnings.append("fuzzymatching is not supported: exact and wildcard matching were applied")
        elif name == "includefield":
            for value in values:
                for part in filter(None, (p.strip() for p in value.split(","))):
                    if part == "all":
                        include = None
                    elif include is not None:
                        include.add(_tag_of(part, name))
        else:
            tag = _tag_of(name, "a query key")
            if tag not in allowed:
                raise BadQuery(f"{_name(tag)} cannot be matched in a {level} query here")
            vr = _vr(tag)
            if vr == "SQ":
                raise BadQuery(f"{_name(tag)}: sequence matching is not supported")
            if vr == "UI":
                uids = tuple(u.strip() for v in values for u in re.split(r"[\\,]", v) if u.strip())
                matches.append(Match(tag, vr, uids))
            else:
                if len(values) > 1:
                    raise BadQuery(f"{_name(tag)} is given {len(values)} times; only UIDs take a list")
                value = values[0]
                if vr in _RANGE_VRS and value.count("-") > 1:
                    raise BadQuery(f"{_name(tag)}: a range is 'from-to', '-to' or 'from-'")
                matches.append(Match(tag, vr, (value,) if value != "" else ()))
        normal.extend((name, v) for v in values)
    return QidoQuery(
        level=level,
        matches=tuple(matches),
        include=None if include is None else frozenset(include),
        limit=limit,
        offset=offset,
        warnings=tuple(warnings),
        normalized="&".join(f"{k}={v}" for k, v in normal),
        fixed=frozenset(fixed),
    )


@dataclass
class ResultBuilder:
    """Result records of a level from visible instances (in index order)."""

    query: QidoQuery
    retrieve_url: str  # the level's WADO-RS URL: this resource's own
    instances: Sequence[InstanceRecord]
    _source: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self._source = self.instances[0].json if self.instances else {}

    def record(self) -> dict[str, Any]:
        level = self.query.level
        wanted = set(RETURN_ATTRIBUTES[level]) | set(_PARENT_UIDS[level]) | self.query.match_tags()
        # PS3.18 10.6.3.3.2-3: /series carries the study's attributes, /studies/{s}/instances the
        # series', /instances both (each parent's own computed counts and URL stay with the parent).
        for parent in _parents_shown(level, self.query.fixed):
            wanted |= set(RETURN_ATTRIBUTES[parent]) - _COMPUTED - {RETRIEVE_URL, INSTANCE_AVAILABILITY}
        if self.query.include is None:
            wanted |= _optional_keys(level, self._source)
        else:
            # Attributes of a level below this one are never returned (PS3.18 10.6.3.3.1-2).
            wanted |= self.query.include - _below(level)
        out: dict[str, Any] = {}
        for tag in sorted(wanted):
            if tag in _COMPUTED or tag in (RETRIEVE_URL, INSTANCE_AVAILABILITY):
                continue
            element = self._source.get(f"{tag:08X}")
            if element is not None and not element.get("BulkDataURI"):
                out[f"{tag:08X}"] = element
            elif any(m.tag == tag for m in self.query.matches):
                out[f"{tag:08X}"] = {"vr": _vr(tag)}  # universal matching returns the attribute, empty
        if level == "study":
            series = {i.series_instance_uid for i in self.instances}
            modalities = sorted({str(i.value(MODALITY)) for i in self.instances if i.value(MODALITY)})
            out["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
            out["00201206"] = {"vr": "IS", "Value": [len(series)]}
            out["00201208"] = {"vr": "IS", "Value": [len(self.instances)]}
        elif level == "series":
            out["00201209"] = {"vr": "IS", "Value": [len(self.instances)]}
        out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        out["00081190"] = {"vr": "UR", "Value": [self.retrieve_url]}
        return dict(sorted(out.items()))


def _parents_shown(level: str, fixed: frozenset[int]) -> tuple[str, ...]:
    if level == "series":
        return () if STUDY_UID in fixed else ("study",)
    if level == "instance":
        return tuple(p for p, uid in (("study", STUDY_UID), ("series", SERIES_UID)) if uid not in fixed)
    return ()


def _level_keys(level: str) -> set[int]:
    return set(RETURN_ATTRIBUTES[level]) | set(_EXTRA_MATCH_KEYS[level]) | set(_OPTIONAL_KEYS.get(level, ()))


def _below(level: str) -> set[int]:
    """The known attributes of the levels under `level` (and not of it or its parents)."""
    order = LEVELS.index(level)
    own = set().union(*(_level_keys(lv) for lv in LEVELS[: order + 1]))
    return set().union(set(), *(_level_keys(lv) for lv in LEVELS[order + 1 :])) - own - {0x00080005}


def _optional_keys(level: str, source: Mapping[str, Any]) -> set[int]:
    """includefield=all: every attribute of this level the header has (at the instance level,
    every attribute that is not bulk data)."""
    present = {int(k, 16) for k in source if not source[k].get("BulkDataURI")}
    if level == "instance":
        return present
    keys = set(_OPTIONAL_KEYS[level])
    if level == "study":
        keys |= {t for t in present if t >> 16 == 0x0010}
    return keys & present


def study_summary(header: Mapping[str, Any]) -> dict[str, Any]:
    """The study-level attributes of one instance's DICOM JSON: the catalog's pre-filter for study
    searches (every result is still rebuilt from the caller's visible instances)."""
    keep = (set(RETURN_ATTRIBUTES["study"]) | set(_EXTRA_MATCH_KEYS["study"])) - _COMPUTED
    return {tag: header[tag] for tag in sorted(header) if int(tag, 16) in keep and "BulkDataURI" not in header[tag]}


def _count(name: str, values: Sequence[str], upper: int | None) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise BadQuery(f"{name} must be one non-negative integer")
    return int(values[0])


def _tag_of(text: str, what: str) -> int:
    if _TAG.match(text):
        return int(text, 16)
    if "." in text:
        raise BadQuery(f"{what} {text!r}: sequence paths are not supported")
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadQuery(f"{what} {text!r} is neither a DICOM keyword nor a tag (8 hex digits)")
    return int(tag)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("Alphabetic", ""))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _in_range(value: str, low: str, high: str, vr: str) -> bool:
    # Compared as digits of one width: a bound given to the hour ("08") covers the whole hour.
    width = {"DA": 8, "TM": 6, "DT": 14}[vr]

    def digits(text: str, fill: str) -> str:
        found = re.match(r"\d*", text.strip())
        return (found.group(0) if found else "")[:width].ljust(width, fill)

    stored = digits(value, "0")
    return (not low or stored >= digits(low, "0")) and (not high or stored <= digits(high, "9"))
