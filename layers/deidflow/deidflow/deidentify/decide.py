"""Which action each element gets, and why: the rules first, then the private-element policy, then
Table E.1-1 under the selected options and the element's Type, then deidflow's own defaults for
what the table does not list. Pure: nothing here reads or changes a data set."""

from __future__ import annotations

from enum import StrEnum

from ..profile import OPTION_COLUMNS, ProfileOptions, ProfileTable, resolve_action
from ..rules import ElementRule, InstancePlan, RuleSet
from ..rules.tagpattern import PathStep
from ..tags import DATE_VRS, TEXT_VRS, dictionary_vrs, is_overlay_group, keyword


class Action(StrEnum):
    """What happens to an element. The values are the rules' own words for the actions they have."""

    KEEP = "keep"  # as it is (E.1-1 K; rules keep_tags)
    REMOVE = "remove"  # gone (E.1-1 X; rules delete_tags)
    EMPTY = "empty"  # a zero-length value (rules delete_tags with action: empty)
    ZERO = "zero"  # E.1-1 Z: zero length, or a keyed pseudonym for a patient's name, ID or an identifier
    DUMMY = "dummy"  # E.1-1 D: a dummy value of the VR (pseudonyms as for ZERO; dates shift)
    REMAP_UID = "remap_uid"  # E.1-1 U: a keyed UID
    CLEAN = "clean"  # E.1-1 C: dates shifted, known identifiers scrubbed from text
    SHIFT_DATETIME = "shift_datetime"  # rules: shift by the rule's own amount
    RANDOMIZE_TEXT = "randomize_text"  # rules: a keyed pseudonym of the text
    RANDOMIZE_UID = "randomize_uid"  # rules: a keyed UID


# Table E.1-1's action codes (after the options and the element's Type chose among them).
TABLE_ACTIONS = {
    "K": Action.KEEP,
    "X": Action.REMOVE,
    "Z": Action.ZERO,
    "D": Action.DUMMY,
    "U": Action.REMAP_UID,
    "C": Action.CLEAN,
}

FREE_TEXT_VRS = frozenset({"ST", "LT", "UT", "UC"})
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

Decided = tuple[Action, str, ElementRule | None]  # (action, why, the rule that chose it)


def is_class_uid(keyword: str) -> bool:
    return any(marker in keyword for marker in CLASS_UID_MARKERS)


def is_identifier(keyword: str, vr: str) -> bool:
    return vr in ("LO", "SH", "CS", "UT", "ST", "LT") and keyword.endswith(IDENTIFIER_SUFFIXES)


def is_code_sequence(tag: int) -> bool:
    return keyword(tag).endswith(("CodeSequence", "CodeSequenceTrial"))


def dummy_action(tag: int, vr: str) -> Action:
    """Inside a sequence replaced by dummies: private elements go, UIDs are remapped (references
    stay consistent), nested sequences are replaced in turn, everything else becomes a dummy."""
    if (tag >> 16) % 2:
        return Action.REMOVE
    if vr == "UI":
        return Action.REMAP_UID
    return Action.DUMMY


# -- what an element is --------------------------------------------------------------------------


def vr_of(raw: object, tag: int) -> str:
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return str(vr)
    # Implicit VR or UN: pydicom decodes the value with the dictionary VR, so decide with it too.
    allowed = dictionary_vrs(tag)
    return allowed[0] if allowed else "UN"


_ELEMENT_VRS: dict[tuple[int, str | None], tuple[str, bool]] = {}


def element_vr(raw: object, tag: int) -> tuple[str, bool]:
    """(the VR to decide and write with, whether the file labelled the element otherwise).

    A public element is what the dictionary says it is: labelled with another VR (by a faulty
    writer, or by damage), it is decided as its dictionary VR, and kept only if its bytes are a
    value of that VR (see apply.relabelled).
    """
    label = getattr(raw, "VR", None)
    known = _ELEMENT_VRS.get((tag, label))
    if known is None:
        if not label or label == "UN" or " or " in label:  # no VR in the file (implicit VR, or UN)
            known = (vr_of(raw, tag), False)
        else:
            allowed = dictionary_vrs(tag)
            known = (str(label), False) if not allowed or label in allowed else (allowed[0], True)
        _ELEMENT_VRS[(tag, label)] = known
    return known


# -- the decision ---------------------------------------------------------------------------------


