"""The pass: every element at every depth decided (decide.py) and its action applied, one handler
per action; then the after-pass (finish.py).

Elements left as they are stay as raw bytes, unconverted, which keeps untouched values (Pixel Data
above all) byte for byte and the pass fast. A value kept as read must be a value of what its tag
is (conformance.py); an element labelled otherwise than the dictionary says is decided as what the
dictionary says, and kept only if its bytes are such a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from ..attribute_types import standard_types
from ..conformance import size_problem, value_problem
from ..dates import shift_by_units, shift_date, shift_date_and_time, shift_datetime, shift_time
from ..dicomraw.edit import ElementValue, relabel
from ..dicomraw.read import deferred_bytes, elements_as_read, held, read_deferred, text_value
from ..framing import DatasetFrame, same_tags
from ..profile import ProfileTable, standard_table
from ..pseudonym import DateShift, Pseudonymizer
from ..rejection import Rejected
from ..rules import ElementRule, InstancePlan, RuleSet
from ..rules.tagpattern import PathStep
from ..scrub import collect_identifiers, scrub_text
from ..tags import (
    BINARY_VRS,
    DATE_VRS,
    NUMERIC_VRS,
    TEXT_VRS,
    TIME_FOR_DATE,
    UNDEFINED_LENGTH,
    dictionary_vrs,
    keyword,
    tag_text,
)
from .decide import (
    _ELEMENT_VRS,
    Action,
    Decider,
    dummy_action,
    element_vr,
    is_class_uid,
    is_code_sequence,
    is_identifier,
    vr_of,
)
from .finish import Markers, add_tags, drop_empty_private_blocks, rebuild_meta
from .result import Decision, DeidResult, SourceIdentifiers

# Binary VRs whose kept value is judged by its length alone (a whole number of words): such a value
# may stay unread in the file. Not UN, whose value is whatever its tag's VR is (a name, as like as not).
UNREAD_VRS = BINARY_VRS - {"UN"}
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
# The actions as module names: reading a member off an Enum class costs five times a global's
# look-up, and the walk compares a few per element.
KEEP, REMOVE, EMPTY, ZERO, DUMMY = Action.KEEP, Action.REMOVE, Action.EMPTY, Action.ZERO, Action.DUMMY
CLEAN, REMAP_UID, RANDOMIZE_UID = Action.CLEAN, Action.REMAP_UID, Action.RANDOMIZE_UID
# On a UID, every action that changes the value gives a keyed UID (references stay consistent).
_REMAPPED_ON_UIDS = frozenset({REMAP_UID, CLEAN, DUMMY, ZERO})


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


class _Element:
    """The element the walk is at, in one data set: one per data set, its fields set anew for each
    element (an object per element would cost more than some of the actions)."""

    __slots__ = ("ds", "handled", "in_dummy", "items", "label", "original", "path", "raw", "rule", "tag", "vr")

    def __init__(self, ds: Dataset, handled: set[int], in_dummy: bool):
        self.ds, self.handled, self.in_dummy = ds, handled, in_dummy
        self.tag: int = 0
        self.raw: object = None
        self.original: object = None  # as read, before anything decoded it
        self.vr = ""
        self.rule: ElementRule | None = None
        self.path: tuple[PathStep, ...] | None = None
        self.label = ""
        self.items: tuple[DatasetFrame, ...] | None = None  # None: no framing to check the items against


def relabelled(ds: Dataset, tag: int, raw: object, vr: str) -> RawDataElement:
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
    return relabel(ds, tag, raw, vr)


def check_kept(tag: int, vr: str, raw: object) -> None:
    """A value kept as it was read must be a value of its VR, and no more (see conformance); and it
    must have been labelled as what it is: a value written under another VR and a tag it does not
    belong to (a name under Manufacturer Model Name, a sequence under a binary identifier) is
    exactly what a retagged or relabelled element looks like."""
    label = getattr(raw, "VR", None)
    explicit = label not in (None, "UN", vr) and " or " not in label  # pydicom's "OB or OW": implicit VR
    if explicit and (tag >> 16) % 2 == 0 and label not in dictionary_vrs(tag):
        raise Rejected(
            "vr_mismatch", f"element {tag_text(tag)} is labelled {label} where the dictionary says {vr}, and is kept"
        )
    data = getattr(raw, "value", None)
    if type(raw) is RawDataElement and data is None and raw.length:
        # A binary value left in the file (see Deidentifier._walk): all its VR asks is a whole
        # number of words, which its length tells.
        problem = size_problem(vr, raw.length) if raw.length != UNDEFINED_LENGTH else None
    elif type(raw) is not RawDataElement or type(data) is not bytes or not data:
        return  # decoded already (by pydicom, from bytes the framing walk checked) or empty
    else:
        problem = value_problem(vr, data, None if (tag >> 16) % 2 else tag)
    if problem:
        raise Rejected("invalid_value", f"element {tag_text(tag)} cannot be kept: {problem}")


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
        self.decider = Decider(rules, self.table)
        self.types = standard_types()
        self.typed_tags = self.types.tags()
        self.markers = Markers(self.options, self.table)
        # What to do with a value once it is known to be there (KEEP, REMOVE, EMPTY and UIDs are
        # settled before): one handler per action.
        self._value_handlers: dict[Action, Callable[[ElementValue, _Element, _Context], str]] = {
            Action.RANDOMIZE_TEXT: self._randomize_texts,
            Action.SHIFT_DATETIME: self._rule_shift,
            Action.CLEAN: self._clean,
            Action.ZERO: self._zero,
            Action.DUMMY: self._dummy,
        }

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
        o = self.options
        ctx = _Context(
            plan=plan,
            patient_identity=identity,
            patient_pseudonym=self.pseudo.patient_id(identity),
            shift=self.pseudo.date_shift(identity),
            original_uids={
                k: text_value(ds, k, "UI") for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
            },
            identifiers=(
                collect_identifiers(ds) if o.clean_descriptors or o.clean_structured_content or o.clean_graphics else []
            ),
            record=explain,
            needs_paths=bool(plan.element_rules) or o.retain_safe_private or explain,
            iod=iod,
            untyped=None if iod is None else "3",
        )
        originals_of_source = SourceIdentifiers(
            patient_id=text_value(ds, "PatientID", "LO"),
            issuer_of_patient_id=text_value(ds, "IssuerOfPatientID", "LO"),
            accession_number=text_value(ds, "AccessionNumber", "SH"),
            study_instance_uid=ctx.original_uids["StudyInstanceUID"],
            series_instance_uid=ctx.original_uids["SeriesInstanceUID"],
            sop_instance_uid=ctx.original_uids["SOPInstanceUID"],
        )
        original_meta = getattr(ds, "file_meta", None)
        walked = originals if originals is not None else elements_as_read(ds)
        self._walk(ds, (), ctx, "", frame, originals=walked)
        decisions = ctx.decisions if ctx.record else None
        if o.retain_safe_private:
            drop_empty_private_blocks(ds)
        add_tags(ds, plan, decisions)
        self.markers.set_on(ds, pixels_cleaned, decisions)
        # pydicom reads a data set declared explicit but written implicit (it happens) as implicit VR,
        # and says otherwise in original_encoding: the elements as read tell.
        implicit_read = any(getattr(raw, "VR", "") is None for raw in walked.values())
        rebuild_meta(ds, original_meta, decisions, implicit_read=implicit_read)
        return DeidResult(
            dataset=ds,
            plan=plan,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            originals=originals_of_source,
            decisions=ctx.decisions,
        )

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
        elements = held(ds)  # the walk only visits tags the data set has: no Tag() conversion needed
        element = _Element(ds, handled, dummy)
        for tag in tags:
            if tag in handled:
                continue
            raw = elements.get(tag)
            if raw is None:
                continue  # gone with an element handled before it
            # A value pydicom left in the file (read with defer_size: a length, no value) stays there
            # while it is binary and kept as it is: the writer copies it from the source. Anything
            # else reads it, raw. (An empty value pydicom holds as None is decoded, as before.)
            deferred = False
            if type(raw) is RawDataElement and raw.value is None:
                if not raw.length:
                    raw = ds.get_item(tag)
                elif raw.VR in UNREAD_VRS:
                    deferred = True
                else:
                    raw = read_deferred(ds, tag)
            # The caches below are keyed by plain ints: pydicom's tags compare in Python (Tag.__eq__),
            # so a lookup with one costs a Python call on every hit.
            key = int(tag)
            original = originals.get(tag, raw) if originals is not None else raw
            vr, relabel_it = _ELEMENT_VRS.get((key, getattr(original, "VR", None))) or element_vr(original, key)
            if not deferred and type(original) is RawDataElement and original.value is None and original.length:
                # Left in the file when read, and read since: by the lines above (raw), or decoded by
                # the rules or the pixel policy, whose decoding is no check: its bytes as read are
                # (a binary value's length says all there is to check: those stay in the file).
                if type(raw) is RawDataElement:
                    original = raw
                elif relabel_it or vr not in UNREAD_VRS or original.VR not in UNREAD_VRS:
                    original = deferred_bytes(ds, original)
            path = (*parents, PathStep(key, keyword(key), vr, creators.get(tag))) if ctx.needs_paths else None
            ctx.parent = parent
            ctx.attribute_type = (
                self.types.type_of(ctx.iod, parent, keyword(key)) if key in self.typed_tags else ctx.untyped
            )
            if dummy:
                action, by, rule = dummy_action(key, vr), "inside a sequence replaced by dummies", None
            else:
                action, by, rule = self.decider.decide(key, vr, path, ctx.plan, ctx.attribute_type)
            if deferred and (relabel_it or vr not in UNREAD_VRS or action not in (KEEP, REMOVE)):
                raw = original = read_deferred(ds, tag)
            if relabel_it and action is not REMOVE:
                raw = relabelled(ds, key, original, vr)
            label = f"{where}{tag_text(key)}" if ctx.record else ""
            items = frame.items.get(key, ()) if frame is not None else None
            element.tag, element.raw, element.original, element.vr = tag, raw, original, vr
            element.rule, element.path, element.label, element.items = rule, path, label, items
            done = self._apply(element, action, ctx)
            if ctx.record:
                name = keyword(key) or ("private:" + (creators.get(tag) or "?"))
                ctx.decisions.append(Decision(label, name, vr, done, by))

    def _apply(self, el: _Element, action: Action, ctx: _Context) -> str:
        if action is REMOVE:
            del el.ds[el.tag]
            return "removed"
        if el.vr == "SQ":
            return self._sequence(el, action, ctx)
        if action is KEEP or (action is CLEAN and el.vr not in DATE_VRS and el.vr not in TEXT_VRS):
            check_kept(el.tag, el.vr, el.original)
            if action is KEEP:
                return "kept"
        value = ElementValue(el.ds, el.tag, el.vr, el.raw)
        if value.is_empty:
            return "kept (empty)"
        if action is EMPTY:
            value.clear()
            return "emptied"
        if action is RANDOMIZE_UID or (el.vr == "UI" and action in _REMAPPED_ON_UIDS):
            return self._remap_uids(value)
        handler = self._value_handlers.get(action)
        if handler is None:
            raise ValueError(f"no handler for action {action.value!r} on {tag_text(el.tag)}")
        return handler(value, el, ctx)

    # --- one handler per action ------------------------------------------------------------------

    def _sequence(self, el: _Element, action: Action, ctx: _Context) -> str:
        if action in (ZERO, EMPTY):
            # A new empty element, not `ds[tag].value = ...`, which would parse the items first.
            undefined = getattr(el.raw, "length", None) == UNDEFINED_LENGTH
            el.ds[el.tag] = DataElement(
                el.tag, "SQ", Sequence(), is_undefined_length=undefined or getattr(el.raw, "is_undefined_length", False)
            )
            return "emptied"
        sequence = el.ds[el.tag].value
        if el.items is not None and len(el.items) != len(sequence):
            raise Rejected("malformed", f"sequence {tag_text(el.tag)} reads differently from its framing")
        # A code sequence to replace holds codes that name someone (E.1-1's Person Identification
        # and Institution Code Sequences): its items become dummy codes. Other sequences to
        # replace (Content Sequence) keep their structure and have every item cleaned.
        dummy = el.in_dummy or (action is DUMMY and is_code_sequence(el.tag))
        for i, item in enumerate(sequence):
            item_frame = el.items[i] if el.items is not None else None
            where = f"{el.label}[{i}]." if ctx.record else ""
            self._walk(item, el.path or (), ctx, where, item_frame, dummy=dummy, parent=keyword(el.tag))
        return "items replaced by dummies" if dummy else "kept, items cleaned"

    def _randomize_texts(self, value: ElementValue, el: _Element, ctx: _Context) -> str:
        assert el.rule is not None  # only rules randomize
        value.set([self._randomize_text(text, el.rule, ctx) for text in value.texts])
        return "randomized (keyed)"

    def _clean(self, value: ElementValue, el: _Element, ctx: _Context) -> str:
        if el.vr in DATE_VRS:
            return self._shift_dates(value, ctx, el.handled, el.path)
        if el.vr == "PN":
            return self._replace(value, ctx, DUMMY)
        if el.vr in TEXT_VRS:
            check_kept(el.tag, el.vr, el.original)  # cleaning keeps most of the text as it was
            value.set([scrub_text(text, ctx.identifiers) for text in value.texts])
            return "cleaned (known identifiers scrubbed)"
        return "kept (clean: nothing to clean for this VR)"

    def _zero(self, value: ElementValue, el: _Element, ctx: _Context) -> str:
        return self._replace(value, ctx, ZERO)

    def _dummy(self, value: ElementValue, el: _Element, ctx: _Context) -> str:
        if el.vr in DATE_VRS and self.options.retain_longitudinal_modified_dates:
            return self._shift_dates(value, ctx, el.handled, el.path)
        return self._replace(value, ctx, DUMMY)

    def _replace(self, value: ElementValue, ctx: _Context, action: Action) -> str:
        name, vr = keyword(value.tag), value.vr
        if name in ("PatientName", "PatientID") and vr in ("PN", "LO"):
            value.set([ctx.patient_pseudonym])
            return "pseudonym (patient)"
        if is_identifier(name, vr):
            value.set([self.pseudo.identifier(name, text.strip()) if text.strip() else text for text in value.texts])
            return "pseudonym (keyed)"
        if action is ZERO or (vr not in NUMERIC_VRS and vr not in DUMMY_BY_VR):
            value.clear()
            return "emptied"
        value.set_dummy(0 if vr in NUMERIC_VRS else DUMMY_BY_VR[vr])
        return "dummy value"

    def _remap_uids(self, value: ElementValue) -> str:
        if is_class_uid(keyword(value.tag)):
            check_kept(value.tag, value.vr, value.raw)
            return "kept (class or syntax UID)"
        new = []
        for text in value.texts:
            text = text.strip("\0 ")
            new.append(text if not text or text in UID_dictionary else self.pseudo.uid(text))
        value.set(new)
        return "UID remapped"

    def _shift_dates(
        self, value: ElementValue, ctx: _Context, handled: set[int], path: tuple[PathStep, ...] | None
    ) -> str:
        ds, tag, vr = value.ds, value.tag, value.vr
        if not self.options.retain_longitudinal_modified_dates:
            # Clean with no date option selected: nothing safe to keep.
            return self._without_value(value, ctx.attribute_type, "no date option")
        shift = ctx.shift
        text = "\\".join(value.texts)
        new: str | None
        if vr == "DA":
            time_tag = TIME_FOR_DATE.get(tag)
            if time_tag is not None and time_tag in ds and len(value.texts) == 1:
                time_raw = ds.get_item(time_tag)
                time_vr = vr_of(time_raw, time_tag)
                # The time is paired only if it would be shifted on its own too (a rule may keep it).
                time_path = (*path[:-1], PathStep(time_tag, keyword(time_tag), time_vr)) if path else None
                time_type = self.types.type_of(ctx.iod, ctx.parent, keyword(time_tag))
                time_action = KEEP
                if time_vr == "TM":
                    time_action = self.decider.decide(time_tag, time_vr, time_path, ctx.plan, time_type)[0]
                paired = time_action in (CLEAN, DUMMY)
                time_value = ElementValue(ds, time_tag, time_vr, time_raw) if paired else None
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
                                    keyword(time_tag),
                                    "TM",
                                    "shifted with its date",
                                    f"paired with {keyword(tag)}",
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
    def _without_value(value: ElementValue, attribute_type: str | None, why: str) -> str:
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

    def _rule_shift(self, value: ElementValue, el: _Element, ctx: _Context) -> str:
        rule = el.rule
        assert rule is not None  # only rules shift by their own amount
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
