"""Permission profiles: the file's schema and line-numbered errors, assignments, expiry, scope."""

from __future__ import annotations

from datetime import date

import pytest
from deidflow.research.header import JsonHeader
from deidflow.research.profiles import Caller, load_profiles_text
from deidflow.rules import RulesError

GOOD = """\
version: 1
profiles:
  lung:
    description: Chest CT
    approval: IRB-1
    expires: 2027-06-30
    scope:
      labels: [ChestCT]
      filter: Modality StrEquals CT
      except: ImageType StrEquals "*LOCALIZER*"
    level: series
    actions: [search, view]
  us:
    description: Ultrasound
    scope: {filter: Modality StrEquals US}
    level: instance
    actions: [search]
assignments:
  - groups: [lung-team]
    profiles: [lung]
  - users: [alice]
    profiles: [us]
  - clients: [pipeline]
    profiles: [lung]
"""


class Scoped:
    def __init__(self, labels: set[str], **attributes: object):
        self.labels = frozenset(labels)
        tags = {"Modality": "00080060", "ImageType": "00080008"}
        self.header = JsonHeader(
            {tags[k]: {"vr": "CS", "Value": v if isinstance(v, list) else [v]} for k, v in attributes.items()}
        )


def test_a_valid_file_compiles_with_its_version_hash():
    profiles = load_profiles_text(GOOD, "p.yaml", known_labels=["ChestCT"])
    lung = profiles.profiles["lung"]
    assert lung.expires == date(2027, 6, 30) and lung.level == "series" and lung.approval == "IRB-1"
    assert lung.actions == {"search", "view"}
    assert len(profiles.version) == 64
    assert load_profiles_text(GOOD + "\n", "p.yaml").version != profiles.version, "the hash is of the exact bytes"


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (("level: series", "level: patient"), 11, "'patient' is not one of instance, series, study"),
        (("actions: [search, view]", "actions: [search, delete]"), 12, "'delete' is not one of"),
        (("      filter: Modality StrEquals CT", "      filter: Modality Is CT"), 9, "unknown operator"),
        (("      labels: [ChestCT]", "      labels: [ChestCt]"), 8, "no rule defines the label 'ChestCt'"),
        (("    approval: IRB-1", "    approval: IRB-1\n    owner: bob"), 6, "unknown key 'owner'"),
        (("    profiles: [us]", "    profiles: [uss]"), 22, "no profile named 'uss'"),
        (("expires: 2027-06-30", "expires: next year"), 6, "expires must be a date"),
        (("  - groups: [lung-team]", "  - groups: [lung team]"), 19, "does not match"),
    ],
)
def test_errors_name_the_line(edit, line, words):
    text = GOOD.replace(*edit)
    with pytest.raises(RulesError) as caught:
        load_profiles_text(text, "p.yaml", known_labels=["ChestCT"])
    assert any(p.startswith(f"p.yaml:{line}:") and words in p for p in caught.value.problems), caught.value.problems


def test_an_empty_scope_is_refused_rather_than_granting_everything():
    text = GOOD.replace("    scope: {filter: Modality StrEquals US}", "    scope: {}")
    with pytest.raises(RulesError, match=r"should be non-empty|does not have enough properties"):
        load_profiles_text(text, "p.yaml")


def test_assignments_are_cumulative_and_client_ones_are_for_machine_tokens_only():
    profiles = load_profiles_text(GOOD, "p.yaml")
    today = date(2026, 12, 2)
    both = Caller("s1", "alice", frozenset({"lung-team"}), "portal")
    assert [p.name for p in profiles.granted(both, today)] == ["lung", "us"]
    # A user who logs in through the pipeline's client does not get the client's profiles.
    assert [p.name for p in profiles.granted(Caller("s2", "bob", frozenset(), "pipeline"), today)] == []
    assert [p.name for p in profiles.granted(Caller("pipeline", "", frozenset(), "pipeline"), today)] == ["lung"]
    assert profiles.granted(Caller("s3", "carol"), today) == ()


def test_an_expired_profile_grants_nothing_but_is_still_listed():
    profiles = load_profiles_text(GOOD, "p.yaml")
    caller = Caller("s1", "x", frozenset({"lung-team"}))
    assert [p.name for p in profiles.granted(caller, date(2027, 6, 30))] == ["lung"], "the last day still counts"
    assert profiles.granted(caller, date(2027, 7, 1)) == ()
    assert [p.name for p in profiles.assigned(caller)] == ["lung"]


def test_scope_is_labels_and_filter_and_not_except():
    lung = load_profiles_text(GOOD, "p.yaml").profiles["lung"]
    assert lung.in_scope(Scoped({"ChestCT"}, Modality="CT", ImageType=["ORIGINAL", "AXIAL"]))
    assert not lung.in_scope(Scoped({"ChestCT"}, Modality="CT", ImageType=["ORIGINAL", "LOCALIZER"]))
    assert not lung.in_scope(Scoped({"Other"}, Modality="CT", ImageType=["AXIAL"])), "labels must match"
    assert not lung.in_scope(Scoped({"ChestCT"}, Modality="MR", ImageType=["AXIAL"])), "filter must match"
    us = load_profiles_text(GOOD, "p.yaml").profiles["us"]
    assert us.in_scope(Scoped(set(), Modality="US")), "no labels in the scope: any label"
