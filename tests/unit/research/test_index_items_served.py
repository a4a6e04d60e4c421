"""The research API serves an index item only if it names its own objects: the index step writes the
index but no research object (the bucket policy), so an item pointing elsewhere (another key, a
sidecar, a staging object) could otherwise choose what is served as the instance."""

from __future__ import annotations

import pytest
from deidflow.cloud.research_api import names_its_own_objects

STUDY, SERIES, SOP = "2.25.1", "2.25.2", "2.25.3"
KEY = f"studies/{STUDY}/series/{SERIES}/instances/{SOP}.dcm"
ITEM = {"study_instance_uid": STUDY, "series_instance_uid": SERIES, "sop_instance_uid": SOP, "research_key": KEY}


def test_an_item_naming_its_own_instance_and_sidecar_is_served():
    assert names_its_own_objects(ITEM)
    assert names_its_own_objects(
        {**ITEM, "dicom_json_sidecar": f"headers/studies/{STUDY}/series/{SERIES}/instances/{SOP}.json"}
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"research_key": f"headers/studies/{STUDY}/series/{SERIES}/instances/{SOP}.json"},
        {"research_key": f"staging/{KEY}"},
        {"research_key": f"studies/{STUDY}/series/{SERIES}/instances/2.25.4.dcm"},
        {"dicom_json_sidecar": f"studies/{STUDY}/series/{SERIES}/instances/{SOP}.json"},
        {"dicom_json_sidecar": "headers/studies/2.25.9/series/2.25.9/instances/2.25.9.json"},
        {"sop_instance_uid": "../../x"},
    ],
)
def test_an_item_pointing_elsewhere_is_not(changes):
    assert not names_its_own_objects({**ITEM, **changes})
