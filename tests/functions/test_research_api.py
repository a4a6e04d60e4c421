"""The research API's authorization matrix: for fixed data and several profiles, exactly which UIDs
each endpoint shows (QIDO counts included), over the real handler behind the local JWT check.

Fixture data (de-identified through the real workflow, with a rules label decided on the original
header that the research copy no longer carries):

    study A  CT series A1: 2 images of the Oncology department and a LOCALIZER from Radiology; an SR
    study B  MR series: 2 images (Neuro); an SR series
    study C  CT series: 2 images (Cardiology)

Profiles: onc-series (label Oncology, series level, search+view), ct-no-localizer (CT except
localizers, instance level, search+view+download), mr-search (MR, study level, search only), and
an expired one that would grant everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from deidflow.local.api import LocalResearchApi
from deidflow.local.workflow import run_local
from deidflow.testing.synthetic import make_instance, make_patient, make_series, make_sr, make_study

from tests.conftest import REPO, TEST_KEY

RULES = """\
deidflow_rules: 1
labels:
  - name: Oncology
    filter: InstitutionalDepartmentName StrEquals Oncology
"""
PROFILES = """\
version: 1
profiles:
  onc-series:
    description: Oncology, whole series
    approval: IRB-ONC-1
    scope: {labels: [Oncology]}
    level: series
    actions: [search, view]
  ct-no-localizer:
    description: CT images, no localizers
    scope:
      filter: Modality StrEquals CT
      except: ImageType StrEquals "*LOCALIZER*"
    level: instance
    actions: [search, view, download]
  mr-search:
    description: MR studies, search only
    scope: {filter: Modality StrEquals MR}
    level: study
    actions: [search]
  expired:
    description: Everything, once
    expires: 2020-01-01
    scope: {labels: [ALL]}
    level: study
    actions: [search, view, download]
assignments:
  - groups: [onc]
    profiles: [onc-series]
  - users: [ctuser]
    profiles: [ct-no-localizer]
  - users: [mruser]
    profiles: [mr-search]
  - users: [old]
    profiles: [expired]
"""
ACCESS = """\
profiles: profiles.yaml
users:
  - {username: oncuser, groups: [onc]}
  - {username: ctuser}
  - {username: mruser}
  - {username: old}
  - {username: nobody}
