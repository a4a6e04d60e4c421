"""Profile options and rules overrides, each on one synthetic instance."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pydicom
import pytest
from deidflow.testing.synthetic import SyntheticStudy, make_instance, make_patient, make_sr

from ..conftest import engine_with

BASE = "deidflow_rules: 1\n"


def _study(seed: int = 5) -> tuple[SyntheticStudy, np.random.Generator]:
    rng = np.random.default_rng(seed)
    study = SyntheticStudy(make_patient(4), "1.2.826.0.1.3680043.10.1379.77.1", "ACC00077001", "20190412")
    return study, rng


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ct() -> pydicom.Dataset:
    study, rng = _study()
    return make_instance(study, "1.2.826.0.1.3680043.10.1379.77.2", 1, 1, rng, frame_of_reference="1.2.3.4").dataset


def _sr() -> pydicom.Dataset:
    study, rng = _study()
    images = [make_instance(study, "1.2.826.0.1.3680043.10.1379.77.2", 1, 1, rng)]
    return make_sr(study, rng, images).dataset


def _run(rules: str, ds: pydicom.Dataset, **kw) -> pydicom.Dataset:
    processed = engine_with(BASE + rules).process(_bytes(ds), **kw)
    return pydicom.dcmread(io.BytesIO(processed.data))


def options(**flags: bool) -> str:
    return "profile:\n  options:\n" + "".join(f"    {k}: {str(v).lower()}\n" for k, v in flags.items())


def test_retain_uids_keeps_instance_uids():
    ds = _ct()
    out = _run(options(retain_uids=True), ds)
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.StudyInstanceUID == ds.StudyInstanceUID
    assert "113110" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}


def test_retain_patient_characteristics_keeps_sex_age_weight():
    ds = _ct()
    out = _run(options(retain_patient_characteristics=True), ds)
    assert (out.PatientSex, out.PatientAge, out.PatientWeight) == (ds.PatientSex, ds.PatientAge, ds.PatientWeight)
    default = _run("", ds)
    assert "PatientAge" not in default and default.PatientSex == ""


def test_retain_device_and_institution_identity():
    ds = _ct()
    out = _run(options(retain_device_identity=True, retain_institution_identity=True), ds)
    assert out.DeviceSerialNumber == ds.DeviceSerialNumber
    assert out.StationName == ds.StationName
    assert out.InstitutionName == ds.InstitutionName
    default = _run("", ds)
    assert default.get("InstitutionName") in (None, "", "REMOVED")
    assert default.get("DeviceSerialNumber") != ds.DeviceSerialNumber  # a keyed pseudonym


def test_full_dates_keep_dates_and_no_date_option_removes_them():
    ds = _ct()
    full = _run(options(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=False), ds)
    assert full.StudyDate == ds.StudyDate and full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    none = _run(options(retain_longitudinal_modified_dates=False), ds)
    assert none.StudyDate == "" and none.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.StudyDate.encode() not in _bytes(none)


def test_clean_descriptors_keeps_descriptions_without_identifiers():
    ds = _ct()
    out = _run(options(clean_descriptors=True), ds)
    assert out.StudyDescription.startswith("CT CHEST for ")
    assert ds.PatientName.family_name not in out.StudyDescription
    assert "Quellmore" not in out.SeriesDescription
    assert "StudyDescription" not in _run("", ds)


def test_clean_structured_content_keeps_sr_text_scrubbed():
    ds = _sr()
    out = _run(options(clean_structured_content=True), ds)
    text = next(i for i in out.ContentSequence if i.ValueType == "TEXT").TextValue
    assert ds.PatientName.family_name not in text and ds.PatientID not in text
    assert "seen by" in text
    default = _run("", ds)
    assert next(i for i in default.ContentSequence if i.ValueType == "TEXT").TextValue == "REMOVED"


def test_clean_graphics_keeps_overlay_but_cleans_its_text():
    ds = _ct()
    out = _run(options(clean_graphics=True), ds)
    assert out[0x60003000].value == ds[0x60003000].value
    assert ds.PatientName.family_name not in str(out[0x60000022].value)
    assert not any(t.group == 0x6000 for t in _run("", ds).keys())


def test_retain_safe_private_keeps_only_listed_private_elements_with_their_creator():
    ds = _ct()
    rules = options(retain_safe_private=True) + '  safe_private: ["0019{SAFE VENDOR}10"]\n'
    out = _run(rules, ds)
    assert out[0x00191010].value == ds[0x00191010].value
    assert out[0x00190010].value == "SAFE VENDOR"
    assert not any(t.group == 0x0011 for t in out.keys())


def test_keep_delete_randomize_add_rules_override_the_profile():
    ds = _ct()
    rules = """
transformations:
  - scope: {labels: ALL}
    keep_tags: [{tags: [StudyDescription, BodyPartExamined]}]
    delete_tags: [{tags: BodyPartExamined}, {tags: SliceThickness, action: empty}]
    randomize_text: [{tags: "*/ProtocolName", split: " ", reuse_mapping: Always}]
    add_tags:
      - {tag: ClinicalTrialSponsorName, vr: LO, value: Acme Trial}
      - {tag: "00120020", vr: LO, value: PROTO-1}
