"""The research API at the AWS edge: the HTTP API's events in, DICOMweb answers out, each audited.

API Gateway's JWT authorizer has verified the token before this runs; its claims arrive in
`requestContext.authorizer.jwt.claims`, array claims flattened to one bracketed string
("[group-a group-b]"). The routes are thin: build the caller's access, call `ResearchService`,
write the audit record (a request whose record cannot be written fails with 503), answer.

Logs carry the route, the status and the request id; never a query value, a UID list or a header.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import CORSConfig

from ..index import default_sidecar_key
from ..research.audit import AuditRecord, format_ts
from ..research.header import InstanceRecord
from ..research.jobs import Job, JobRequestError, Selection, available_destinations
from ..research.profiles import Caller, ProfilesFile, load_profiles_text
from ..research.service import DICOM_JSON, Answer, ApiError, ResearchService, me
from ..research.visibility import Access
from ..storage import research_key
from .audit import AuditLog
from .research_jobs import JobsApi, JobStore
from .services import environment_reader

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow-research-api"))

# How long a container trusts its copy of the profiles file before checking the object's ETag.
PROFILES_RECHECK_SECONDS = 30.0


@dataclass(frozen=True)
class ApiSettings:
    research_bucket: str
    index_table: str
    catalog_table: str
    audit_table: str
    profiles_bucket: str
    profiles_key: str
    presign_seconds: int
    jobs_table: str
    exports_bucket: str
    export_buckets: tuple[str, ...]
    cohort_state_machine: str
    export_state_machine: str
    auditor_group: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        need = environment_reader(env)
        return cls(
            research_bucket=need("RESEARCH_BUCKET"),
            index_table=need("INDEX_TABLE"),
            catalog_table=need("CATALOG_TABLE"),
            audit_table=need("AUDIT_TABLE"),
            profiles_bucket=need("PROFILES_BUCKET"),
            profiles_key=need("PROFILES_KEY"),
            presign_seconds=int(need("PRESIGN_SECONDS")),
            jobs_table=need("JOBS_TABLE"),
            exports_bucket=need("EXPORTS_BUCKET"),
            export_buckets=tuple(b for b in (env or os.environ).get("EXPORT_BUCKETS", "").split(",") if b.strip()),
            cohort_state_machine=need("COHORT_STATE_MACHINE_ARN"),
            export_state_machine=need("EXPORT_STATE_MACHINE_ARN"),
            auditor_group=need("AUDITOR_GROUP"),
        )


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """The caller from a verified token's claims (access or ID token, user or machine)."""
    groups = claims.get("cognito:groups") or ()
    if isinstance(groups, str):
        # The HTTP API hands array claims over as "[a b]"; group names have no spaces.
        groups = groups.strip().removeprefix("[").removesuffix("]").split()
    username = claims.get("username") or claims.get("cognito:username") or ""
    client_id = claims.get("client_id") or claims.get("aud") or ""
    return Caller(
        sub=str(claims.get("sub", "")),
        username=str(username),
        groups=frozenset(str(g) for g in groups),
        client_id=str(client_id),
    )


# How long a container reuses what it read of a study and of the catalog. A viewer asks for the
# same study once per frame (hundreds of times for a CT series), and each decision needs all of the
# study's instances; the profiles are still applied afresh to every request. The price: a
# re-published or corrected instance may be seen as it was for this long.
INDEX_CACHE_SECONDS = 60.0
INDEX_CACHE_INSTANCES = 50_000  # records held per container (~50 KB each at most, parsed)


def names_its_own_objects(item: Mapping[str, Any]) -> bool:
    """Whether an index item points at its own instance (the key Publish writes for its UIDs) and at
    a sidecar under headers/. The index step writes the index but may not write research objects
    (the bucket policy); an item naming another key, a sidecar or a staging object, would let it
    choose what is served as the instance, so such an item is not served."""
    try:
        expected = research_key(
            str(item.get("study_instance_uid", "")),
            str(item.get("series_instance_uid", "")),
            str(item.get("sop_instance_uid", "")),
        )
    except ValueError:
        return False
    sidecar = item.get("dicom_json_sidecar")
    return item.get("research_key") == expected and (sidecar is None or sidecar == default_sidecar_key(expected))


