"""The jobs' decisions without AWS: what a request may ask, where an export may go, how large it
may be, and that a manifest reads back as written."""

from __future__ import annotations

import json
from datetime import date

import pytest
from deidflow.research.jobs import (
    DeliveredFile,
    ExportRequest,
    Job,
    JobRequestError,
    Selection,
    destination_for,
    export_limit,
    export_profiles,
    manifest_csv,
    read_manifest_csv,
)
from deidflow.research.profiles import Caller, load_profiles_text
from deidflow.research.visibility import Access
from deidflow.rules import RulesError

PROFILES = """\
version: 1
profiles:
  managed-only:
    description: exports to the managed bucket (none listed)
    scope: {filter: Modality StrEquals CT}
    level: instance
    actions: [search, export]
  team:
    description: exports to a team bucket
    scope: {filter: Modality StrEquals CT}
    level: instance
    actions: [export]
    export:
      max_instances: 500
      destinations: [{name: lung-team, bucket: lung-team-exports}]
  view-only:
    description: no export
    scope: {filter: Modality StrEquals MR}
    level: study
    actions: [search, view]
assignments:
  - users: [alice]
    profiles: [managed-only, team]
  - users: [bob]
    profiles: [view-only]
"""


def access(user: str) -> Access:
    return Access.of(Caller(sub=user + "-sub", username=user), load_profiles_text(PROFILES), date(2026, 12, 1))


def test_a_destination_must_be_registered_by_a_profile_and_a_team_bucket_by_the_deployment():
    alice = access("alice")
    assert destination_for(alice, "managed", []).managed
    assert destination_for(alice, "lung-team", ["lung-team-exports"]).bucket == "lung-team-exports"
    with pytest.raises(JobRequestError, match="not registered in this deployment"):
        destination_for(alice, "lung-team", [])
    with pytest.raises(JobRequestError, match="registers the destination 'elsewhere'"):
        destination_for(alice, "elsewhere", ["lung-team-exports"])
    with pytest.raises(JobRequestError, match="none of your profiles allows export"):
        destination_for(access("bob"), "managed", [])


def test_an_instance_goes_to_a_destination_only_through_profiles_that_register_it():
    alice = access("alice")
    assert [p.name for p in export_profiles(alice, "managed")] == ["managed-only"]
    assert [p.name for p in export_profiles(alice, "lung-team")] == ["team"]
    assert export_limit(export_profiles(alice, "managed")) == 10_000  # the default
    assert export_limit(export_profiles(alice, "lung-team")) == 500
    assert export_limit(()) == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "one of"),
        ({"cohort": "job-x"}, "cohort is the id"),
        ({"cohort": "job-" + "0" * 24, "uids": [{"study": "1.2"}]}, "one of"),
        ({"uids": [{"series": "1.2"}]}, "names its study"),
        ({"uids": [{"study": "1.2", "sop": "1.3"}]}, "with its series"),
        ({"uids": [{"study": "1.2; DROP"}]}, "digits and dots"),
        ({"uids": [{"study": "1.2"}], "formats": ["tiff"]}, "formats"),
        ({"uids": [{"study": "1.2"}], "transfer_syntax": "1.2.840.10008.1.2.4.50"}, "Explicit VR Little Endian"),
        ({"query": "Modality StrEquals"}, "cannot be read"),
        ({"qido": {"limit": "5"}}, "not a matching key"),
        ({"qido": {"NoSuchKeyword": "x"}}, "qido"),
    ],
)
def test_a_bad_export_request_says_what_is_wrong(body, problem):
    with pytest.raises(JobRequestError, match=problem):
        ExportRequest.parse(body)


def test_a_request_survives_the_round_trip_through_the_jobs_table():
    request = ExportRequest.parse(
        {"query": "Modality StrEquals CT", "qido": {"StudyDate": "2020-2021"}, "formats": ["png", "dicom", "png"]}
    )
    again = ExportRequest.from_json(request.to_json())
    assert again == request and again.formats == ("png", "dicom")
    job = Job.new("export", Caller("s", "alice", frozenset({"g"})), access("alice"), request.to_json(), "n" * 500)
    back = Job.from_item(job.to_item())
    assert back.request == job.request and back.caller == job.caller and len(back.name) == 120
    assert "token" not in str(job.to_item()).lower()


def test_selection_keys_match_at_their_own_level_and_attributes_are_checked():
    selection = Selection.parse({"qido": {"Modality": "CT", "StudyDate": "20200101-"}, "attributes": ["Rows"]})
    assert {q.level for q in selection.qido} == {"series", "study"}
    assert selection.attributes == (0x00280010,)
    with pytest.raises(JobRequestError, match="neither a DICOM keyword"):
        Selection.parse({"attributes": ["Rowz"]})


def test_a_manifest_reads_back_as_written():
    files = [
        DeliveredFile(f"studies/1/series/2/instances/{n}.dcm", n * 10, "ab" * 32, "dicom", "1", "2", str(n))
        for n in (3, 1, 2)
    ]
    data = manifest_csv(files)
    assert data.splitlines()[0] == b"path,bytes,sha256,format,study,series,sop"
    assert read_manifest_csv(data) == sorted(files, key=lambda f: f.path)


def test_profile_export_settings_are_checked():
    with pytest.raises(RulesError, match="export settings, but 'export' is not among its actions"):
        load_profiles_text(PROFILES.replace("actions: [export]", "actions: [search]"))
    with pytest.raises(RulesError):
        load_profiles_text(PROFILES.replace("bucket: lung-team-exports", "bucket: Not_A_Bucket"))
    with pytest.raises(RulesError):
        load_profiles_text(PROFILES.replace("max_instances: 500", "max_instances: 0"))


def test_a_failure_says_what_to_change_for_our_own_errors_and_to_resume_for_anything_else():
    from deidflow.research.jobs import failure_reason

    limit = json.dumps({"errorType": "JobLimitError", "errorMessage": "12 instances: above the limit of 10"})
    assert failure_reason("JobLimitError", limit) == "12 instances: above the limit of 10"
    # Anything else: the cause may quote an object key or a UID, so only the error's name is told.
    leaky = json.dumps({"errorMessage": "NoSuchKey: studies/1.2.3/series/4.5/instances/6.7.dcm"})
    for error in ("States.TaskFailed", "ConnectionError", "States.ExceedToleratedFailureThreshold"):
        reason = failure_reason(error, leaky)
        assert error in reason and "resume" in reason and "1.2.3" not in reason
    assert "1.2.3" not in failure_reason("JobRequestError", "not json: studies/1.2.3")
    assert "out of time" in failure_reason("States.Timeout", leaky, "TIMED_OUT")
    assert "operator" in failure_reason("", "", "ABORTED")
    assert len(failure_reason("GapError", json.dumps({"errorMessage": "x" * 2000}))) == 500