"""


def _originals(folder: Path) -> None:
    rng = np.random.default_rng(12)
    study_a = make_study(make_patient(0), 0, rng)
    a1 = list(make_series(study_a, rng, 3))
    for instance in a1:
        instance.dataset.InstitutionalDepartmentName = "Oncology"
    # The localizer was acquired by another department: only the series level makes it visible.
    a1[2].dataset.InstitutionalDepartmentName = "Radiology"
    a1[2].dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    make_sr(study_a, rng, a1)
    study_b = make_study(make_patient(1), 0, rng)
    mr_series = "1.2.826.0.1.3680043.8.498.77"
    for n in (1, 2):
        make_instance(study_b, mr_series, 2, n, rng, modality="MR").dataset.InstitutionalDepartmentName = "Neuro"
    make_sr(study_b, rng, list(study_b.instances))
    study_c = make_study(make_patient(2), 0, rng)
    for instance in make_series(study_c, rng, 2):
        instance.dataset.InstitutionalDepartmentName = "Cardiology"
    for s, study in enumerate((study_a, study_b, study_c)):
        for n, instance in enumerate(study.instances):
            path = folder / f"study{s}" / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            instance.dataset.save_as(path, enforce_file_format=True)


class Fixture:
    """The research folder and what each of its instances is, read from the published files."""

    def __init__(self, research: Path):
        self.research = research
        self.sop: dict[str, dict[str, str]] = {}
        for path in research.glob("studies/*/series/*/instances/*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.sop[ds.SOPInstanceUID] = {
                "study": ds.StudyInstanceUID,
                "series": ds.SeriesInstanceUID,
                "modality": ds.Modality,
                "localizer": "LOCALIZER" in list(ds.get("ImageType", [])),
                "key": str(path.relative_to(research)),
            }
        by_modality = {m: {v["study"] for v in self.sop.values() if v["modality"] == m} for m in ("CT", "MR")}
        with_localizer = {v["study"] for v in self.sop.values() if v["localizer"]}
        (self.a,) = with_localizer
        (self.b,) = by_modality["MR"]
        (self.c,) = by_modality["CT"] - {self.a}

    def sops(self, study: str, modality: str | None = None, *, localizer: bool | None = None) -> set[str]:
        return {
            uid
            for uid, v in self.sop.items()
            if v["study"] == study
            and (modality is None or v["modality"] == modality)
            and (localizer is None or v["localizer"] == localizer)
        }

    def series_of(self, sops: set[str]) -> set[str]:
        return {self.sop[s]["series"] for s in sops}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("research-matrix")
    _originals(root / "drop")
    (root / "rules.yaml").write_text(RULES)
    run = run_local([root / "drop"], root / "research", TEST_KEY, project=REPO, rules_file=str(root / "rules.yaml"))
    assert run.failed_executions == 0 and len(run.research_files) == 9
    (root / "profiles.yaml").write_text(PROFILES)
    (root / "access.yaml").write_text(ACCESS)
    return Fixture(root / "research")


@pytest.fixture(scope="module")
def api(data: Fixture):
    with LocalResearchApi(data.research, data.research.parent / "access.yaml", project=REPO) as running:
        yield running


class Client:
    def __init__(self, api: LocalResearchApi, user: str | None):
        self.api = api
        self.session = requests.Session()
        if user:
            self.session.headers["Authorization"] = f"Bearer {api.token(user)}"

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.session.get(self.api.dicomweb_url + path, allow_redirects=False, **kwargs)  # type: ignore[arg-type]

    def uids(self, path: str, tag: str) -> set[str]:
        answer = self.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return {r[tag]["Value"][0] for r in answer.json()}


def _count(records: list[dict], tag: str) -> dict[str, int]:
    return {r["0020000D"]["Value"][0]: r[tag]["Value"][0] for r in records}


# --- the matrix ------------------------------------------------------------------------------


def test_series_level_shows_the_whole_series_of_a_labelled_instance_and_nothing_else(api, data):
    onc = Client(api, "oncuser")
    a1 = data.sops(data.a, "CT")  # all three, the localizer too: the series is the unit
    studies = onc.get("/studies").json()
    assert {r["0020000D"]["Value"][0] for r in studies} == {data.a}
    assert _count(studies, "00201208") == {data.a: 3} and _count(studies, "00201206") == {data.a: 1}
    assert studies[0]["00080061"]["Value"] == ["CT"], "the SR the caller cannot see is not a modality of the study"
    assert onc.uids(f"/studies/{data.a}/series", "0020000E") == data.series_of(a1)
    assert onc.uids(f"/studies/{data.a}/instances", "00080018") == a1
    assert onc.uids("/series", "0020000E") == data.series_of(a1)
    assert onc.uids("/instances", "00080018") == a1
    metadata = onc.get(f"/studies/{data.a}/metadata").json()
    assert {m["00080018"]["Value"][0] for m in metadata} == a1
    # The label decided the grant, but never reaches the research side.
    assert "Oncology" not in json.dumps(metadata) and "rule_labels" not in json.dumps(metadata)
    sr = data.sops(data.a, "SR").pop()
    assert onc.get(f"/studies/{data.a}/series/{data.sop[sr]['series']}/metadata").status_code == 404
    localizer = data.sops(data.a, localizer=True).pop()
    series = data.sop[localizer]["series"]
    assert onc.get(f"/studies/{data.a}/series/{series}/instances/{localizer}/frames/1").status_code == 200
    assert onc.get(f"/studies/{data.c}").status_code == 404
    assert onc.get(f"/studies/{data.a}/series/{series}/instances/{localizer}").status_code == 404, "no download"
    assert onc.uids("/studies?ModalitiesInStudy=SR", "0020000D") == set(), "a hidden modality does not match"


def test_instance_level_with_except_hides_the_localizer_everywhere(api, data):
    ct = Client(api, "ctuser")
    a_images = data.sops(data.a, "CT", localizer=False)
    c_images = data.sops(data.c, "CT")
    studies = ct.get("/studies").json()
    assert _count(studies, "00201208") == {data.a: 2, data.c: 2}
    assert ct.uids(f"/studies/{data.a}/instances", "00080018") == a_images
    localizer = data.sops(data.a, localizer=True).pop()
    where = f"/studies/{data.a}/series/{data.sop[localizer]['series']}/instances/{localizer}"
    for path in ("/metadata", "/frames/1", "", "/bulkdata/7FE00010"):
        assert ct.get(where + path).status_code == 404, path
    series_metadata = ct.get(f"/studies/{data.a}/series/{data.sop[localizer]['series']}/metadata").json()
    assert {m["00080018"]["Value"][0] for m in series_metadata} == a_images
    assert ct.uids("/instances", "00080018") == a_images | c_images


def test_download_is_a_just_signed_link_to_exactly_the_stored_object(api, data):
    ct = Client(api, "ctuser")
    sop = sorted(data.sops(data.c, "CT"))[0]
    path = f"/studies/{data.c}/series/{data.sop[sop]['series']}/instances/{sop}"
    answer = ct.get(path, headers={"Accept": "application/dicom"})
    assert answer.status_code == 303
    link = answer.headers["Location"]
    # Signature V4 (KMS-encrypted objects need it), valid for a minute.
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link and "X-Amz-Expires=60" in link
    assert requests.get(link).content == (data.research / data.sop[sop]["key"]).read_bytes()
    multipart = ct.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert multipart.status_code == 200 and multipart.headers["Content-Type"].startswith("multipart/related")
    assert (data.research / data.sop[sop]["key"]).read_bytes() in multipart.content


def test_study_level_search_only_counts_the_whole_study_but_shows_no_pixels(api, data):
    mr = Client(api, "mruser")
    studies = mr.get("/studies").json()
    assert _count(studies, "00201208") == {data.b: 3}
    assert sorted(studies[0]["00080061"]["Value"]) == ["MR", "SR"]
    assert mr.get(f"/studies/{data.b}/metadata").status_code == 404, "search does not grant view"
    sop = sorted(data.sops(data.b, "MR"))[0]
    assert mr.get(f"/studies/{data.b}/series/{data.sop[sop]['series']}/instances/{sop}/frames/1").status_code == 404


def test_no_profile_today_is_403_and_no_token_is_401(api, data):
    for user in ("old", "nobody"):
        answer = Client(api, user).get("/studies")
        assert answer.status_code == 403 and "permission profile" in answer.json()["error"]
    assert Client(api, None).get("/studies").status_code == 401
    forged = Client(api, "ctuser")
    token = forged.session.headers["Authorization"]
    forged.session.headers["Authorization"] = str(token)[:-4] + ("AAAA" if not str(token).endswith("AAAA") else "BBBB")
    assert forged.get("/studies").status_code == 401, "a token whose signature does not verify"
    me = requests.get(api.base_url + "/research/me", headers={"Authorization": f"Bearer {api.token('old')}"}).json()
    assert [(p["name"], p["active"]) for p in me["profiles"]] == [("expired", False)]


def test_an_unknown_uid_and_a_hidden_one_answer_alike(api, data):
    onc = Client(api, "oncuser")
    hidden = onc.get(f"/studies/{data.c}/metadata")
    unknown = onc.get("/studies/2.25.1234/metadata")
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.content == unknown.content


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=abc", "limit must be one non-negative integer"),
        ("Foo=1", "neither a DICOM keyword nor a tag"),
        ("PatientAge=040Y", "cannot be matched in a study query"),
        ("StudyDate=1-2-3", "a range is"),
        ("ReferencedStudySequence=x", "cannot be matched"),
    ],
)
def test_bad_query_parameters_are_400_with_a_reason(api, query, words):
    answer = Client(api, "ctuser").get(f"/studies?{query}")
    assert answer.status_code == 400 and words in answer.json()["error"]


def test_qido_matching_as_ohif_sends_it(api, data):
    ct = Client(api, "ctuser")
    a = ct.get(f"/studies?StudyInstanceUID={data.a}").json()
    patient = a[0]["00100020"]["Value"][0]
    assert ct.uids(f"/studies?00100020={patient}", "0020000D") == {data.a}
    both = f"/studies?StudyInstanceUID={data.a}\\{data.c}&limit=101&offset=0&fuzzymatching=false"
    assert ct.uids(both + "&includefield=00081030,00080060", "0020000D") == {data.a, data.c}
    first = ct.get("/studies?limit=1").json()
    second = ct.get("/studies?limit=1&offset=1").json()
    assert len(first) == len(second) == 1 and first[0]["0020000D"] != second[0]["0020000D"]
    assert "additional results" in ct.get("/studies?limit=1").headers.get("Warning", "")
    date = a[0]["00080020"]["Value"][0]
    assert data.a in ct.uids(f"/studies?StudyDate={date}-", "0020000D")
    assert data.a not in ct.uids(f"/studies?StudyDate=-{int(date) - 1}", "0020000D")
    assert ct.uids("/studies?ModalitiesInStudy=CT", "0020000D") == {data.a, data.c}
    everything = ct.get(f"/studies?StudyInstanceUID={data.a}&includefield=all").json()[0]
    assert "00100010" in everything and "7FE00010" not in everything


# --- audit -------------------------------------------------------------------------------------


def test_every_request_that_reached_the_handler_has_its_audit_record(api, data):
    before = _audit_items(api)
    ct = Client(api, "ctuser")
    ct.get("/studies")
    ct.get(f"/studies/{data.a}/metadata")
    Client(api, "nobody").get("/studies")
    ct.get("/studies?Foo=1")
    new = [i for i in _audit_items(api) if i["sk"] not in {b["sk"] for b in before}]
    assert sorted((i["action"], int(i["status"])) for i in new) == [
        ("qido.studies", 200),
        ("qido.studies", 400),
        ("qido.studies", 403),
        ("wado.metadata", 200),
    ]
    search = next(i for i in new if i["action"] == "qido.studies" and int(i["status"]) == 200)
    assert set(search["studies"]) == {data.a, data.c} and int(search["count"]) == 2
    assert search["username"] == "ctuser" and search["profiles"] == ["ct-no-localizer"]
    assert len(search["profiles_version"]) == 64
    text = json.dumps(new, default=str)
    for forbidden in ("Oncology", "Quixfeldt", "MRN"):
        assert forbidden not in text, "audit records hold UIDs and counts, never header values"
    segment = api.seal_audit(margin_seconds=0)
    assert segment is not None and segment.count >= 4


def _audit_items(api: LocalResearchApi) -> list[dict]:
    table = api.resource("dynamodb").Table(api.names.audit_table)
    return table.scan()["Items"]


def test_a_request_whose_audit_record_cannot_be_written_is_refused(api, data):
    from deidflow.cloud import research_api
    from deidflow.cloud.audit import AuditLog

    ct = Client(api, "ctuser")
    assert ct.get("/studies").status_code == 200
    running = research_api._api
    assert running is not None
    working = running.audit
    running.audit = AuditLog(api.resource("dynamodb").Table("no-such-audit-table"))
    try:
        answer = ct.get("/studies")
    finally:
        running.audit = working
    assert answer.status_code == 503
    assert data.a not in answer.text, "nothing of the answer is served"


def test_rendered_frames_and_thumbnails_follow_the_same_visibility(api, data):
    from PIL import Image

    ct = Client(api, "ctuser")
    sop = sorted(data.sops(data.c, "CT"))[0]
    where = f"/studies/{data.c}/series/{data.sop[sop]['series']}/instances/{sop}"
    jpeg = ct.get(where + "/rendered")
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    image = Image.open(__import__("io").BytesIO(jpeg.content))
    stored = pydicom.dcmread(data.research / data.sop[sop]["key"])
    assert image.size == (stored.Columns, stored.Rows)
    png = ct.get(where + "/frames/1/rendered", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    thumb = Image.open(__import__("io").BytesIO(ct.get(f"/studies/{data.c}/thumbnail").content))
    assert max(thumb.size) <= 128
    assert ct.get(where + "/rendered?viewport=abc").status_code == 400
    assert ct.get(where + "/frames/2/rendered").status_code == 404, "a single-frame image has no frame 2"
    localizer = data.sops(data.a, localizer=True).pop()
    hidden = f"/studies/{data.a}/series/{data.sop[localizer]['series']}/instances/{localizer}"
    assert ct.get(hidden + "/rendered").status_code == 404
    assert Client(api, "oncuser").get(where + "/thumbnail").status_code == 404


def test_every_route_writes_its_audit_record(api, data):
    ct = Client(api, "ctuser")
    sop = sorted(data.sops(data.c, "CT"))[0]
    series = data.sop[sop]["series"]
    instance = f"/studies/{data.c}/series/{series}/instances/{sop}"
    routes = {
        "/studies": "qido.studies",
        "/series": "qido.series",
        "/instances": "qido.instances",
        f"/studies/{data.c}/series": "qido.series",
        f"/studies/{data.c}/instances": "qido.instances",
        f"/studies/{data.c}/series/{series}/instances": "qido.instances",
        f"/studies/{data.c}/metadata": "wado.metadata",
        f"/studies/{data.c}/series/{series}/metadata": "wado.metadata",
        f"{instance}/metadata": "wado.metadata",
        f"{instance}/frames/1": "wado.frames",
        f"{instance}/bulkdata/7FE00010": "wado.bulkdata",
        f"{instance}/rendered": "wado.rendered",
        f"{instance}/thumbnail": "wado.thumbnail",
        instance: "wado.instance",
        f"/studies/{data.c}/series/{series}": "wado.instance",
        f"/studies/{data.c}": "wado.instance",
    }
    before = {i["sk"] for i in _audit_items(api)}
    statuses = {path: ct.get(path).status_code for path in routes}
    assert all(s in (200, 303) for s in statuses.values()), statuses
    me = requests.get(api.base_url + "/research/me", headers=ct.session.headers)
    assert me.status_code == 200
    new = [i for i in _audit_items(api) if i["sk"] not in before]
    assert sorted(i["action"] for i in new) == sorted([*routes.values(), "research.me"])
    frames = next(i for i in new if i["action"] == "wado.frames")
    assert frames["instance"] == sop and [int(f) for f in frames["frames"]] == [1] and int(frames["bytes"]) > 0


def test_a_failing_backend_is_a_500_that_quotes_nothing(api, data):
    import io

    from deidflow.cloud import research_api

    assert Client(api, "ctuser").get("/studies").status_code == 200  # the container is warm
    running = research_api._api
    assert running is not None
    working = running.index

    class Broken:
        def studies(self):
            raise RuntimeError(f"table said something about {data.a}")

    running.index = Broken()  # type: ignore[assignment]
    log = io.StringIO()
    handler = research_api.logger.registered_handler
    previous = handler.setStream(log)  # type: ignore[attr-defined]
    try:
        answer = Client(api, "ctuser").get("/studies")
    finally:
        running.index = working
        handler.setStream(previous)  # type: ignore[attr-defined]
    assert answer.status_code == 500 and data.a not in answer.text
    assert "RuntimeError" in log.getvalue() and "research_request_failed" in log.getvalue()
    assert data.a not in log.getvalue(), "no log line quotes what the backend said"


def test_profiles_explain_counts_the_same_on_the_folder_and_on_the_cloud_index(api, data, capsys, monkeypatch):
    from deidflow.cli import main

    profiles = str(data.research.parent / "profiles.yaml")
    rules = str(data.research.parent / "rules.yaml")
    assert main(["profiles", "explain", profiles, "--rules", rules, "--research", str(data.research)]) == 0
    folder = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[2:5] for line in folder.splitlines()[2:]}
    assert rows == {
        "onc-series": ["1", "1", "3"],  # the localizer counts: series level
        "ct-no-localizer": ["2", "2", "4"],
        "mr-search": ["1", "2", "3"],  # the MR series and the SR: study level
        "expired": ["3", "5", "9"],
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL", api.endpoint)
    n = api.names
    cloud = ["--index-table", n.index_table, "--catalog-table", n.catalog_table, "--research-bucket", n.research_bucket]
    assert main(["profiles", "explain", profiles, "--rules", rules, *cloud]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == folder.splitlines()[1:]
    assert (
        main(["profiles", "explain", profiles, "--rules", rules, "--research", str(data.research), "--user", "old"])
        == 0
    )
    together = capsys.readouterr().out.splitlines()[-1].split()
    assert together[-3:] == ["0", "0", "0"], "an expired profile grants nothing today"
    assert "Oncology" not in folder, "counts and names, never a label's meaning or a value"


def test_concurrent_requests_of_two_users_never_get_each_others_answers(api, data):
    from concurrent.futures import ThreadPoolExecutor

    clients = {"ctuser": Client(api, "ctuser"), "mruser": Client(api, "mruser")}
    # Each asks for a study the other may not see: a mixed-up request shows up as a wrong answer.
    asked = {"ctuser": data.c, "mruser": data.b}

    def ask(user: str) -> tuple[str, list[str]]:
        answer = clients[user].get(f"/studies?StudyInstanceUID={asked[user]}&includefield=all")
        return user, [r["0020000D"]["Value"][0] for r in answer.json()]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["ctuser", "mruser"] * 40))
    assert all(seen == [asked[user]] for user, seen in answers)


def test_a_viewer_reading_frames_reads_one_item_per_frame_and_a_series_only_to_widen(api, data):
    """A viewer asks once per frame: the decision reads the instance's own item when a profile
    covers it, its series (once per container) when only a series level widens to it."""
    from deidflow.cloud import research_api

    assert Client(api, "ctuser").get("/studies").status_code == 200
    running = research_api._api
    assert running is not None
    index = running.index
    groups: list[str] = []
    real = index._read_group

    def counted(gsi: str, attribute: str, uid: str):
        groups.append(gsi)
        return real(gsi, attribute, uid)

    index._groups_read.clear()
    index._read_group = counted  # type: ignore[method-assign]
    try:
        ct = Client(api, "ctuser")
        for sop in sorted(data.sops(data.a, "CT", localizer=False)) * 3:
            path = f"/studies/{data.a}/series/{data.sop[sop]['series']}/instances/{sop}/frames/1"
            assert ct.get(path).status_code == 200
        assert groups == [], "instances in scope themselves: no study or series read"
        onc = Client(api, "oncuser")
        localizer = data.sops(data.a, localizer=True).pop()
        path = f"/studies/{data.a}/series/{data.sop[localizer]['series']}/instances/{localizer}/frames/1"
        for _ in range(3):
            assert onc.get(path).status_code == 200
        assert groups == ["by_series"], "widened by its series, read once"
    finally:
        del index._read_group