"""
    out = _run(rules, ds, explain=True)
    assert out.StudyDescription == ds.StudyDescription  # kept on purpose by the rule
    assert "BodyPartExamined" not in out  # delete comes after keep in one transformation
    assert out.SliceThickness is None or out.SliceThickness == ""
    assert len(out.ProtocolName.split(" ")) == 2 and ds.ProtocolName.split(" ")[1] not in out.ProtocolName
    assert out.ClinicalTrialSponsorName == "Acme Trial" and out.ClinicalTrialProtocolID == "PROTO-1"


def test_shift_datetime_rule_moves_within_bound_per_reuse_context():
    ds = _ct()
    rules = """
transformations:
  - scope: {labels: ALL}
    shift_datetime: [{tags: PatientBirthDate, shift_by: 30, reuse_mapping: SamePatient}]
"""
    out = _run(rules, ds)
    from datetime import datetime

    delta = datetime.strptime(out.PatientBirthDate, "%Y%m%d") - datetime.strptime(ds.PatientBirthDate, "%Y%m%d")
    assert abs(delta.days) <= 30
    assert _run(rules, ds).PatientBirthDate == out.PatientBirthDate


def test_labels_scope_transformations_and_scope_to_forward():
    from deidflow.intake import Rejected

    rules = """
labels:
  - {name: CT, filter: Modality StrEquals CT}
  - {name: SR, filter: Modality StrEquals SR}
categories:
  - {name: images, labels: [CT]}
scope_to_forward: {labels: ALL, except_labels: SR}
transformations:
  - scope: {categories: images}
    keep_tags: [{tags: StudyDescription}]
"""
    assert _run(rules, _ct()).StudyDescription
    with pytest.raises(Rejected) as err:
        engine_with(BASE + rules).process(_bytes(_sr()))
    assert err.value.reason == "out_of_scope"


def test_explain_names_the_profile_row_or_rule_for_every_element():
    processed = engine_with(BASE).process(_bytes(_ct()), explain=True)
    decisions = {d.keyword: d for d in processed.result.decisions}
    assert decisions["PatientName"].decided_by.startswith("PS3.15 E.1-1 (0010,0010)")
    assert decisions["PatientName"].action == "pseudonym (patient)"
    assert decisions["StudyDate"].decided_by.endswith("[retain_longitudinal_modified_dates: C]")
    assert decisions["SOPClassUID"].action == "kept (class or syntax UID)"
    assert "private:ACME MEDICAL 1.0" in decisions
    assert all(d.decided_by for d in processed.result.decisions)


def test_a_time_kept_by_a_rule_is_not_shifted_with_its_date():
    ds = _ct()
    out = _run("transformations:\n  - scope: {labels: ALL}\n    keep_tags: [{tags: StudyTime}]\n", ds)
    assert out.StudyTime == ds.StudyTime
    assert out.StudyDate != ds.StudyDate


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.1"),  # decompressed
        ("MR_small.dcm", "1.2.840.10008.1.2.5"),  # compressed (RLE Lossless)
    ],
)
def test_a_transcoded_instance_keeps_its_keyed_uid(source: str, target: str) -> None:
    """pydicom's compress and decompress draw a new random SOP Instance UID by default: the output
    would differ on every run and no reference to the instance would resolve."""
    data = pydicom.data.get_testdata_file(source, read=False)
    assert isinstance(data, str)
    plain = engine_with(BASE).process(data)
    transcoding = f"{BASE}transformations:\n  - scope: {{labels: ALL}}\n    transcode: {target}\n"
    first, second = (engine_with(transcoding).process(data) for _ in range(2))
    assert first.data == second.data
    out = pydicom.dcmread(io.BytesIO(first.data))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == plain.sop_uid == first.sop_uid


def test_one_study_keeps_one_study_date_and_exact_intervals() -> None:
    """Researchers group by study date. Instances of one study whose times sit on either side of
    midnight, or are missing, must still share one shifted Study Date; and the interval between
    two acquisitions either side of midnight stays what it was."""
    study, rng = _study()
    instances = [make_instance(study, "1.2.826.0.1.3680043.10.1379.77.2", 1, n, rng).dataset for n in (1, 2, 3)]
    for ds, study_time, acquired in zip(
        instances, ("235959", "000001", None), (("20200101", "235950"), ("20200102", "000010"), None), strict=True
    ):
        ds.StudyDate = "20200101"
        if study_time is None:
            del ds.StudyTime
        else:
            ds.StudyTime = study_time
        if acquired is not None:
            ds.AcquisitionDate, ds.AcquisitionTime = acquired
    outputs = [_run("", ds) for ds in instances]
    assert len({out.StudyDate for out in outputs}) == 1 and outputs[0].StudyDate != "20200101"
    first, second = (
        datetime.strptime(out.AcquisitionDate + out.AcquisitionTime, "%Y%m%d%H%M%S") for out in outputs[:2]
    )
    assert (second - first).total_seconds() == 20
