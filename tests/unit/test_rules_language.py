"""Rules files: the default, schema errors that name the line, and research-pacs configs."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from deidflow.rules import RulesError, load_rules, load_rules_text

DATA = Path(__file__).parent.parent / "data"


def _problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as err:
        load_rules_text(text, "r.yaml")
    return err.value.problems


def test_default_rules_are_basic_profile_with_modified_dates():
    rules = load_rules()
    assert rules.options.selected() == ["retain_longitudinal_modified_dates"]
    assert rules.transformations == ()


def test_unknown_key_names_its_line_and_the_allowed_keys():
    problems = _problems("deidflow_rules: 1\nprofile:\n  options:\n    retain_uid: true\n")
    assert problems == [
        "r.yaml:4: unknown key 'retain_uid' in profile.options (allowed: clean_descriptors, clean_graphics, "
        "clean_structured_content, retain_device_identity, retain_institution_identity, "
        "retain_longitudinal_full_dates, retain_longitudinal_modified_dates, retain_patient_characteristics, "
        "retain_safe_private, retain_uids)"
    ]


def test_wrong_types_bad_patterns_and_bad_queries_each_name_their_line():
    text = """deidflow_rules: 1
labels:
  - name: CT
    filter: Modality StrEqual CT
transformations:
  - scope: {labels: [CT, MR]}
    delete_tags:
      - tags: [PatientNam]
        action: erase
    shift_datetime:
      - tags: StudyDate
        shift_by: -3
"""
    problems = _problems(text)
    joined = "\n".join(problems)
    assert "r.yaml:9: transformations[0].delete_tags[0].action: 'erase' is not one of remove, empty" in joined
    assert "r.yaml:12: transformations[0].shift_datetime[0].shift_by: -3 is less than the minimum of 1" in joined
    schema_clean = text.replace("action: erase", "action: remove").replace("shift_by: -3", "shift_by: 3")
    semantic = "\n".join(_problems(schema_clean))
    assert "r.yaml:4: labels[0].filter: bad query: unknown operator 'StrEqual'" in semantic
    assert "r.yaml:6: transformations[0].scope.labels: unknown label 'MR'" in semantic
    assert "r.yaml:8: transformations[0].delete_tags[0].tags[0]: 'PatientNam' is not a DICOM keyword" in semantic


def test_exclusive_date_options_and_yaml_syntax_errors():
    assert (
        "exclude each other"
        in _problems("deidflow_rules: 1\nprofile:\n  options: {retain_longitudinal_full_dates: true}\n")[0]
    )
    assert _problems("deidflow_rules: 1\nlabels: [\n")[0].startswith("r.yaml:3: not valid YAML")
    assert _problems("")[0] == "r.yaml:1: the file is empty"
    assert "'deidflow_rules' is a required property" in _problems("profile: {}\n")[0]


def test_unsupported_transcode_target_is_an_error():
    problems = _problems(
        "deidflow_rules: 1\ntransformations:\n  - scope: {labels: ALL}\n    transcode: 1.2.840.10008.1.2.4.50\n"
    )
    assert problems[0].startswith("r.yaml:4: transformations[0].transcode: cannot write transfer syntax")


def test_research_pacs_config_is_converted_and_honoured():
    rules = load_rules(DATA / "research_pacs_config.yaml")
    assert [name for name, _ in rules.labels] == ["Documents", "US", "CT Model A"]
    assert rules.scope_to_forward.except_labels == {"Documents"}
    assert len(rules.transformations) == 3
    assert rules.transformations[2].transcode == "1.2.840.10008.1.2.1"
    kinds = [r.kind for r in rules.transformations[0].element_rules]
    assert kinds == ["shift_datetime", "randomize_text", "randomize_uid", "remove"]


def test_research_pacs_config_applies_to_data(default_engine):
    from deidflow.engine import Engine
    from deidflow.testing.synthetic import make_corpus

    from ..conftest import TEST_KEY

    engine = Engine(load_rules(DATA / "research_pacs_config.yaml"), TEST_KEY)
    ct = make_corpus(1, 1, 1, with_sr=False).instances[0].dataset
    buffer = io.BytesIO()
    ct.save_as(buffer, enforce_file_format=True)
    out = pydicom.dcmread(io.BytesIO(engine.process(buffer.getvalue()).data))
    assert out.ClinicalTrialSponsorName == "Research sponsor"  # category Images via label CT Model A
    assert str(out.PatientName).count("^") == 1 and "Quixfeldt" not in str(out.PatientName)
    # An ExceptTagPatterns entry only exempts from that rule: the Basic profile underneath still
    # removes private elements unless a keep_tags rule (or retain_safe_private) says otherwise.
    assert 0x00191010 not in out
    assert out.PatientBirthDate and out.PatientBirthDate != ct.PatientBirthDate


def test_research_pacs_keys_we_cannot_honour_are_errors_with_lines():
    text = (DATA / "research_pacs_config.yaml").read_text()
    text = text.replace("    Transcode: 1.2.840.10008.1.2.1", "    Transcode: 1.2.840.10008.1.2.1\n    Watermark: yes")
    text = text.replace('      - Tag: "00120010"', '      - Tag: "00081110[0].00081155"')
    problems = _problems(text)
    assert any("cannot honour transformation 'Watermark'" in p for p in problems)
    assert any("AddTags into a sequence" in p for p in problems)
    assert all(p.startswith("r.yaml:") for p in problems)
