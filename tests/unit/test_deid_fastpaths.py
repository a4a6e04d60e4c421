"""The de-identification pass sets elements without pydicom's keyword machinery: it must do exactly
what that machinery does. Each case runs the pass twice on fresh reads of the same bytes, once as it
is and once with the markers, file meta and raw values set the slow way (keyword setattr and
Dataset.__setitem__), and compares the encoded files and the resulting data sets."""

from __future__ import annotations

import io
import re
from collections import Counter

import pydicom
import pytest
from deidflow import __version__
from deidflow.deidentify import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from deidflow.deidentify.finish import Markers
from deidflow.dicomraw import edit
from deidflow.dicomraw import read as rawvalues
from deidflow.profile import method_codes
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..conftest import dicom_bytes, engine_with
from .test_options_and_rules import BASE, _ct, options


def _slow_set_markers(self: Markers, ds: Dataset, pixels_cleaned: bool, decisions: object = None) -> None:
    o = self.options
    ds.PatientIdentityRemoved = "YES"
    selected = [name.replace("_", " ") for name in o.selected()]
    ds.DeidentificationMethod = [f"deidflow {__version__}", self.table.edition_id, *selected][:16]
    codes = Sequence()
    for value, meaning in method_codes(o, pixels_cleaned=pixels_cleaned):
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if o.retain_longitudinal_full_dates:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif o.retain_longitudinal_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _state(ds: Dataset) -> str:
    """Every element as pydicom holds it (raw or not, VR, value), at every depth, and the file meta."""
    lines = []

    def walk(item: Dataset, depth: int) -> None:
        for tag, element in item._dict.items():
            lines.append(f"{depth} {Tag(tag)} {type(element).__name__} {element.VR} {element.value!r}"[:300])
            if element.VR == "SQ" and not isinstance(element, RawDataElement):
                for child in element.value:
                    walk(child, depth + 1)

    walk(ds, 0)
    lines += [f"meta {Tag(t)} {type(e).__name__} {e.VR} {e.value!r}" for t, e in ds.file_meta._dict.items()]
    return _ADDRESS.sub("", "\n".join(lines))


def _both(data: bytes, rules: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = engine_with(BASE + rules).process(data)
    with monkeypatch.context() as patched, edit.public_setters():
        patched.setattr(Markers, "set_on", _slow_set_markers)
        slow = engine_with(BASE + rules).process(data)
    assert fast.data == slow.data
    assert _state(fast.result.dataset) == _state(slow.result.dataset)
    assert fast.data == dicom_bytes(pydicom.dcmread(io.BytesIO(fast.data)))


RULES = [
    "",
    options(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=False),
    options(retain_longitudinal_modified_dates=False),
    options(retain_safe_private=True, clean_descriptors=True, clean_graphics=True)
    + '  safe_private: ["0019{SAFE VENDOR}10"]\n',
]


@pytest.mark.parametrize("rules", RULES)
def test_plain_instance(rules: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _both(dicom_bytes(_ct()), rules, monkeypatch)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("rules", RULES)
def test_markers_and_meta_already_present(syntax: UID, rules: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Elements the pass sets already in the input, some with an unexpected VR: pydicom keeps an
    existing element (and its VR) and only changes its value."""
    ds = _ct()
    ds.PatientIdentityRemoved = "NO"
    ds.add_new(0x00120063, "LT", "someone's method")  # De-identification Method, LO in the dictionary
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    item = Dataset()
    item.CodeValue = "1"
    ds.DeidentificationMethodCodeSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.ImplementationClassUID = UID("1.2.3.4")
    ds.file_meta.ImplementationVersionName = "OTHER"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    _both(dicom_bytes(ds), rules, monkeypatch)


@pytest.mark.parametrize("rules", RULES)
def test_private_and_odd_values(rules: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw values set in private blocks (pydicom ties them to their creator), odd lengths, UIDs."""
    ds = _ct()
    block = ds.private_block(0x0019, "SAFE VENDOR", create=True)
    block.add_new(0x10, "LO", "ODD")
    block.add_new(0x11, "UI", "1.2.3.45")
    block.add_new(0x12, "DA", "20200101")
    ds.add_new(0x00081030, "LO", "A STUDY DESCRIPTION ")
    ds.add_new(0x00200052, "UI", "1.2.840.99.1")
    _both(dicom_bytes(ds), rules, monkeypatch)


def test_the_fast_paths_set_what_the_dictionary_says() -> None:
    meta = FileMetaDataset()
    for tag, vr, value in (
        (0x00020012, "UI", UID(IMPLEMENTATION_CLASS_UID)),
        (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME),
    ):
        edit.set_element(meta, tag, vr, value)
        assert pydicom.datadict.dictionary_VR(tag) == meta[tag].VR


def _raw_elements(ds: Dataset):  # type: ignore[no-untyped-def]
    """(data set, tag, raw element) for every raw element, at every depth."""
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and type(raw.value) is bytes:
            yield ds, tag, raw
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                yield from _raw_elements(item)


def test_raw_value_readers_read_what_pydicom_decodes() -> None:
    """The readers of `dicomraw.read` skip pydicom's decoding for plain values: on every element of
    every real file (charset files included) and a synthetic one, they give pydicom's value or
    decline."""
    from .test_real_files import REAL_FILES

    read: Counter[str] = Counter()
    declined = 0
    datasets = [pydicom.dcmread(io.BytesIO(dicom_bytes(_ct())))]
    for path in REAL_FILES:
        try:
            datasets.append(pydicom.dcmread(path, force=True, stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - unreadable real files are intake's business
            continue
    for ds in datasets:
        try:
            elements = list(_raw_elements(ds))
        except Exception:  # noqa: BLE001 - a damaged sequence: intake rejects the file
            continue
        for item, tag, raw in elements:
            probe = Dataset()  # the raw element as read (`item` holds it decoded by now)
            probe._dict[tag] = raw
            if raw.VR in rawvalues.PLAIN_TEXT_VRS:
                fast: object = rawvalues.element_text(probe, tag, raw.VR)
            elif raw.VR in ("US", "UL"):
                fast = rawvalues.element_unsigned(probe, tag, raw.VR)
            else:
                continue
            if fast is None:
                declined += 1
                continue
            value = item[tag].value
            assert fast == ("" if value in (None, "") else value if raw.VR in ("US", "UL") else str(value)), Tag(tag)
            read[raw.VR] += 1
    assert read["UI"] > 1000 and read["LO"] > 200 and read["CS"] > 500 and read["US"] > 500 and declined > 20
