"""Apply a RuleSet to one dataset: the PS3.15 profile underneath, the rules' transformations on top.

One pass over every element at every depth. An element's action comes from, in order: the rules'
transformations (last matching entry wins), the private-element policy, Table E.1-1 under the
selected options, and for elements the table does not list, deidflow's own defaults (every UID is
remapped unless it is a well-known class/syntax/coding UID; every date shifts with the patient's
dates; unknown public tags are removed). Elements left as they are stay as raw bytes, unconverted,
which keeps untouched values (PixelData above all) byte for byte and the pass fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID_dictionary

from . import __version__
from .attribute_types import standard_types
from .conformance import value_problem
from .dates import shift_by_units, shift_date, shift_date_and_time, shift_datetime, shift_time
from .framing import UNDEFINED_LENGTH, DatasetFrame, same_tags
from .profile import OPTION_COLUMNS, ProfileTable, method_codes, resolve_action, standard_table
from .pseudonym import DateShift, Pseudonymizer
from .rawvalues import PLAIN_TEXT_VRS, plain_text, text_value
from .rejection import Rejected
from .rules import ElementRule, InstancePlan, RuleSet
from .scrub import collect_identifiers, scrub_text
from .tagpattern import PathStep, tag_text

IMPLEMENTATION_CLASS_UID = "2.25.255813004236516426009434744587853045523"
IMPLEMENTATION_VERSION_NAME = "DEIDFLOW_" + __version__.replace(".", "_")
_IMPLEMENTATION_CLASS_UID = UID(IMPLEMENTATION_CLASS_UID)
ORIGINAL_UID_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")  # reuse contexts
KEPT_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010)
DUMMY_TEXT = "REMOVED"
DUMMY_BY_VR = {
    "AE": "DEIDFLOW",
    "AS": "000Y",
    "CS": "REMOVED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "PN": "REMOVED",
    "UR": "",
    "LO": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "UC": DUMMY_TEXT,
}
NUMERIC_VRS = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}
TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}
# UI elements that name a class, syntax or coding scheme, not an instance: never remapped.
CLASS_UID_MARKERS = (
    "SOPClass",
    "ClassUID",
    "TransferSyntax",
    "CodingSchemeUID",
    "ContextUID",
    "MappingResourceUID",
    "SOPClassesInStudy",
    "SOPClassesSupported",
)
# Identifiers that become keyed pseudonyms rather than empty values.
IDENTIFIER_SUFFIXES = ("ID", "IDs", "Number", "Numbers", "Identifier")
DATE_VRS = {"DA", "DT", "TM"}
FREE_TEXT_VRS = {"ST", "LT", "UT", "UC"}
# Code sequences outside E.1-1 whose codes name a person or an organisation: replaced by dummies,
# as E.1-1 does for Institution Code Sequence and Person Identification Code Sequence.
IDENTITY_CODE_SEQUENCES = {
    0x00404009: "HumanPerformerCodeSequence",
    0x0072000E: "HangingProtocolUserIdentificationCodeSequence",
    0x0040A028: "DocumentingOrganizationIdentifierCodeSequenceTrial",
    0x0040A068: "DocumentAuthorIdentifierCodeSequenceTrial",
    0x0040A076: "DocumentingObserverIdentifierCodeSequenceTrial",
}
# What the pass sets on every output (PS3.15 E.1.1): any value the input had is replaced.
MARKER_TAGS = frozenset({0x00120062, 0x00120063, 0x00120064, 0x00280303})
# Binary values outside E.1-1 whose content no one can vouch for (a document, encrypted or signed
# content, identifiers of unknown form): removed.
OPAQUE_BINARY = {
    0x00686300: "HPGLDocument",
    0x04000520: "EncryptedContent",
    0x04000120: "Signature",
    0x0008041B: "RecordKey",
    0x0008041C: "PriorRecordKey",
    0x0040A074: "ObjectBinaryIdentifierTrial",
    0x0040A089: "ObjectDirectoryBinaryIdentifierTrial",
}
# Sequences outside E.1-1 that name the organisations issuing an order's numbers.
ISSUER_SEQUENCES = {0x00400026: "OrderPlacerIdentifierSequence", 0x00400027: "OrderFillerIdentifierSequence"}


# Value representations whose bytes are ASCII whatever the character set: edited as bytes, without
# pydicom's value conversion (the costliest part of the pass).
ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class _Value:
    """One element's value as a list of strings.

    Explicit-VR raw elements are never decoded unless their value is needed, and are written back as
    raw bytes whenever the new value is ASCII (pseudonyms, UIDs, dates, dummies always are); ASCII-only
    VRs are even read straight from the bytes. Everything else goes through pydicom.
    """

    __slots__ = ("_texts", "ds", "raw", "tag", "vr")

    def __init__(self, ds: Dataset, tag: int, vr: str, raw: object):
        self.ds, self.tag, self.vr = ds, tag, vr
        usable = type(raw) is RawDataElement and vr == raw.VR and vr not in BINARY_VRS
        self.raw: RawDataElement | None = raw if usable else None  # type: ignore[assignment]
        self._texts: list[str] | None = None

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = self._read_texts()
        return self._texts

    def _read_texts(self) -> list[str]:
        if self.raw is not None:
            data = self.raw.value or b""
            if self.vr in ASCII_VRS:
                return [t.strip("\0 ") for t in data.decode("latin-1").split("\\")] if data.strip(b"\0 ") else []
            plain = plain_text(data) if self.vr in PLAIN_TEXT_VRS else None
            if plain is not None:
                return [plain] if plain else []
        value = self.ds[self.tag].value
        if value is None or value == "" or value == b"":
            return []
        if isinstance(value, bytes):
            return ["<binary>"]
        if isinstance(value, (list, MultiValue)):
            return [str(v) for v in value]
        return [str(value)]

    @property
    def is_empty(self) -> bool:
        if self.raw is not None and self._texts is None:
            return not (self.raw.value or b"").strip(b"\0 ")
        return not any(self.texts)

    def set(self, texts: list[str]) -> None:
        if self.raw is not None and all(t.isascii() for t in texts):
            data = "\\".join(texts).encode("ascii")
            if len(data) % 2:
                data += b"\0" if self.vr == "UI" else b" "
            self._put_raw(self.raw._replace(length=len(data), value=data))
        else:
            self.ds[self.tag].value = texts if len(texts) > 1 else texts[0]

    def _put_raw(self, raw: RawDataElement) -> None:
        """`ds[tag] = raw`. For a public element that is all Dataset.__setitem__ does (the tag is
        already a key, the element is neither Pixel Data nor a sequence), so it is done directly;
        a private one goes through pydicom, which ties it to its creator."""
        if (self.tag >> 16) % 2:
            self.ds[self.tag] = raw
        else:
            self.ds._dict[self.tag] = raw

    def set_dummy(self, dummy: str | int) -> None:
        if isinstance(dummy, str):
            self.set([dummy])
        else:
            self.ds[self.tag].value = dummy

    def clear(self) -> None:
        if self.raw is not None:
            self._put_raw(self.raw._replace(length=0, value=b""))
        else:
            self.ds[self.tag].value = b"" if self.vr in BINARY_VRS else None


@dataclass(frozen=True)
class Decision:
    """What happened to one element and why; `explain` prints these (never values)."""

    path: str
    keyword: str
    vr: str
    action: str
    decided_by: str


@dataclass
class DeidResult:
    dataset: Dataset
    plan: InstancePlan
    study_uid: str
    series_uid: str
    sop_uid: str
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class _Context:
    plan: InstancePlan
    patient_identity: str
    patient_pseudonym: str
    shift: DateShift
    original_uids: dict[str, str]
    identifiers: list[str]
    record: bool
    needs_paths: bool
    iod: str | None = None  # the instance's IOD, for attribute Types (None: not in the module tables)
    untyped: str | None = None  # the Type of an attribute the tables never list: "3", or None without an IOD
    # Where the walk is: the keyword of the sequence holding the current data set ("" at the top),
    # and the current element's Type there.
    parent: str = ""
    attribute_type: str | None = None
    decisions: list[Decision] = field(default_factory=list)


_KEYWORDS: dict[int, str] = {}


def _keyword(tag: int) -> str:
    tag = int(tag)  # a pydicom tag would compare in Python on every hit
    keyword = _KEYWORDS.get(tag)
    if keyword is None:
        keyword = _KEYWORDS[tag] = keyword_for_tag(tag) or ""
    return keyword


def _vr_of(raw: object, tag: int) -> str:
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return str(vr)
    # Implicit VR or UN: pydicom decodes the value with the dictionary VR, so decide with it too.
    allowed = _dictionary_vrs(tag)
    return allowed[0] if allowed else "UN"


_DICTIONARY_VRS: dict[int, tuple[str, ...]] = {}


def _dictionary_vrs(tag: int) -> tuple[str, ...]:
    """The VRs the dictionary allows for a public tag ("US or SS" -> both), () when it has none."""
    allowed = _DICTIONARY_VRS.get(tag)
    if allowed is None:
        try:
            vr = dictionary_VR(tag) if (tag >> 16) % 2 == 0 else ""
        except KeyError:
            vr = ""
        allowed = _DICTIONARY_VRS[tag] = tuple(v for v in vr.split(" or ") if v and v != "NONE")
    return allowed


def _element_vr(raw: object, tag: int) -> tuple[str, bool]:
    """(the VR to decide and write with, whether the file labelled the element otherwise).

    A public element is what the dictionary says it is: labelled with another VR (by a faulty
    writer, or by damage), it is decided as its dictionary VR, and kept only if its bytes are a
    value of that VR (see `_relabel`).
    """
    label = getattr(raw, "VR", None)
    known = _ELEMENT_VRS.get((tag, label))
    if known is None:
        if not label or label == "UN" or " or " in label:  # no VR in the file (implicit VR, or UN)
            known = (_vr_of(raw, tag), False)
        else:
            allowed = _dictionary_vrs(tag)
            known = (str(label), False) if not allowed or label in allowed else (allowed[0], True)
        _ELEMENT_VRS[(tag, label)] = known
    return known


_ELEMENT_VRS: dict[tuple[int, str | None], tuple[str, bool]] = {}


def _relabel(ds: Dataset, tag: int, raw: object, vr: str) -> RawDataElement:
    """`raw` as an element of its dictionary VR, or Rejected when its bytes are no such value."""
    if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
        problem: str | None = "it is not a value"
    else:
        problem = "it holds items" if vr == "SQ" else value_problem(vr, raw.value, tag)
    if problem or not isinstance(raw, RawDataElement):
        raise Rejected(
            "vr_mismatch",
            f"element {tag_text(tag)} is labelled {getattr(raw, 'VR', '?')}, the dictionary says {vr}, and {problem}",
        )
    relabelled = raw._replace(VR=vr)
    ds._dict[BaseTag(tag)] = relabelled
    return relabelled


def _check_kept(tag: int, vr: str, raw: object) -> None:
    """A value kept as it was read must be a value of its VR, and no more (see conformance); and it
    must have been labelled as what it is: a value written under another VR and a tag it does not
    belong to (a name under Manufacturer Model Name, a sequence under a binary identifier) is
    exactly what a retagged or relabelled element looks like."""
    label = getattr(raw, "VR", None)
    explicit = label not in (None, "UN", vr) and " or " not in label  # pydicom's "OB or OW": implicit VR
    if explicit and (tag >> 16) % 2 == 0 and label not in _dictionary_vrs(tag):
        raise Rejected(
            "vr_mismatch", f"element {tag_text(tag)} is labelled {label} where the dictionary says {vr}, and is kept"
        )
    data = getattr(raw, "value", None)
    if type(raw) is not RawDataElement or type(data) is not bytes or not data:
        return  # decoded already (by pydicom, from bytes the framing walk checked) or empty
    problem = value_problem(vr, data, None if (tag >> 16) % 2 else tag)
    if problem:
        raise Rejected("invalid_value", f"element {tag_text(tag)} cannot be kept: {problem}")


def _dummy_action(tag: int, vr: str) -> str:
    """Inside a sequence replaced by dummies: private elements go, UIDs are remapped (references
    stay consistent), nested sequences are replaced in turn, everything else becomes a dummy."""
    if (tag >> 16) % 2:
        return "X"
    if vr == "UI":
        return "U"
    return "D"


def _is_class_uid(keyword: str) -> bool:
    return any(marker in keyword for marker in CLASS_UID_MARKERS)


def _is_identifier(keyword: str, vr: str) -> bool:
    return vr in ("LO", "SH", "CS", "UT", "ST", "LT") and keyword.endswith(IDENTIFIER_SUFFIXES)


def patient_identity(ds: Dataset) -> str:
    """The original that patient pseudonym and date shift derive from: issuer + ID, else name +
    birth date, else the study. Patients with different identities never share a pseudonym."""
    patient_id = text_value(ds, "PatientID", "LO").strip()
    if patient_id:
        return f"id:{text_value(ds, 'IssuerOfPatientID', 'LO').strip()}|{patient_id}"
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}|{str(ds.get('PatientBirthDate', '') or '').strip()}"
    return f"study:{str(ds.get('StudyInstanceUID', '') or '').strip()}"


class Deidentifier:
    """Holds what is costly to build once (the table, the key) and de-identifies datasets."""

    def __init__(self, rules: RuleSet, pseudonymizer: Pseudonymizer, table: ProfileTable | None = None):
        self.rules = rules
        self.pseudo = pseudonymizer
        self.table = table or standard_table()
        self.options = rules.options
        self.types = standard_types()
        self.typed_tags = self.types.tags()
        self._table_cache: dict[tuple[int, str | None], tuple[str, str]] = {}
        self._static: dict[tuple[int, str, str | None], tuple[str, str]] = {}
        # The markers depend on the options only: worked out once.
        o = self.options
        selected = [name.replace("_", " ") for name in o.selected()]
        if o.retain_longitudinal_full_dates:
            modified = "UNMODIFIED"
        elif o.retain_longitudinal_modified_dates:
            modified = "MODIFIED"
        else:
            modified = "REMOVED"
        self._markers = (
            (0x00120062, "CS", "YES"),  # Patient Identity Removed
            (0x00120063, "LO", [f"deidflow {__version__}", self.table.edition_id, *selected][:16]),  # Method
            (0x00280303, "CS", modified),  # Longitudinal Temporal Information Modified
        )
        self._method_codes = {cleaned: method_codes(o, pixels_cleaned=cleaned) for cleaned in (False, True)}

    # --- decisions -----------------------------------------------------------------------------

    def _table_action(self, tag: int, attribute_type: str | None = None) -> tuple[str, str] | None:
        cached = self._table_cache.get((tag, attribute_type))
        if cached is None:
            row = self.table.row_for(tag)
            if row is None:
                return None
            action, by = resolve_action(row, self.options, attribute_type)
            cell = row.basic if by == "basic" else row.options[OPTION_COLUMNS[by][0]]
            chosen = f"; Type {attribute_type} here: {action}" if attribute_type and action != cell else ""
            cached = (action, f"{row.label} [{'Basic Profile' if by == 'basic' else by}: {cell}{chosen}]")
            self._table_cache[(tag, attribute_type)] = cached
        return cached

    def decide(
        self,
        tag: int,
        vr: str,
        path: tuple[PathStep, ...] | None,
        plan: InstancePlan,
        attribute_type: str | None = None,
    ) -> tuple[str, str, ElementRule | None]:
        """(action, decided_by, rule) for one element. Actions: K X Z D U C, or a rule kind.

        `path` is only needed (and only built) when rules or safe-private patterns must match it;
        `attribute_type` is the element's Type in the instance's IOD, where known.
        """
        if plan.element_rules and path is not None:
            for rule in plan.element_rules:
                if rule.matches(path):
                    return rule.kind, f"rule {rule.origin}", rule
        if (tag >> 16) % 2 == 1:
            return self._private_action(tag, path)
        key = (tag, vr, attribute_type)
        cached = self._static.get(key)
        if cached is None:
            cached = self._static[key] = self._profile_decision(tag, vr, attribute_type)
        return cached[0], cached[1], None

    def _profile_decision(self, tag: int, vr: str, attribute_type: str | None = None) -> tuple[str, str]:
        """What the profile and deidflow's defaults say about a public element: the same for every
        instance under one RuleSet, so it is computed once per (tag, VR, Type)."""
        if tag & 0xFFFF == 0:
            return "X", "group length: recomputed on write or obsolete"
        if _is_overlay_group(tag):
            overlay = self._overlay_action(tag, vr)
            if overlay is not None:
                return overlay
        table = self._table_action(tag, attribute_type)
        if table is not None:
            return table
        keyword = _keyword(tag)
        if not keyword:
            return "X", "unknown public element (not in the DICOM dictionary): removed"
        if tag in IDENTITY_CODE_SEQUENCES:
            return "D", "not in E.1-1: its codes name a person or organisation, replaced by dummies (deidflow default)"
        if tag in MARKER_TAGS:
            return "X", "set anew after the pass: what de-identification this instance had says nothing of this one"
        if tag in OPAQUE_BINARY:
            return "X", "not in E.1-1: an opaque binary value (a document, encrypted or signed content): removed"
        if tag in ISSUER_SEQUENCES:
            return "X", "not in E.1-1: names the organisations issuing an order's numbers (deidflow default)"
        if vr == "PN":
            return "D", "not in E.1-1: a person's name, replaced by a dummy (deidflow default)"
        if vr == "UI":
            return "U", "not in E.1-1: every UID is remapped unless it names a class or syntax"
        if vr in DATE_VRS and self.options.retain_longitudinal_modified_dates:
            return "C", "not in E.1-1: dates move with the patient's other dates"
        if vr in FREE_TEXT_VRS:
            # E.g. SR Text Value (0040,A160): free text is never kept as it is.
            clean = self.options.clean_structured_content if keyword == "TextValue" else self.options.clean_descriptors
            if clean:
                return "C", "not in E.1-1: free text, cleaned (clean option selected)"
            return "D", "not in E.1-1: free text is replaced by a dummy (deidflow default)"
        return "K", "not in E.1-1: kept"

    def _overlay_action(self, tag: int, vr: str) -> tuple[str, str] | None:
        """An overlay is one repeating group: removing its data (60xx,3000) removes the whole group,
        description and label included; kept under Clean Graphics, its text is cleaned."""
        data_action = self._table_action((tag & 0xFF000000) | 0x00003000)
        if data_action is None:
            return None
        action, by = data_action
        if action == "X":
            return "X", f"overlay group removed with its Overlay Data: {by}"
        if vr in TEXT_VRS and (tag & 0xFFFF) != 0x3000:
            return "C", f"overlay text cleaned with its Overlay Data: {by}"
        return None

    def _private_action(self, tag: int, path: tuple[PathStep, ...] | None) -> tuple[str, str, None]:
        row = self.table.private
        label = row.label if row else "private element"
        if self.options.retain_safe_private and (tag & 0xFFFF) >= 0x0100:
            if path is not None and any(p.matches(path) for p in self.rules.safe_private):
                return "K", f"{label} [retain_safe_private: listed in profile.safe_private]", None
            return "X", f"{label} [retain_safe_private: not listed as safe]", None
        if self.options.retain_safe_private and 0x0010 <= (tag & 0xFFFF) <= 0x00FF:
            return "K", f"{label} [private creator: kept while its block keeps elements]", None
        return "X", f"{label} [Basic Profile: X]", None

    # --- the pass ------------------------------------------------------------------------------

    def deidentify(
        self,
        ds: Dataset,
        *,
        explain: bool = False,
        plan: InstancePlan | None = None,
        pixels_cleaned: bool = False,
        frame: DatasetFrame | None = None,
        originals: Mapping[BaseTag, object] | None = None,
    ) -> DeidResult:
        """De-identify `ds` in place.

        `frame` (the framing walk's top level) lets every sequence item be checked against the
        bytes it was read from; `originals` are the top-level elements as read, before the rules,
        the pixel policy or the identity decoded any of them (values kept are checked as read).
        """
        plan = plan or self.rules.plan_for(ds)
        identity = patient_identity(ds)
        iod = self.types.iod_for(text_value(ds, "SOPClassUID", "UI").strip())
        ctx = _Context(
            plan=plan,
            patient_identity=identity,
            patient_pseudonym=self.pseudo.patient_id(identity),
            shift=self.pseudo.date_shift(identity),
            original_uids={
                k: text_value(ds, k, "UI") for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
            },
            identifiers=collect_identifiers(ds) if self._needs_scrub() else [],
            record=explain,
            needs_paths=bool(plan.element_rules) or self.options.retain_safe_private or explain,
            iod=iod,
            untyped=None if iod is None else "3",
        )
        original_meta = getattr(ds, "file_meta", None)
        walked = originals if originals is not None else dict(ds._dict)
        self._walk(ds, (), ctx, "", frame, originals=walked)
        self._private_creators_cleanup(ds)
        self._add_tags(ds, ctx)
        self._set_markers(ds, pixels_cleaned)
        # pydicom reads a data set declared explicit but written implicit (it happens) as implicit VR,
        # and says otherwise in original_encoding: the elements as read tell.
        implicit_read = any(getattr(raw, "VR", "") is None for raw in walked.values())
        self._rebuild_meta(ds, original_meta, ctx, implicit_read=implicit_read)
        return DeidResult(
            dataset=ds,
            plan=plan,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            decisions=ctx.decisions,
        )

    def _needs_scrub(self) -> bool:
        o = self.options
        return o.clean_descriptors or o.clean_structured_content or o.clean_graphics

    def _walk(
        self,
        ds: Dataset,
        parents: tuple[PathStep, ...],
        ctx: _Context,
        where: str,
        frame: DatasetFrame | None,
        *,
        originals: Mapping[BaseTag, object] | None = None,
        dummy: bool = False,
        parent: str = "",
    ) -> None:
        """Decide and apply every element of one data set.

        `frame` is this data set as the framing walk found it (an item's tags are checked against
        it; the top level's were, by intake); `originals` are the top level's elements as read,
        before anything decoded them; `dummy` means the data set is an item of a sequence being
        replaced by dummies.
        """
        handled: set[int] = set()
        tags = list(ds.keys())
        if frame is not None and originals is None:
            same_tags(tags, frame, "a sequence item")
        creators: dict[int, str | None] = {}
        if ctx.needs_paths:
            # Read private creators first: a creator may be removed before the elements of its block.
            creators = {t: _private_creator(ds, t) for t in tags if (t >> 16) % 2 == 1}
        elements = ds._dict  # the walk only visits tags the data set has: no Tag() conversion needed
        for tag in tags:
            if tag in handled:
                continue
            raw = elements.get(tag)
            if raw is None:
                continue  # gone with an element handled before it
            if type(raw) is RawDataElement and raw.value is None:
                raw = ds.get_item(tag)  # a deferred value: read it
            # The caches below are keyed by plain ints: pydicom's tags compare in Python (Tag.__eq__),
            # so a lookup with one costs a Python call on every hit.
            key = int(tag)
            original = originals.get(tag, raw) if originals is not None else raw
            vr, relabelled = _ELEMENT_VRS.get((key, getattr(original, "VR", None))) or _element_vr(original, key)
            path = (*parents, PathStep(key, _keyword(key), vr, creators.get(tag))) if ctx.needs_paths else None
            ctx.parent = parent
            ctx.attribute_type = (
                self.types.type_of(ctx.iod, parent, _keyword(key)) if key in self.typed_tags else ctx.untyped
            )
            if dummy:
                action, by, rule = _dummy_action(key, vr), "inside a sequence replaced by dummies", None
            else:
                action, by, rule = self.decide(key, vr, path, ctx.plan, ctx.attribute_type)
            if relabelled and action not in ("X", "remove"):
                raw = _relabel(ds, key, original, vr)
            label = f"{where}{tag_text(key)}" if ctx.record else ""
            items = frame.items.get(key, ()) if frame is not None else None  # None: no framing to check
            done = self._apply(ds, tag, raw, original, vr, action, rule, path, ctx, label, handled, items, dummy)
            if ctx.record:
                keyword = _keyword(key) or ("private:" + (creators.get(tag) or "?"))
                ctx.decisions.append(Decision(label, keyword, vr, done, by))

    def _apply(
        self,
        ds: Dataset,
        tag: int,
        raw: object,
        original: object,
        vr: str,
        action: str,
        rule: ElementRule | None,
        path: tuple[PathStep, ...] | None,
        ctx: _Context,
        label: str,
        handled: set[int],
        items: tuple[DatasetFrame, ...] | None,
        in_dummy: bool = False,
    ) -> str:
        if action in ("X", "remove"):
            del ds[tag]
            return "removed"
        if vr == "SQ":
            if action in ("Z", "empty"):
                # A new empty element, not `ds[tag].value = ...`, which would parse the items first.
                undefined = getattr(raw, "length", None) == UNDEFINED_LENGTH
                ds[tag] = DataElement(
                    tag, "SQ", Sequence(), is_undefined_length=undefined or getattr(raw, "is_undefined_length", False)
                )
                return "emptied"
            sequence = ds[tag].value
            if items is not None and len(items) != len(sequence):
                raise Rejected("malformed", f"sequence {tag_text(tag)} reads differently from its framing")
            # A code sequence to replace holds codes that name someone (E.1-1's Person Identification
            # and Institution Code Sequences): its items become dummy codes. Other sequences to
            # replace (Content Sequence) keep their structure and have every item cleaned.
            dummy = in_dummy or (action == "D" and _keyword(tag).endswith(("CodeSequence", "CodeSequenceTrial")))
            for i, item in enumerate(sequence):
                item_frame = items[i] if items is not None else None
                where = f"{label}[{i}]." if ctx.record else ""
                self._walk(item, path or (), ctx, where, item_frame, dummy=dummy, parent=_keyword(tag))
            return "items replaced by dummies" if dummy else "kept, items cleaned"
        if action in ("K", "keep") or (action == "C" and vr not in DATE_VRS and vr not in TEXT_VRS):
            _check_kept(tag, vr, original)
            if action in ("K", "keep"):
                return "kept"
        value = _Value(ds, tag, vr, raw)
        if value.is_empty:
            return "kept (empty)"
        if action == "empty":
            value.clear()
            return "emptied"
        if action == "randomize_uid" or (action in ("U", "C", "D", "Z") and vr == "UI"):
            return self._remap_uids(value)
        if rule is not None and action == "randomize_text":
            value.set([self._randomize_text(text, rule, ctx) for text in value.texts])
            return "randomized (keyed)"
        if rule is not None and action == "shift_datetime":
            return self._rule_shift(value, rule, ctx)
        if action == "C":
            if vr in DATE_VRS:
                return self._shift_dates(value, ctx, handled, path)
            if vr in TEXT_VRS and vr != "PN":
                _check_kept(tag, vr, original)  # cleaning keeps most of the text as it was
                value.set([scrub_text(text, ctx.identifiers) for text in value.texts])
                return "cleaned (known identifiers scrubbed)"
            if vr == "PN":
                return self._replace(value, ctx, "D")
            return "kept (clean: nothing to clean for this VR)"
        if action in ("Z", "D"):
            if vr in DATE_VRS and self.options.retain_longitudinal_modified_dates and action == "D":
                return self._shift_dates(value, ctx, handled, path)
            return self._replace(value, ctx, action)
        raise ValueError(f"no handler for action {action!r} on {tag_text(tag)}")

    def _replace(self, value: _Value, ctx: _Context, action: str) -> str:
        keyword, vr = _keyword(value.tag), value.vr
        if keyword in ("PatientName", "PatientID") and vr in ("PN", "LO"):
            value.set([ctx.patient_pseudonym])
            return "pseudonym (patient)"
        if _is_identifier(keyword, vr):
            value.set([self.pseudo.identifier(keyword, text.strip()) if text.strip() else text for text in value.texts])
            return "pseudonym (keyed)"
        if action == "Z" or (vr not in NUMERIC_VRS and vr not in DUMMY_BY_VR):
            value.clear()
            return "emptied"
        value.set_dummy(0 if vr in NUMERIC_VRS else DUMMY_BY_VR[vr])
        return "dummy value"

    def _remap_uids(self, value: _Value) -> str:
        if _is_class_uid(_keyword(value.tag)):
            _check_kept(value.tag, value.vr, value.raw)
            return "kept (class or syntax UID)"
        new = []
        for text in value.texts:
            text = text.strip("\0 ")
            new.append(text if not text or text in UID_dictionary else self.pseudo.uid(text))
        value.set(new)
        return "UID remapped"

    def _shift_dates(self, value: _Value, ctx: _Context, handled: set[int], path: tuple[PathStep, ...] | None) -> str:
        ds, tag, vr = value.ds, value.tag, value.vr
        if not self.options.retain_longitudinal_modified_dates:
            # Clean with no date option selected: nothing safe to keep.
            return self._without_value(value, ctx.attribute_type, "no date option")
        shift = ctx.shift
        text = "\\".join(value.texts)
        new: str | None
        if vr == "DA":
            time_tag = _TIME_FOR_DATE.get(tag)
            if time_tag is not None and time_tag in ds and len(value.texts) == 1:
                time_raw = ds.get_item(time_tag)
                time_vr = _vr_of(time_raw, time_tag)
                # The time is paired only if it would be shifted on its own too (a rule may keep it).
                time_path = (*path[:-1], PathStep(time_tag, _keyword(time_tag), time_vr)) if path else None
                time_type = self.types.type_of(ctx.iod, ctx.parent, _keyword(time_tag))
                time_action = "K"
                if time_vr == "TM":
                    time_action = self.decide(time_tag, time_vr, time_path, ctx.plan, time_type)[0]
                time_value = _Value(ds, time_tag, time_vr, time_raw) if time_action in ("C", "D") else None
                if time_value is not None and len(time_value.texts) == 1:
                    pair = shift_date_and_time(text, time_value.texts[0], shift)
                    if pair is not None:
                        value.set([pair[0]])
                        time_value.set([pair[1]])
                        handled.add(time_tag)
                        if ctx.record:
                            ctx.decisions.append(
                                Decision(
                                    tag_text(time_tag),
                                    _keyword(time_tag),
                                    "TM",
                                    "shifted with its date",
                                    f"paired with {_keyword(tag)}",
                                )
                            )
                        return "shifted with its time"
            new = shift_date(text, shift)
        elif vr == "TM":
            new = shift_time(text, shift)
        else:
            new = shift_datetime(text, shift)
        if new is None:
            return self._without_value(value, ctx.attribute_type or "2", "value could not be read as a date")
        value.set(new.split("\\"))
        return "shifted (patient offset)"

    @staticmethod
    def _without_value(value: _Value, attribute_type: str | None, why: str) -> str:
        """A value that cannot be kept: a dummy where the IOD requires one (Type 1), empty where
        it requires the element (Type 2; when the Type is not known, empty says nothing and
        breaks no Type 2), removed where it is optional."""
        if attribute_type in ("1", "1C") and value.vr in DUMMY_BY_VR:
            value.set_dummy(DUMMY_BY_VR[value.vr])
            return f"dummy value ({why})"
        if attribute_type in (None, "2", "2C"):
            value.clear()
            return f"emptied ({why})"
        del value.ds[value.tag]
        return f"removed ({why})"

    def _rule_shift(self, value: _Value, rule: ElementRule, ctx: _Context) -> str:
        if value.vr not in DATE_VRS:
            return "kept (shift_datetime applies to DA, DT and TM only)"
        context = self._reuse_context(rule.reuse_mapping, ctx) + "|" + rule.origin
        amount = self.pseudo.bounded_shift("shift", context, rule.shift_by)
        new = shift_by_units("\\".join(value.texts), value.vr, amount)
        if new is None:
            return self._without_value(value, ctx.attribute_type or "2", "value could not be read as a date")
        value.set(new.split("\\"))
        return "shifted (rule)"

    def _reuse_context(self, mapping: str | None, ctx: _Context) -> str:
        if mapping == "Always":
            return "always"
        if mapping == "SamePatient":
            return "patient:" + ctx.patient_identity
        if mapping == "SameStudy":
            return "study:" + ctx.original_uids["StudyInstanceUID"]
        if mapping == "SameSeries":
            return "series:" + ctx.original_uids["SeriesInstanceUID"]
        return "instance:" + ctx.original_uids["SOPInstanceUID"]

    def _randomize_text(self, text: str, rule: ElementRule, ctx: _Context) -> str:
        context = self._reuse_context(rule.reuse_mapping, ctx)
        text = text.lower() if rule.ignore_case else text
        if rule.split:
            return rule.split.join(self.pseudo.text(part, context) if part else part for part in text.split(rule.split))
        return self.pseudo.text(text, context)

    # --- after the pass ------------------------------------------------------------------------

    def _private_creators_cleanup(self, ds: Dataset) -> None:
        """Drop private creator elements whose block no longer holds any element."""
        if not self.options.retain_safe_private:
            return
        for item in _all_datasets(ds):
            for tag in [t for t in item.keys() if (t >> 16) % 2 == 1 and 0x10 <= (t & 0xFFFF) <= 0xFF]:
                group, block = tag >> 16, tag & 0xFF
                if not any((t >> 16) == group and (t & 0xFFFF) >> 8 == block for t in item.keys()):
                    del item[tag]

    def _add_tags(self, ds: Dataset, ctx: _Context) -> None:
        for add in ctx.plan.add_tags:
            if add.tag in ds and not add.overwrite_if_exists:
                continue
            ds.add(DataElement(add.tag, add.vr, add.value))
            if ctx.record:
                ctx.decisions.append(
                    Decision(tag_text(add.tag), _keyword(add.tag), add.vr, "added", f"rule {add.origin}")
                )

    def _set_markers(self, ds: Dataset, pixels_cleaned: bool) -> None:
        """What `ds.PatientIdentityRemoved = "YES"` and friends do, without the keyword and
        dictionary look-ups: a new element with the dictionary VR, or, for one the data set already
        has, the new value on its own element (which keeps its VR)."""
        identity_removed, method, temporal = self._markers
        _set_element(ds, *identity_removed)
        _set_element(ds, *method)
        codes = Sequence()
        for value, meaning in self._method_codes[pixels_cleaned]:
            item = Dataset()
            _set_element(item, 0x00080100, "SH", value)  # Code Value
            _set_element(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
            _set_element(item, 0x00080104, "LO", meaning)  # Code Meaning
            codes.append(item)
        _set_element(ds, 0x00120064, "SQ", codes)  # De-identification Method Code Sequence
        _set_element(ds, *temporal)

    def _rebuild_meta(
        self, ds: Dataset, original: FileMetaDataset | None, ctx: _Context, *, implicit_read: bool
    ) -> None:
        """Keep only what identifies the format; the rest (source AE titles, private info) goes."""
        meta = FileMetaDataset()
        if original is not None:
            for tag in KEPT_META:
                element = original._dict.get(tag)
                if element is not None:
                    meta._dict[BaseTag(tag)] = element  # as read: no need to decode
            if ctx.record:
                for tag in original.keys():
                    if tag not in KEPT_META and tag != 0x00020000:
                        ctx.decisions.append(
                            Decision(
                                f"meta{tag_text(tag)}",
                                _keyword(tag),
                                _vr_of(original.get_item(tag), tag),
                                "replaced" if tag in (0x00020012, 0x00020013) else "removed",
                                "file meta: only format elements are kept",
                            )
                        )
        _set_element(meta, 0x00020001, "OB", b"\x00\x01")  # File Meta Information Version
        _set_element(meta, 0x00020002, "UI", UID(text_value(ds, "SOPClassUID", "UI")))  # Media Storage SOP Class
        _set_element(meta, 0x00020003, "UI", UID(text_value(ds, "SOPInstanceUID", "UI")))  # ... SOP Instance
        if 0x00020010 not in meta._dict:
            syntax = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
            _set_element(meta, 0x00020010, "UI", syntax)  # Transfer Syntax UID
        if not meta.TransferSyntaxUID.is_implicit_VR and implicit_read:
            # Read as implicit VR but declared explicit (it happens): decode every element so each
            # gets its dictionary VR and the file can be written as the syntax it declares.
            for _ in ds.iterall():
                pass
        _set_element(meta, 0x00020012, "UI", _IMPLEMENTATION_CLASS_UID)  # Implementation Class UID
        _set_element(meta, 0x00020013, "SH", IMPLEMENTATION_VERSION_NAME)  # Implementation Version Name
        ds.file_meta = meta


def _set_element(ds: Dataset, tag: int, vr: str, value: object) -> None:
    """Dataset.__setattr__ for a keyword whose tag and dictionary VR are given: a new element, or
    for one the data set has already with the same VR, a new element in its place (what setting
    the value of a decoded element amounts to). A sequence, or one with another VR, keeps its
    element (VR, undefined length) and takes the value."""
    existing = ds._dict.get(tag)
    if existing is not None and (vr == "SQ" or vr != existing.VR):
        element = ds[tag]
        element.value = value
        ds[tag] = element
    elif vr == "SQ":
        ds[tag] = DataElement(tag, vr, value)  # Dataset.__setitem__ also hands Pixel Representation down
    else:
        element = DataElement(tag, vr, value)
        ds._dict[BaseTag(tag)] = element  # a public, non-pixel element: all Dataset.__setitem__ does


def _is_overlay_group(tag: int) -> bool:
    group = tag >> 16
    return 0x6000 <= group <= 0x601E and group % 2 == 0


def _private_creator(ds: Dataset, tag: int) -> str | None:
    element = tag & 0xFFFF
    if element < 0x0100:
        return None
    creator_tag = (tag & 0xFFFF0000) | (element >> 8)
    if creator_tag not in ds:
        return None
    try:
        return str(ds[creator_tag].value).strip()
    except Exception:  # noqa: BLE001 - a damaged creator only means the block is anonymous
        return None


def _all_datasets(ds: Dataset):  # type: ignore[no-untyped-def]
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _all_datasets(item)


def _build_time_for_date() -> dict[int, int]:
    from pydicom.datadict import DicomDictionary, tag_for_keyword

    pairs: dict[int, int] = {}
    for tag, entry in DicomDictionary.items():
        vr, keyword = entry[0], entry[4]
        if vr == "DA" and keyword.endswith("Date"):
            time_tag = tag_for_keyword(keyword[:-4] + "Time")
            if time_tag is not None and DicomDictionary[time_tag][0] == "TM":
                pairs[tag] = time_tag
    return pairs


_TIME_FOR_DATE = _build_time_for_date()
