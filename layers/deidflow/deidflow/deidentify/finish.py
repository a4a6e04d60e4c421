"""After the element pass: empty private blocks dropped, the rules' added elements, the markers
PS3.15 E.1.1 asks for, and a file meta group that says only what the format needs."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .. import __version__
from ..dicomraw.edit import copy_as_read, set_element
from ..dicomraw.read import text_value
from ..profile import ProfileOptions, ProfileTable, method_codes
from ..rules import InstancePlan
from ..tags import keyword, tag_text
from .decide import vr_of
from .result import Decision

IMPLEMENTATION_CLASS_UID = "2.25.255813004236516426009434744587853045523"
IMPLEMENTATION_VERSION_NAME = "DEIDFLOW_" + __version__.replace(".", "_")
_IMPLEMENTATION_CLASS_UID = UID(IMPLEMENTATION_CLASS_UID)
# The file meta elements that identify the format; the rest (source AE titles, private information) go.
KEPT_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010)


class Markers:
    """Patient Identity Removed, De-identification Method (+ its code sequence) and Longitudinal
    Temporal Information Modified: they depend on the options only, so they are worked out once."""

    def __init__(self, options: ProfileOptions, table: ProfileTable):
        self.options, self.table = options, table
        selected = [name.replace("_", " ") for name in options.selected()]
        if options.retain_longitudinal_full_dates:
            modified = "UNMODIFIED"
        elif options.retain_longitudinal_modified_dates:
            modified = "MODIFIED"
        else:
            modified = "REMOVED"
        self.identity_removed = (0x00120062, "CS", "YES")
        self.method = (0x00120063, "LO", [f"deidflow {__version__}", table.edition_id, *selected][:16])
        self.temporal = (0x00280303, "CS", modified)
        self.method_codes = {cleaned: method_codes(options, pixels_cleaned=cleaned) for cleaned in (False, True)}

    def set_on(self, ds: Dataset, pixels_cleaned: bool, decisions: list[Decision] | None = None) -> None:
        """What `ds.PatientIdentityRemoved = "YES"` and friends do, without the keyword and
        dictionary look-ups: a new element with the dictionary VR, or, for one the data set already
        has, the new value on its own element (which keeps its VR). Each is recorded in
        `decisions`, when given."""
        if decisions is not None:
            code_sequence = (0x00120064, "SQ", None)  # De-identification Method Code Sequence, built below
            for tag, vr, _ in (self.identity_removed, self.method, code_sequence, self.temporal):
                done = "replaced (de-identification marker)" if tag in ds else "added (de-identification marker)"
                decisions.append(Decision(tag_text(tag), keyword(tag), vr, done, "PS3.15 E.1.1: what was done"))
        set_element(ds, *self.identity_removed)
        set_element(ds, *self.method)
        codes = Sequence()
        for value, meaning in self.method_codes[pixels_cleaned]:
            item = Dataset()
            set_element(item, 0x00080100, "SH", value)  # Code Value
            set_element(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
            set_element(item, 0x00080104, "LO", meaning)  # Code Meaning
            codes.append(item)
        set_element(ds, 0x00120064, "SQ", codes)  # De-identification Method Code Sequence
        set_element(ds, *self.temporal)


def drop_empty_private_blocks(ds: Dataset) -> None:
    """Drop private creator elements whose block no longer holds any element, at every depth."""
    for item in _all_datasets(ds):
        for tag in [t for t in item.keys() if (t >> 16) % 2 == 1 and 0x10 <= (t & 0xFFFF) <= 0xFF]:
            group, block = tag >> 16, tag & 0xFF
            if not any((t >> 16) == group and (t & 0xFFFF) >> 8 == block for t in item.keys()):
                del item[tag]


def add_tags(ds: Dataset, plan: InstancePlan, decisions: list[Decision] | None) -> None:
    """The rules' add_tags; each recorded in `decisions` when given."""
    for add in plan.add_tags:
        if add.tag in ds and not add.overwrite_if_exists:
            continue
        ds.add(DataElement(add.tag, add.vr, add.value))
        if decisions is not None:
            decisions.append(Decision(tag_text(add.tag), keyword(add.tag), add.vr, "added", f"rule {add.origin}"))


def rebuild_meta(
    ds: Dataset, original: FileMetaDataset | None, decisions: list[Decision] | None, *, implicit_read: bool
) -> None:
    """Keep only what identifies the format; record in `decisions` (when given) what went."""
    meta = FileMetaDataset()
    if original is not None:
        copy_as_read(meta, original, KEPT_META)  # as read: no need to decode
        if decisions is not None:
            for tag in original.keys():
                if tag not in KEPT_META and tag != 0x00020000:
                    decisions.append(
                        Decision(
                            f"meta{tag_text(tag)}",
                            keyword(tag),
                            vr_of(original.get_item(tag), tag),
                            "replaced" if tag in (0x00020012, 0x00020013) else "removed",
                            "file meta: only format elements are kept",
                        )
                    )
    set_element(meta, 0x00020001, "OB", b"\x00\x01")  # File Meta Information Version
    set_element(meta, 0x00020002, "UI", UID(text_value(ds, "SOPClassUID", "UI")))  # Media Storage SOP Class
    set_element(meta, 0x00020003, "UI", UID(text_value(ds, "SOPInstanceUID", "UI")))  # ... SOP Instance
    if 0x00020010 not in meta:
        syntax = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
        set_element(meta, 0x00020010, "UI", syntax)  # Transfer Syntax UID
    if not meta.TransferSyntaxUID.is_implicit_VR and implicit_read:
        # Read as implicit VR but declared explicit (it happens): decode every element so each
        # gets its dictionary VR and the file can be written as the syntax it declares.
        for _ in ds.iterall():
            pass
    set_element(meta, 0x00020012, "UI", _IMPLEMENTATION_CLASS_UID)  # Implementation Class UID
    set_element(meta, 0x00020013, "SH", IMPLEMENTATION_VERSION_NAME)  # Implementation Version Name
    ds.file_meta = meta


def _all_datasets(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _all_datasets(item)