class DynamoResearchIndex:
    """The index and catalog tables (and header sidecars in the research bucket), read through a
    short-lived per-container cache."""

    def __init__(
        self,
        dynamodb: Any,
        s3: Any,
        *,
        index_table: str,
        catalog_table: str,
        research_bucket: str,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = INDEX_CACHE_SECONDS,
    ):
        self._dynamodb = dynamodb
        self._index = dynamodb.Table(index_table)
        self._catalog = dynamodb.Table(catalog_table)
        self._s3 = s3
        self._index_name = index_table
        self._bucket = research_bucket
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._catalog_read: tuple[float, list[tuple[str, Mapping[str, Any]]]] | None = None
        # ("study" | "series", UID) -> (when read, its instances)
        self._groups_read: OrderedDict[tuple[str, str], tuple[float, list[InstanceRecord]]] = OrderedDict()

    def studies(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        now = self._clock()
        if self._catalog_read is None or now - self._catalog_read[0] >= self._cache_seconds:
            self._catalog_read = (now, self._scan_catalog())
        return list(self._catalog_read[1])

    def study_instances(self, study_uid: str) -> list[InstanceRecord]:
        return self._group(("study", study_uid), lambda: self._read_group("by_study", "study_instance_uid", study_uid))

    def series_instances(self, study_uid: str, series_uid: str) -> list[InstanceRecord]:
        cached = self._fresh(("study", study_uid))
        if cached is not None:
            return [r for r in cached if r.series_instance_uid == series_uid]
        records = self._group(
            ("series", series_uid), lambda: self._read_group("by_series", "series_instance_uid", series_uid)
        )
        return [r for r in records if r.study_instance_uid == study_uid]

    def instance(self, sop_uid: str) -> InstanceRecord | None:
        for (_, _), (_, records) in self._groups_read.items():
            for record in records:
                if record.sop_instance_uid == sop_uid:
                    return record
        item = self._index.get_item(Key={"sop_instance_uid": sop_uid}).get("Item")
        return None if item is None or not names_its_own_objects(item) else self._record(item)

    def _fresh(self, key: tuple[str, str]) -> list[InstanceRecord] | None:
        cached = self._groups_read.get(key)
        if cached is None or self._clock() - cached[0] >= self._cache_seconds:
            return None
        self._groups_read.move_to_end(key)
        return cached[1]

    def _group(self, key: tuple[str, str], read: Callable[[], list[InstanceRecord]]) -> list[InstanceRecord]:
        cached = self._fresh(key)
        if cached is not None:
            return list(cached)
        records = read()
        self._groups_read[key] = (self._clock(), records)
        held = sum(len(r) for _, r in self._groups_read.values())
        while held > INDEX_CACHE_INSTANCES and len(self._groups_read) > 1:
            held -= len(self._groups_read.popitem(last=False)[1][1])
        return list(records)

    def _scan_catalog(self) -> list[tuple[str, Mapping[str, Any]]]:
        # A scan of the study items: fine for the catalogs of tens of thousands of studies this
        # phase serves (docs/research-api.md); a grants table replaces it when archives grow.
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "FilterExpression": "#item = :study",
            "ExpressionAttributeNames": {"#item": "item"},
            "ExpressionAttributeValues": {":study": "study"},
        }
        while True:
            page = self._catalog.scan(**kwargs)
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        items.sort(key=lambda i: (str(i.get("study_date", "")), str(i["study_instance_uid"])), reverse=True)
        return [(str(i["study_instance_uid"]), json.loads(i.get("summary") or "{}")) for i in items]

    def _read_group(self, index: str, attribute: str, uid: str) -> list[InstanceRecord]:
        """The instances a GSI lists under `uid` (their keys, then the items), in index order."""
        keys: list[str] = []
        kwargs: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": f"{attribute} = :u",
            "ExpressionAttributeValues": {":u": uid},
            "ProjectionExpression": "sop_instance_uid",
        }
        while True:
            page = self._index.query(**kwargs)
            keys += [str(i["sop_instance_uid"]) for i in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        records = [self._record(item) for item in self._get_items(keys) if names_its_own_objects(item)]
        # A GSI may briefly list an instance whose item moved elsewhere (a corrected UID).
        records = [r for r in records if getattr(r, attribute) == uid]
        records.sort(key=lambda r: r.sort_key)
        return records

    def _get_items(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        name = self._index_name
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {name: {"Keys": [{"sop_instance_uid": k} for k in keys[start : start + 100]]}}
            for attempt in range(8):
                answer = self._dynamodb.batch_get_item(RequestItems=request)
                items += answer.get("Responses", {}).get(name, [])
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))
            if request:
                raise RuntimeError("the index did not return every instance of the study")
        return items

    def _record(self, item: Mapping[str, Any]) -> InstanceRecord:
        if not names_its_own_objects(item):
            raise LookupError("the index item names objects other than its own")
        sidecar = item.get("dicom_json_sidecar")
        text = None
        if sidecar and "dicom_json" not in item:
            text = self._s3.get_object(Bucket=self._bucket, Key=sidecar)["Body"].read().decode()
        return InstanceRecord.from_item(item, text)


