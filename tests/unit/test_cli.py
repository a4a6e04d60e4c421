"""The `deidflow` command as a user runs it."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from deidflow.cli import laptop_engine, main
from deidflow.rules import load_rules

from ..conftest import TEST_KEY
from .test_rules_language import DATA


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
    return path


@pytest.fixture
def drop_folder(corpus_dir, tmp_path: Path) -> Path:
    _, source = corpus_dir
    drop = tmp_path / "drop"
    shutil.copytree(source, drop)
    (drop / "empty.dcm").write_bytes(b"")
    (drop / "notes.txt").write_text("Zebulon Quixfeldt, MRN 123, call +44 20 7946 0000\n")
    first = next(drop.rglob("img0000.dcm"))
    (drop / "truncated.dcm").write_bytes(first.read_bytes()[:3000])
    return drop


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_drop_folder_with_junk_completes_with_junk_rejected(drop_folder, key_file, tmp_path, capsys):
    before = _digest(drop_folder)
    out = tmp_path / "research"
    code = main(["deid", str(drop_folder), str(out), "--key-file", str(key_file), "--jobs", "2", "--quiet"])
    assert code == 3
    report = [json.loads(line) for line in (tmp_path / "research.report.jsonl").read_text().splitlines()]
    by_name = {Path(r["input"]).name: r for r in report}
    assert by_name["empty.dcm"]["reason"] == "empty_file"
    assert by_name["notes.txt"]["reason"] == "not_dicom"
    assert by_name["truncated.dcm"]["reason"] == "truncated"
    deidentified = [r for r in report if r["status"] == "deidentified"]
    assert len(deidentified) == len(report) - 3 == 24
    assert all(Path(r["output"]).is_file() and "/studies/" in r["output"] for r in deidentified)
    assert len(list(out.rglob("*.dcm"))) == 24
    assert _digest(drop_folder) == before, "inputs are never modified or moved"
    printed = capsys.readouterr().out
    assert "27 inputs: 24 de-identified, 3 rejected" in printed
    assert "Quixfeldt" not in printed and "MRN" not in printed


def test_clean_folder_exits_zero_and_single_files_work(corpus_dir, key_file, tmp_path):
    corpus, source = corpus_dir
    one = next(iter(corpus.files.values()))
    assert main(["deid", str(source), str(tmp_path / "a"), "--key-file", str(key_file), "--quiet"]) == 0
    assert main(["deid", str(one), str(tmp_path / "b"), "--key-file", str(key_file), "--quiet"]) == 0
    assert len(list((tmp_path / "b").rglob("*.dcm"))) == 1


def test_key_is_created_on_first_use_and_said_so(corpus_dir, tmp_path, monkeypatch, capsys):
    _, source = corpus_dir
    monkeypatch.delenv("DEIDFLOW_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    one = next(source.rglob("*.dcm"))
    assert main(["deid", str(one), str(tmp_path / "o1"), "--quiet"]) == 0
    assert "created a new pseudonymisation key" in capsys.readouterr().err
    key = tmp_path / "config" / "deidflow" / "key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["deid", str(one), str(tmp_path / "o2"), "--quiet"]) == 0
    assert "created" not in capsys.readouterr().err
    names = [sorted(p.name for p in (tmp_path / o).rglob("*.dcm")) for o in ("o1", "o2")]
    assert names[0] == names[1], "the saved key gives the same pseudonyms next time"


def test_key_from_environment(corpus_dir, tmp_path, monkeypatch):
    _, source = corpus_dir
    monkeypatch.setenv("DEIDFLOW_KEY", "ab" * 32)
    assert main(["deid", str(next(source.rglob("*.dcm"))), str(tmp_path / "o"), "--quiet"]) == 0


def test_rules_check(tmp_path, capsys):
    assert main(["rules", "check", str(DATA / "research_pacs_config.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("deidflow_rules: 1\nprofile:\n  optoins: {}\n")
    assert main(["rules", "check", str(bad)]) == 2  # as deid says of the same file
    assert f"{bad}:3: unknown key 'optoins'" in capsys.readouterr().out


def test_rules_convert_prints_native_rules_that_load(tmp_path, capsys):
    from deidflow.rules import load_rules

    assert main(["rules", "convert", str(DATA / "research_pacs_config.yaml")]) == 0
    converted = tmp_path / "converted.yaml"
    converted.write_text(capsys.readouterr().out)
    assert len(load_rules(converted).transformations) == 3


def test_invalid_rules_stop_a_run_before_it_starts(corpus_dir, key_file, tmp_path, capsys):
    _, source = corpus_dir
    bad = tmp_path / "bad.yaml"
    bad.write_text("deidflow_rules: 2\n")
    assert main(["deid", str(source), str(tmp_path / "o"), "--rules", str(bad), "--key-file", str(key_file)]) == 2
    assert not (tmp_path / "o").exists()


def test_explain_prints_every_element_with_its_reason_and_no_values(corpus_dir, key_file, capsys):
    corpus, _ = corpus_dir
    path = next(iter(corpus.files.values()))
    assert main(["explain", str(path), "--key-file", str(key_file)]) == 0
    printed = capsys.readouterr().out
    assert "PatientName" in printed and "PS3.15 E.1-1 (0010,0010) Patient's Name [Basic Profile: Z]" in printed
    assert "private:ACME MEDICAL 1.0" in printed
    for value in corpus.planted_values():
        assert value not in printed


def test_console_script_is_installed():
    result = subprocess.run(
        [Path(sys.executable).parent / "deidflow", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("deidflow ")


def test_explain_shows_the_pixel_stage_and_every_marker_as_the_output_has_them(tmp_path, capsys):
    """A privacy officer reads explain before release: it must show what happens to the pixels
    (which detector, which boxes, which frames) and every element the pass adds."""
    sample = Path(__file__).resolve().parents[2] / "samples" / "drop" / "ultrasound" / "echo0000.dcm"
    key = tmp_path / "key"
    key.write_text(TEST_KEY.hex())
    assert main(["explain", str(sample), "--key-file", str(key)]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("(")}
    assert "redacted:" in rows["PixelData"] and "detector rapidocr" in rows["PixelData"]
    assert "frames scanned [0]" in rows["PixelData"]
    assert "set to NO" in rows["BurnedInAnnotation"]
    assert "removed" in rows["overlay"]
    markers = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")
    for name in (*markers, "LongitudinalTemporalInformationModified"):
        assert "de-identification marker" in rows[name], name

    out = pydicom.dcmread(io.BytesIO(laptop_engine(load_rules(), TEST_KEY).process(sample).data))
    assert out.BurnedInAnnotation == "NO" and out.PatientIdentityRemoved == "YES"
    assert not [tag for tag in out.keys() if 0x6000 <= tag >> 16 <= 0x601E]


def test_local_api_ohif_user_must_be_a_user_of_the_access_file(tmp_path, capsys):
    access = Path(__file__).resolve().parents[2] / "samples" / "research" / "access.yaml"
    arguments = ["local", "api", str(tmp_path), "--access", str(access), "--state", str(tmp_path / "state")]
    code = main([*arguments, "--ohif", "--ohif-user", "mallory"])
    assert code == 2
    assert "names no user 'mallory'" in capsys.readouterr().err


def test_object_ref_prints_the_reference_from_a_key_file_or_the_stacks_secret(key_file, capsys, monkeypatch):
    from deidflow.keys import parse_key
    from deidflow.pseudonym import object_ref

    expected = object_ref(parse_key(key_file.read_text()), "ingest", "incoming/Doe^Jane/img 1.dcm")
    assert main(["object-ref", "s3://ingest/incoming/Doe^Jane/img 1.dcm", "--key-file", str(key_file)]) == 0
    assert capsys.readouterr().out == expected + "\n"

    from moto import mock_aws

    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        import boto3

        boto3.client("secretsmanager").create_secret(Name="ref-key", SecretString=key_file.read_text())
        assert main(["object-ref", "s3://ingest/incoming/Doe^Jane/img 1.dcm", "--secret-id", "ref-key"]) == 0
        assert capsys.readouterr().out == expected + "\n"
        assert main(["object-ref", "s3://ingest/k", "--secret-id", "no-such-secret"]) == 1
    # Not an object location, no key source, or a key too short: usage errors.
    assert main(["object-ref", "ingest/k", "--key-file", str(key_file)]) == 2
    assert main(["object-ref", "s3://ingest/", "--key-file", str(key_file)]) == 2
    short = key_file.with_name("short")
    short.write_text("00112233")
    assert main(["object-ref", "s3://ingest/k", "--key-file", str(short)]) == 2
    with pytest.raises(SystemExit):
        main(["object-ref", "s3://ingest/k"])


def test_portal_config_is_written_from_the_stack_outputs(tmp_path, capsys):
    outputs = {
        "ResearchApiUrl": "https://abc.execute-api.eu-west-1.amazonaws.com",
        "DicomWebRoot": "https://abc.execute-api.eu-west-1.amazonaws.com/dicomweb",
        "AuthDomain": "https://deidflow.auth.eu-west-1.amazoncognito.com",
        "PortalClientId": "client123",
        "PortalUrl": "https://d1.cloudfront.net",
        "PipelineClientId": "machine",
    }
    described = {"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()]}]}
    (tmp_path / "outputs.json").write_text(json.dumps(described))
    assert main(["portal-config", str(tmp_path / "outputs.json")]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["api"] == outputs["ResearchApiUrl"] and config["dicomweb"] == outputs["DicomWebRoot"]
    # The portal's own client (never the machine client), returning to the portal's page.
    assert config["auth"] == {
        "mode": "cognito",
        "domain": outputs["AuthDomain"],
        "client_id": "client123",
        "redirect_uri": "https://d1.cloudfront.net/",
        "scopes": ["openid", "email", "profile"],
    }
    del described["Stacks"][0]["Outputs"][3]
    (tmp_path / "outputs.json").write_text(json.dumps(described))
    assert main(["portal-config", str(tmp_path / "outputs.json")]) == 2
    assert "PortalClientId" in capsys.readouterr().err