class Decider:
    """The decision for a RuleSet and a profile table; what depends on the element alone is worked
    out once per (tag, VR, Type)."""

    def __init__(self, rules: RuleSet, table: ProfileTable):
        self.rules = rules
        self.options: ProfileOptions = rules.options
        self.table = table
        self._table_cache: dict[tuple[int, str | None], tuple[Action, str]] = {}
        self._static: dict[tuple[int, str, str | None], tuple[Action, str]] = {}

    def decide(
        self,
        tag: int,
        vr: str,
        path: tuple[PathStep, ...] | None,
        plan: InstancePlan,
        attribute_type: str | None = None,
    ) -> Decided:
        """(action, decided_by, rule) for one element.

        `path` is only needed (and only built) when rules or safe-private patterns must match it;
        `attribute_type` is the element's Type in the instance's IOD, where known.
        """
        if plan.element_rules and path is not None:
            for rule in plan.element_rules:
                if rule.matches(path):
                    return Action(rule.kind), f"rule {rule.origin}", rule
        if (tag >> 16) % 2 == 1:
            return self._private_action(tag, path)
        key = (tag, vr, attribute_type)
        cached = self._static.get(key)
        if cached is None:
            cached = self._static[key] = self._profile_decision(tag, vr, attribute_type)
        return cached[0], cached[1], None

    def _table_action(self, tag: int, attribute_type: str | None = None) -> tuple[Action, str] | None:
        cached = self._table_cache.get((tag, attribute_type))
        if cached is None:
            row = self.table.row_for(tag)
            if row is None:
                return None
            code, by = resolve_action(row, self.options, attribute_type)
            cell = row.basic if by == "basic" else row.options[OPTION_COLUMNS[by][0]]
            chosen = f"; Type {attribute_type} here: {code}" if attribute_type and code != cell else ""
            cached = (TABLE_ACTIONS[code], f"{row.label} [{'Basic Profile' if by == 'basic' else by}: {cell}{chosen}]")
            self._table_cache[(tag, attribute_type)] = cached
        return cached

    def _profile_decision(self, tag: int, vr: str, attribute_type: str | None = None) -> tuple[Action, str]:
        """What the profile and deidflow's defaults say about a public element: the same for every
        instance under one RuleSet."""
        if tag & 0xFFFF == 0:
            return Action.REMOVE, "group length: recomputed on write or obsolete"
        if is_overlay_group(tag):
            overlay = self._overlay_action(tag, vr)
            if overlay is not None:
                return overlay
        table = self._table_action(tag, attribute_type)
        if table is not None:
            return table
        name = keyword(tag)
        if not name:
            return Action.REMOVE, "unknown public element (not in the DICOM dictionary): removed"
        if tag in IDENTITY_CODE_SEQUENCES:
            return (
                Action.DUMMY,
                "not in E.1-1: its codes name a person or organisation, replaced by dummies (deidflow default)",
            )
        if tag in MARKER_TAGS:
            return (
                Action.REMOVE,
                "set anew after the pass: what de-identification this instance had says nothing of this one",
            )
        if tag in OPAQUE_BINARY:
            return (
                Action.REMOVE,
                "not in E.1-1: an opaque binary value (a document, encrypted or signed content): removed",
            )
        if tag in ISSUER_SEQUENCES:
            return Action.REMOVE, "not in E.1-1: names the organisations issuing an order's numbers (deidflow default)"
        if vr == "PN":
            return Action.DUMMY, "not in E.1-1: a person's name, replaced by a dummy (deidflow default)"
        if vr == "UI":
            return Action.REMAP_UID, "not in E.1-1: every UID is remapped unless it names a class or syntax"
        if vr in DATE_VRS and self.options.retain_longitudinal_modified_dates:
            return Action.CLEAN, "not in E.1-1: dates move with the patient's other dates"
        if vr in FREE_TEXT_VRS:
            # E.g. SR Text Value (0040,A160): free text is never kept as it is.
            clean = self.options.clean_structured_content if name == "TextValue" else self.options.clean_descriptors
            if clean:
                return Action.CLEAN, "not in E.1-1: free text, cleaned (clean option selected)"
            return Action.DUMMY, "not in E.1-1: free text is replaced by a dummy (deidflow default)"
        return Action.KEEP, "not in E.1-1: kept"

    def _overlay_action(self, tag: int, vr: str) -> tuple[Action, str] | None:
        """An overlay is one repeating group: removing its data (60xx,3000) removes the whole group,
        description and label included; kept under Clean Graphics, its text is cleaned."""
        data_action = self._table_action((tag & 0xFF000000) | 0x00003000)
        if data_action is None:
            return None
        action, by = data_action
        if action is Action.REMOVE:
            return Action.REMOVE, f"overlay group removed with its Overlay Data: {by}"
        if vr in TEXT_VRS and (tag & 0xFFFF) != 0x3000:
            return Action.CLEAN, f"overlay text cleaned with its Overlay Data: {by}"
        return None

    def _private_action(self, tag: int, path: tuple[PathStep, ...] | None) -> Decided:
        row = self.table.private
        label = row.label if row else "private element"
        if self.options.retain_safe_private and (tag & 0xFFFF) >= 0x0100:
            if path is not None and any(p.matches(path) for p in self.rules.safe_private):
                return Action.KEEP, f"{label} [retain_safe_private: listed in profile.safe_private]", None
            return Action.REMOVE, f"{label} [retain_safe_private: not listed as safe]", None
        if self.options.retain_safe_private and 0x0010 <= (tag & 0xFFFF) <= 0x00FF:
            return Action.KEEP, f"{label} [private creator: kept while its block keeps elements]", None
        return Action.REMOVE, f"{label} [Basic Profile: X]", None
