"""The mapping table on the real workflow (moto): rows are created, never changed.

The writers' IAM grants PutItem only and the table's resource policy denies every update, delete
and batch write (tests/workflow/test_template_privilege.py); here, what the code does with that:
every put is conditional, a repeat of the same mapping is a no-op, and a different mapping for a
pseudonym already mapped (a corrected re-send) is a revision row beside the first, never over it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError
from deidflow.cloud.steps import MAPPING_DIGEST, REVISION_OF, record_mapping
from deidflow.testing.synthetic import make_corpus

from tests.conftest import dicom_bytes


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, seed=606)


def mapping_rows(workflow) -> list[dict]:
    return sorted(workflow.table_items(workflow.names.mapping_table), key=lambda r: r["sop_instance_uid"])


def test_the_same_object_processed_twice_leaves_one_unchanged_row(workflow, corpus):
    workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    messages = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
    batch = [workflow._pipe_record(m) for m in messages]

    assert workflow.execute(batch).status == "SUCCEEDED"
    [row] = mapping_rows(workflow)
    assert workflow.execute(batch).status == "SUCCEEDED"  # a redelivery

    assert mapping_rows(workflow) == [row]
    assert row["source_key"].endswith("p/img.dcm") and len(row[MAPPING_DIGEST]) == 64
    assert REVISION_OF not in row


def test_a_corrected_resend_adds_a_revision_and_keeps_the_first_row(workflow, corpus):
    original = corpus.instances[0].dataset
    workflow.drop("p/img.dcm", dicom_bytes(original))
    workflow.run_pipe()
    [first] = mapping_rows(workflow)

    corrected = original.copy()
    corrected.AccessionNumber = "CORRECTED-1"  # same SOP Instance UID, another original identifier
    workflow.drop("p/img.dcm", dicom_bytes(corrected))  # a new version of the same key
    reports = workflow.run_pipe()

    assert all(r.status == "SUCCEEDED" for r in reports)
    rows = mapping_rows(workflow)
    assert len(rows) == 2 and rows[0] == first, "the first row is never changed"
    revision = rows[1]
    assert revision["sop_instance_uid"].startswith(first["sop_instance_uid"] + "#")
    assert revision[REVISION_OF] == first["sop_instance_uid"]
    assert revision["original_accession_number"] == "CORRECTED-1"
    # What the honest broker runs to see every mapping a pseudonym has had.
    table = workflow.dynamodb.Table(workflow.names.mapping_table)
    listed = table.query(
        IndexName="by_revision_of", KeyConditionExpression=Key(REVISION_OF).eq(first["sop_instance_uid"])
    )
    assert [i["sop_instance_uid"] for i in listed["Items"]] == [revision["sop_instance_uid"]]


def test_record_mapping_never_puts_without_a_condition(workflow):
    """Every put the writer makes carries the create-only condition: a row written by anyone else
    (here, by hand) with other content survives, and the new content lands in a revision row."""
    table = workflow.dynamodb.Table(workflow.names.mapping_table)
    table.put_item(Item={"sop_instance_uid": "2.25.7", "patient_id": "P", MAPPING_DIGEST: "not-this-one"})
    puts: list[dict] = []

    class Recording:
        def put_item(self, **kwargs):
            puts.append(kwargs)
            return table.put_item(**kwargs)

    services = SimpleNamespace(settings=SimpleNamespace(mapping_table=table.name), table=lambda name: Recording())
    key = record_mapping(services, {"sop_instance_uid": "2.25.7", "patient_id": "Q"})  # type: ignore[arg-type]

    assert key.startswith("2.25.7#")
    assert [p["ConditionExpression"] for p in puts] == ["attribute_not_exists(#uid) OR #digest = :digest"] * 2
    assert table.get_item(Key={"sop_instance_uid": "2.25.7"})["Item"]["patient_id"] == "P"
    assert table.get_item(Key={"sop_instance_uid": key})["Item"]["patient_id"] == "Q"
    # The same revision again changes nothing and raises nothing.
    assert record_mapping(services, {"sop_instance_uid": "2.25.7", "patient_id": "Q"}) == key  # type: ignore[arg-type]
    assert len(workflow.table_items(workflow.names.mapping_table)) == 2
    with pytest.raises(ClientError):
        table.put_item(
            Item={"sop_instance_uid": key, "patient_id": "R"},
            ConditionExpression="attribute_not_exists(sop_instance_uid)",
        )
