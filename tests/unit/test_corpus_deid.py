"""The issue's acceptance properties, on a synthetic PHI-laden corpus run through `run_batch`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from deidflow.batch import run_batch
from deidflow.rules import load_rules
from pydicom.uid import UID_dictionary

from ..conftest import TEST_KEY


def _outputs(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.dcm"))}


@pytest.fixture(scope="module")
def run(corpus_dir, tmp_path_factory):
    corpus, source = corpus_dir
    out = tmp_path_factory.mktemp("research")
    summary = run_batch([source], out, load_rules(), TEST_KEY, jobs=1)
    # original SOP UID -> de-identified dataset
    by_original: dict[str, pydicom.Dataset] = {}
    for line in summary.lines:
        original = pydicom.dcmread(line.input, stop_before_pixels=True)
        by_original[str(original.SOPInstanceUID)] = pydicom.dcmread(line.output)
    return corpus, source, out, summary, by_original


def test_every_instance_is_deidentified(run):
    corpus, _, out, summary, _ = run
    assert summary.rejected == 0
    assert summary.deidentified == len(corpus.instances) == len(_outputs(out))


def test_no_planted_value_appears_anywhere_in_the_output_bytes(run):
    corpus, _, out, _, _ = run
    planted = corpus.planted_values()
    assert len(planted) > 50
    inputs = b"".join(p.read_bytes() for p in corpus.files.values())
    assert all(value.encode() in inputs for value in planted), "every planted value is really in the input"
    for path in _outputs(out).values():
        data = path.read_bytes()
        leaked = [value for value in planted if value.encode() in data or value.upper().encode() in data]
        assert not leaked, f"{path.name} still holds {leaked}"


def _all_uids(ds: pydicom.Dataset) -> list[str]:
    values = []
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            values += [str(v) for v in (element.value if element.VM > 1 else [element.value])]
    return values


def test_every_instance_uid_changes_and_only_well_known_uids_survive(run):
    corpus, _, _, _, by_original = run
    originals = {str(i.dataset.SOPInstanceUID) for i in corpus.instances}
    originals |= {str(i.dataset.StudyInstanceUID) for i in corpus.instances}
    originals |= {str(i.dataset.SeriesInstanceUID) for i in corpus.instances}
    originals |= {str(i.dataset.get("FrameOfReferenceUID", "")) for i in corpus.instances} - {""}
    for ds in by_original.values():
        for uid in [*_all_uids(ds), str(ds.file_meta.MediaStorageSOPInstanceUID)]:
            assert uid not in originals
            assert uid.startswith("2.25.") or uid in UID_dictionary, uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_references_between_instances_still_resolve(run):
    corpus, _, _, _, by_original = run
    new_sop = {orig: str(ds.SOPInstanceUID) for orig, ds in by_original.items()}
    checked = 0
    for instance in corpus.instances:
        original = instance.dataset
        out = by_original[str(original.SOPInstanceUID)]
        for seq in ("ReferencedImageSequence", "SourceImageSequence"):
            for before, after in zip(original.get(seq, []), out.get(seq, []), strict=True):
                assert after.ReferencedSOPInstanceUID == new_sop[str(before.ReferencedSOPInstanceUID)]
                checked += 1
        if original.Modality == "SR":
            evidence = out.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == out.StudyInstanceUID
            series = evidence.ReferencedSeriesSequence[0]
            cited = [str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence]
            assert cited and all(uid in new_sop.values() for uid in cited)
            assert {str(by_original[o].SeriesInstanceUID) for o in new_sop if new_sop[o] in cited} == {
                str(series.SeriesInstanceUID)
            }
            image_item = next(i for i in out.ContentSequence if i.ValueType == "IMAGE")
            assert [str(r.ReferencedSOPInstanceUID) for r in image_item.ReferencedSOPSequence] == cited
            checked += 1
    assert checked > 10
    # Instances of one series share the new Frame of Reference UID.
    frames = {}
    for instance in corpus.instances:
        if instance.dataset.Modality == "CT":
            out = by_original[str(instance.dataset.SOPInstanceUID)]
            frames.setdefault(str(out.SeriesInstanceUID), set()).add(str(out.FrameOfReferenceUID))
    assert all(len(f) == 1 for f in frames.values())


def test_each_patient_keeps_one_pseudonym_and_patients_never_merge(run):
    corpus, _, _, _, by_original = run
    pseudonyms: dict[str, set[str]] = {}
    for instance in corpus.instances:
        out = by_original[str(instance.dataset.SOPInstanceUID)]
        pseudonyms.setdefault(instance.patient.patient_id, set()).add(str(out.PatientID))
        assert str(out.PatientName) == str(out.PatientID)
    assert all(len(p) == 1 for p in pseudonyms.values())
    assert len({next(iter(p)) for p in pseudonyms.values()}) == len(corpus.patients)


def _instant(ds: pydicom.Dataset, date_kw: str, time_kw: str) -> datetime:
    time = str(ds.get(time_kw)).split(".")[0]
    return datetime.strptime(str(ds.get(date_kw)) + time, "%Y%m%d%H%M%S")


def test_date_intervals_within_a_patient_are_preserved_and_real_dates_are_not(run):
    corpus, _, _, _, by_original = run
    for patient in corpus.patients:
        instances = [i for i in corpus.instances if i.patient is patient and i.dataset.Modality == "CT"]
        assert len(instances) >= 6  # two studies
        before = [_instant(i.dataset, "AcquisitionDate", "AcquisitionTime") for i in instances]
        after = [
            _instant(by_original[str(i.dataset.SOPInstanceUID)], "AcquisitionDate", "AcquisitionTime")
            for i in instances
        ]
        offsets = {a - b for a, b in zip(after, before, strict=True)}
        assert len(offsets) == 1, "one offset per patient"
        assert next(iter(offsets)).days <= -365
        for instance in instances:
            out = by_original[str(instance.dataset.SOPInstanceUID)]
            moved = datetime.strptime(str(out.AcquisitionDateTime).split(".")[0], "%Y%m%d%H%M%S")
            original = datetime.strptime(str(instance.dataset.AcquisitionDateTime).split(".")[0], "%Y%m%d%H%M%S")
            assert moved - original in offsets
            assert out.StudyDate != instance.dataset.StudyDate


def test_untouched_pixel_data_is_byte_identical(run):
    corpus, _, _, _, by_original = run
    for instance in corpus.instances:
        if "PixelData" in instance.dataset:
            assert by_original[str(instance.dataset.SOPInstanceUID)].PixelData == instance.dataset.PixelData


def test_markers_say_what_was_done(run):
    _, _, _, _, by_original = run
    for ds in by_original.values():
        assert ds.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert codes == {"113100", "113107"}
        assert all(item.CodingSchemeDesignator == "DCM" for item in ds.DeidentificationMethodCodeSequence)
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert any("deidflow" in m for m in ds.DeidentificationMethod)
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        assert not any(tag.group % 2 for tag in ds.keys()), "private elements removed"
        assert not any(0x6000 <= tag.group <= 0x601E for tag in ds.keys()), "overlays removed"


def test_rerun_and_parallel_run_give_byte_identical_output(run, tmp_path):
    _, source, out, _, _ = run
    again = tmp_path / "again"
    run_batch([source], again, load_rules(), TEST_KEY, jobs=2)
    first, second = _outputs(out), _outputs(again)
    assert first.keys() == second.keys()
    assert all(first[k].read_bytes() == second[k].read_bytes() for k in first)


def test_a_different_key_gives_different_pseudonyms(run, tmp_path):
    _, source, out, _, _ = run
    other = tmp_path / "other"
    run_batch([source], other, load_rules(), bytes(reversed(TEST_KEY)), jobs=1)
    assert not set(_outputs(out)) & set(_outputs(other))


def test_the_preamble_is_never_carried_over(default_engine):
    """The 128 bytes before DICM may hold anything (a TIFF header, a name): the output has zeros."""
    from deidflow.testing.synthetic import make_corpus

    from ..conftest import dicom_bytes

    ds = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, with_sr=False).instances[0].dataset
    ds.preamble = b"II*\x00PATIENT QUILLFEATHER MRN 88123467".ljust(128, b"\x00")
    out = default_engine.process(dicom_bytes(ds))
    assert out.data[:128] == bytes(128) and out.data[128:132] == b"DICM"