class S3Store:
    def __init__(self, s3: Any, bucket: str):
        self._s3 = s3
        self._bucket = bucket

    def read(self, key: str) -> bytes:
        return bytes(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [
            bytes(self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={o}-{o + n - 1}")["Body"].read())
            for o, n in ranges
        ]

    def presigned_url(self, key: str, seconds: int) -> str:
        return str(
            self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": key, "ResponseContentType": "application/dicom"},
                ExpiresIn=seconds,
            )
        )


@dataclass
class ProfilesSource:
    """The profiles file from S3, re-read when its ETag changes (checked every 30 s at most)."""

    s3: Any
    bucket: str
    key: str
    clock: Callable[[], float] = time.monotonic
    recheck_seconds: float = PROFILES_RECHECK_SECONDS
    _profiles: ProfilesFile | None = field(default=None, init=False)
    _etag: str = field(default="", init=False)
    _checked: float = field(default=float("-inf"), init=False)

    def current(self) -> ProfilesFile:
        now = self.clock()
        if self._profiles is None or now - self._checked >= self.recheck_seconds:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.key)
            if self._profiles is None or head["ETag"] != self._etag:
                body = self.s3.get_object(Bucket=self.bucket, Key=self.key)
                self._profiles = load_profiles_text(body["Body"].read().decode("utf-8"), f"s3 {self.key}")
                self._etag = str(body["ETag"])
            self._checked = now
        return self._profiles


@dataclass
class ResearchApi:
    """One container's API: clients, the profiles file, the audit log, and the routes."""

    settings: ApiSettings
    session: Any = None
    today: Callable[[], datetime] = lambda: datetime.now(UTC)
    app: APIGatewayHttpResolver = field(init=False)

    def __post_init__(self) -> None:
        import boto3
        from botocore.config import Config

        session = self.session or boto3.session.Session()
        # Signature V4: presigned links to KMS-encrypted objects need it (V2 links are refused).
        s3 = session.client("s3", config=Config(signature_version="s3v4"))
        dynamodb = session.resource("dynamodb")
        self.index = DynamoResearchIndex(
            dynamodb,
            s3,
            index_table=self.settings.index_table,
            catalog_table=self.settings.catalog_table,
            research_bucket=self.settings.research_bucket,
        )
        self.store = S3Store(s3, self.settings.research_bucket)
        self.profiles = ProfilesSource(s3, self.settings.profiles_bucket, self.settings.profiles_key)
        self.audit = AuditLog(dynamodb.Table(self.settings.audit_table))
        self.audit_table = dynamodb.Table(self.settings.audit_table)
        self.jobs = JobsApi(
            JobStore(dynamodb.Table(self.settings.jobs_table)),
            session.client("stepfunctions"),
            s3,
            self.settings.exports_bucket,
            self.settings.export_buckets,
            self.settings.cohort_state_machine,
            self.settings.export_state_machine,
        )
        # CORS preflight is answered by the HTTP API itself; these headers serve the local API.
        self.app = APIGatewayHttpResolver(
            cors=CORSConfig(allow_origin="*", allow_headers=["Authorization"]),
            # Bodies are made here (gzip-compressed JSON included): never serialized again.
            serializer=_already_serialized,
        )
        self._routes()

    def handle(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        return self.app.resolve(dict(event), context)

    # -- routes ---------------------------------------------------------------------------------

    def _routes(self) -> None:
        app = self.app
        base = "/dicomweb"

        @app.exception_handler(Exception)
        def failed(exc: Exception) -> Response:
            # The type only: a traceback or a botocore message can quote keys and query values.
            logger.error("research_request_failed", extra={"error": type(exc).__name__})
            return _error(500, "the request failed; it was not served")

        @app.get(f"{base}/studies")
        def studies() -> Response:
            return self._answer("qido.studies", lambda s, a: s.search(a, "study", self._params()))

        @app.get(f"{base}/series")
        def all_series() -> Response:
            return self._answer("qido.series", lambda s, a: s.search(a, "series", self._params()))

        @app.get(f"{base}/instances")
        def all_instances() -> Response:
            return self._answer("qido.instances", lambda s, a: s.search(a, "instance", self._params()))

        @app.get(f"{base}/studies/<study>/series")
        def study_series(study: str) -> Response:
            return self._answer("qido.series", lambda s, a: s.search(a, "series", self._params(), study=study))

        @app.get(f"{base}/studies/<study>/instances")
        def study_instances(study: str) -> Response:
            return self._answer("qido.instances", lambda s, a: s.search(a, "instance", self._params(), study=study))

        @app.get(f"{base}/studies/<study>/series/<series>/instances")
        def series_instances(study: str, series: str) -> Response:
            return self._answer(
                "qido.instances", lambda s, a: s.search(a, "instance", self._params(), study=study, series=series)
            )

        @app.get(f"{base}/studies/<study>/metadata")
        def study_metadata(study: str) -> Response:
            return self._answer("wado.metadata", lambda s, a: s.metadata(a, study))

        @app.get(f"{base}/studies/<study>/series/<series>/metadata")
        def series_metadata(study: str, series: str) -> Response:
            return self._answer("wado.metadata", lambda s, a: s.metadata(a, study, series))

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/metadata")
        def instance_metadata(study: str, series: str, sop: str) -> Response:
            return self._answer("wado.metadata", lambda s, a: s.metadata(a, study, series, sop))

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/frames/<frames>")
        def frames(study: str, series: str, sop: str, frames: str) -> Response:
            return self._answer(
                "wado.frames", lambda s, a: s.frames(a, study, series, sop, frames, self._header("accept"))
            )

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/bulkdata/<path>")
        def bulkdata(study: str, series: str, sop: str, path: str) -> Response:
            return self._answer(
                "wado.bulkdata", lambda s, a: s.bulkdata(a, study, series, sop, path, self._header("accept"))
            )

        def rendered(study: str, series: str | None, sop: str | None, frame: str | None, thumb: bool) -> Response:
            return self._answer(
                "wado.thumbnail" if thumb else "wado.rendered",
                lambda s, a: s.rendered(
                    a, study, series, sop, frame, self._params(), self._header("accept"), thumbnail=thumb
                ),
            )

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/rendered")
        def instance_rendered(study: str, series: str, sop: str) -> Response:
            return rendered(study, series, sop, None, False)

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered")
        def frame_rendered(study: str, series: str, sop: str, frames: str) -> Response:
            return rendered(study, series, sop, frames, False)

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>/thumbnail")
        def instance_thumbnail(study: str, series: str, sop: str) -> Response:
            return rendered(study, series, sop, None, True)

        @app.get(f"{base}/studies/<study>/series/<series>/thumbnail")
        def series_thumbnail(study: str, series: str) -> Response:
            return rendered(study, series, None, None, True)

        @app.get(f"{base}/studies/<study>/thumbnail")
        def study_thumbnail(study: str) -> Response:
            return rendered(study, None, None, None, True)

        @app.get(f"{base}/studies/<study>")
        def retrieve_study(study: str) -> Response:
            return self._answer("wado.instance", lambda s, a: s.retrieve(a, study, None, None, self._header("accept")))

        @app.get(f"{base}/studies/<study>/series/<series>")
        def retrieve_series(study: str, series: str) -> Response:
            return self._answer(
                "wado.instance", lambda s, a: s.retrieve(a, study, series, None, self._header("accept"))
            )

        @app.get(f"{base}/studies/<study>/series/<series>/instances/<sop>")
        def retrieve_instance(study: str, series: str, sop: str) -> Response:
            return self._answer("wado.instance", lambda s, a: s.retrieve(a, study, series, sop, self._header("accept")))

        @app.get("/research/me")
        def my_permissions() -> Response:
            return self._answer("research.me", None)

        @app.post("/research/search")
        def quick_search() -> Response:
            def run(s: ResearchService, a: Access) -> Answer:
                body = self._body()
                limit = _bounded(body.get("limit"), default=25, upper=100, name="limit")
                return s.quick_search(a, _selection(body), limit, QUICK_SEARCH_STUDIES)

            return self._answer("research.search", run)

        @app.post("/research/cohorts")
        def start_cohort() -> Response:
            return self._answer(
                "job.cohort", lambda s, a: _job_answer(self.jobs.create("cohort", a, self._body()), 202)
            )

        @app.post("/research/exports")
        def start_export() -> Response:
            return self._answer(
                "job.export", lambda s, a: _job_answer(self.jobs.create("export", a, self._body()), 202)
            )

        @app.get("/research/jobs")
        def my_jobs() -> Response:
            return self._answer(
                "job.list", lambda s, a: _json_answer({"jobs": [j.public() for j in self.jobs.owned(a)]})
            )

        @app.get("/research/jobs/<job_id>")
        def my_job(job_id: str) -> Response:
            return self._answer("job.status", lambda s, a: _job_answer(self.jobs.get(a, job_id)))

        @app.post("/research/jobs/<job_id>/resume")
        def resume_job(job_id: str) -> Response:
            return self._answer("job.resume", lambda s, a: _job_answer(self.jobs.resume(a, job_id), 202))

        @app.get("/research/jobs/<job_id>/manifest")
        def job_manifest(job_id: str) -> Response:
            def run(s: ResearchService, a: Access) -> Answer:
                params = self._params()
                offset = _bounded((params.get("offset") or ["0"])[0], default=0, upper=10**9, name="offset")
                limit = _bounded((params.get("limit") or ["1000"])[0], default=1000, upper=1000, name="limit")
                return _json_answer(self.jobs.manifest(a, job_id, offset, limit))

            return self._answer("job.manifest", run)

        @app.get("/research/jobs/<job_id>/file")
        def job_file(job_id: str) -> Response:
            def run(s: ResearchService, a: Access) -> Answer:
                path = (self._params().get("path") or [""])[0]
                url, listed = self.jobs.file_url(a, job_id, path, self.settings.presign_seconds)
                # A browser's fetch cannot follow a redirect to another origin and keep the
                # answer: a client that asks for JSON gets the link in the body instead.
                if "application/json" in self._header("accept"):
                    answer = _json_answer({"url": url, "expires_in": self.settings.presign_seconds})
                else:
                    answer = Answer(303, b"", "text/plain", headers={"Location": url})
                answer.count = 1
                answer.studies = (listed.study,) if listed.study else ()
                answer.series = (listed.series,) if listed.series else ()
                answer.instance = listed.sop or None
                answer.query = f"job={job_id}&path={path}"
                return answer

            return self._answer("export.download", run)

        @app.get("/research/audit")
        def audit_trail() -> Response:
            return self._answer("audit.query", self._audit_trail, require_profile=False)

    # -- one request ----------------------------------------------------------------------------

    def _params(self) -> dict[str, list[str]]:
        event = self.app.current_event
        raw = event.raw_event.get("rawQueryString") or ""
        from urllib.parse import parse_qs

        return {k: v for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _header(self, name: str) -> str:
        headers = self.app.current_event.headers or {}
        return str(next((v for k, v in headers.items() if k.lower() == name), ""))

    def _base_url(self) -> str:
        event = self.app.current_event.raw_event
        # The domain the HTTP API was reached at (its own or a custom one); not the Host header,
        # which some clients (dicomweb-client) send without the port.
        host = event.get("requestContext", {}).get("domainName") or self._header("host")
        proto = self._header("x-forwarded-proto") or "https"
        stage = event.get("requestContext", {}).get("stage", "$default")
        prefix = "" if stage in ("$default", "") else f"/{stage}"
        return f"{proto}://{host}{prefix}/dicomweb"

    def _answer(
        self,
        action: str,
        operation: Callable[[ResearchService, Access], Answer] | None,
        *,
        require_profile: bool = True,
    ) -> Response:
        event = self.app.current_event.raw_event
        context = event.get("requestContext", {})
        claims = (context.get("authorizer") or {}).get("jwt", {}).get("claims") or {}
        started = datetime.now(UTC)
        if not claims.get("sub"):
            # Only reachable without API Gateway's authorizer in front (the local API has one too).
            return _error(401, "a bearer token is required")
        caller = caller_from_claims(claims)
        profiles = self.profiles.current()
        today = self.today().date()
        access = Access.of(caller, profiles, today)
        service = ResearchService(self.index, self.store, self._base_url(), self.settings.presign_seconds)
        try:
            if operation is None:
                mine = me(access, profiles, today)
                mine["destinations"] = available_destinations(access)
                mine["auditor"] = self.settings.auditor_group in caller.groups
                body = json.dumps(mine, separators=(",", ":")).encode("utf-8")
                answer = Answer(200, body, "application/json")
            elif require_profile and not access.profiles:
                raise ApiError(403, "no permission profile grants you anything today: ask your data manager")
            else:
                answer = fitted(operation(service, access), self._header("accept-encoding"))
        except ApiError as exc:
            answer = Answer(exc.status, json.dumps({"error": exc.reason}).encode("utf-8"), "application/json")
        record = AuditRecord(
            ts=format_ts(started),
            request_id=str(context.get("requestId") or ""),
            sub=caller.sub,
            username=caller.username,
            groups=tuple(sorted(caller.groups)),
            client_id=caller.client_id,
            source_ip=str((context.get("http") or {}).get("sourceIp", "")),
            user_agent=str((context.get("http") or {}).get("userAgent", ""))[:512],
            profiles=access.names,
            profiles_version=profiles.version,
            action=action,
            query=answer.query or self._normalized_query(),
            studies=answer.studies,
            series=answer.series,
            instance=answer.instance,
            frames=answer.frames,
            count=answer.count,
            bytes=len(answer.body),
            status=answer.status,
        )
        try:
            self.audit.write(record)
        except Exception as exc:  # noqa: BLE001 - any failure to record the access fails the access
            # The error's type only: a traceback could quote the record (UIDs, the query).
            logger.error(
                "audit_write_failed",
                extra={"action": action, "request_id": record.request_id, "error": type(exc).__name__},
            )
            return _error(503, "the access could not be recorded, so it was not served: try again")
        logger.info("research_request", extra={"action": action, "status": answer.status, "count": answer.count})
        headers = dict(answer.headers)
        # powertools serializes a JSON content type's body unless it is already text.
        compressed = headers.get("Content-Encoding") == "gzip"
        payload: str | bytes = (
            answer.body.decode("utf-8") if "json" in answer.content_type and not compressed else answer.body
        )
        return Response(answer.status, answer.content_type, payload, headers=headers)

    def _body(self) -> dict[str, Any]:
        raw = self.app.current_event.raw_event.get("body") or ""
        if self.app.current_event.raw_event.get("isBase64Encoded"):
            import base64

            raw = base64.b64decode(raw).decode("utf-8", "replace")
        if len(raw) > MAX_REQUEST_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_REQUEST_BYTES} bytes")
        try:
            body = json.loads(raw or "{}")
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body is a JSON object")
        return body

    def _audit_trail(self, service: ResearchService, access: Access) -> Answer:
        """The audit trail, for the auditor group only: records of a day range, by user or study."""
        from .audit import days_between, query_records

        if self.settings.auditor_group not in access.caller.groups:
            raise ApiError(403, "the audit trail is for the auditor group")
        params = self._params()
        today = self.today().date().isoformat()
        since = (params.get("since") or [today])[0]
        until = (params.get("until") or [since])[0]
        try:
            days = days_between(since, until)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if len(days) > 31:
            raise ApiError(400, "ask for at most 31 days at a time")
        sub = (params.get("sub") or [""])[0] or None
        study = (params.get("study") or [""])[0] or None
        records = query_records(self.audit_table, days=days, sub=sub, study=study)
        shown = [r.to_dict() for r in records[-1000:]]
        return _json_answer({"records": shown, "total": len(records), "days": [days[0], days[-1]]})

    def _normalized_query(self) -> str:
        params = self._params()
        return "&".join(f"{k}={v}" for k in sorted(params) for v in params[k])


# Lambda returns at most 6 MB of response JSON; binary bodies travel base64-encoded (4/3 larger).
MAX_TEXT_BODY_BYTES = 5_500_000
MAX_BINARY_BODY_BYTES = MAX_TEXT_BODY_BYTES * 3 // 4
GZIP_ABOVE_BYTES = 1024


def fitted(answer: Answer, accept_encoding: str) -> Answer:
    """The answer as it can leave a Lambda: JSON gzip-compressed when the client takes it (a
    1,000-instance series' metadata is ~10x smaller), and a 413 with what to do instead of a body
    that Lambda would refuse."""
    if "json" in answer.content_type and len(answer.body) > GZIP_ABOVE_BYTES and "gzip" in accept_encoding:
        packed = gzip.compress(answer.body, compresslevel=6, mtime=0)
        if len(packed) < len(answer.body):
            answer.body = packed
            answer.headers["Content-Encoding"] = "gzip"
    binary = "json" not in answer.content_type or answer.headers.get("Content-Encoding") == "gzip"
    if len(answer.body) > (MAX_BINARY_BODY_BYTES if binary else MAX_TEXT_BODY_BYTES):
        raise ApiError(
            413,
            "the answer is too large for one response: ask with Accept-Encoding: gzip, or per series or instance",
        )
    return answer


MAX_REQUEST_BYTES = 1_000_000
# How many studies a quick search looks at before it answers "not complete: start a cohort".
QUICK_SEARCH_STUDIES = 2000


def _already_serialized(body: Any) -> Any:
    return body if isinstance(body, bytes | str) else json.dumps(body, separators=(",", ":"))


def _json_answer(body: Mapping[str, Any], status: int = 200) -> Answer:
    return Answer(status, json.dumps(body, separators=(",", ":")).encode("utf-8"), "application/json")


def _job_answer(job: Job, status: int = 200) -> Answer:
    answer = _json_answer({"job": job.public()}, status)
    answer.query = f"job={job.job_id}"
    return answer


def _selection(body: Mapping[str, Any]) -> Selection:
    try:
        return Selection.parse(body)
    except JobRequestError as exc:
        raise ApiError(400, str(exc)) from None


def _bounded(value: Any, *, default: int, upper: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} is a whole number") from None
    if not 0 <= number <= upper:
        raise ApiError(400, f"{name} is from 0 to {upper}")
    return number


def _error(status: int, reason: str) -> Response:
    return Response(status, "application/json", json.dumps({"error": reason}))


_api: ResearchApi | None = None


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler (functions/research_api/app.py)."""
    global _api
    if _api is None:
        _api = ResearchApi(ApiSettings.from_env())
    return _api.handle(event, context)


def reset_api() -> None:
    """Forget the container's API (tests and the local API start fresh)."""
    global _api
    _api = None


__all__ = ["DICOM_JSON", "ApiSettings", "ResearchApi", "caller_from_claims", "handler", "reset_api"]
