"""`deidflow local api`: the research API on this machine, over a research folder.

The same Lambda handler as the cloud (functions/research_api/app.py) answers every request. AWS is
played by a moto server on loopback: S3 (the research objects, the profiles file, the audit
segments), DynamoDB (index, catalog, audit) and Cognito (users, groups, signed tokens and their
JWKS). In front of the handler, this module does what API Gateway's HTTP API does: it answers CORS
preflight, verifies the bearer token against the user pool's JWKS (signature, expiry, issuer,
client), and hands the claims over flattened the way the JWT authorizer does (arrays as "[a b]",
everything a string), so the production parsing is what runs here.

The access file names the users, their groups and the profiles file (docs/research-api.md):

    profiles: profiles.yaml          # relative to this file
    users:
      - {username: alice, groups: [ct-team]}
      - {username: carol}            # no group, no profile: sees nothing
    buckets: [lung-team-exports]     # team export destinations (optional)

Cohort and export jobs run on their real state machines (local/jobs.py), and the researcher portal
(`portal/`) is served at /portal/ with a laptop login (`POST /local/token`, loopback only).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..cloud.steps import catalog_items
from ..index import index_file
from ..storage import CATALOG_DUMP, INDEX_DUMP
from .jobs import JOBS_FUNCTION, STATE_MACHINES, LocalJobRunner
from .research_folder import json_lines as _json_lines
from .template import function_environment, load_template, table_definition
from .workflow import LocalNames, find_project, load_module

REGION = "us-east-1"
ACCESS_SCHEMA_KEYS = {"profiles", "users", "buckets"}
# What a local token is good for: the portal-like public client of the user pool.
LOCAL_CLIENT_NAME = "deidflow-local"


@dataclass(frozen=True)
class LocalUser:
    username: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessFile:
    profiles: Path
    users: tuple[LocalUser, ...]
    buckets: tuple[str, ...] = ()  # team export buckets, created here and registered (ExportDestinationBuckets)

    @classmethod
    def load(cls, path: Path) -> AccessFile:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        if not isinstance(data, dict) or set(data) - ACCESS_SCHEMA_KEYS or "profiles" not in data:
            raise ValueError(f"{path}: an access file has 'profiles' (a path) and 'users' (a list), nothing else")
        users = []
        for entry in data.get("users") or []:
            if not isinstance(entry, dict) or not entry.get("username"):
                raise ValueError(f"{path}: every user has a username")
            users.append(LocalUser(str(entry["username"]), tuple(str(g) for g in entry.get("groups") or ())))
        buckets = tuple(str(b) for b in data.get("buckets") or ())
        return cls((path.parent / str(data["profiles"])).resolve(), tuple(users), buckets)


@dataclass
class LocalState:
    """What `deidflow local token` needs to log a user in to a running local API (state file)."""

    endpoint: str
    user_pool_id: str
    client_id: str
    passwords: dict[str, str]
    dicomweb_url: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # passwords: owner only
        with os.fdopen(fd, "w") as fh:
            json.dump(self.__dict__, fh, indent=2)

    @classmethod
    def load(cls, path: Path) -> LocalState:
        return cls(**json.loads(path.read_text("utf-8")))


def local_token(state: LocalState, username: str) -> str:
    """An access token for a local user, from the running local API's user pool (a real login)."""
    import boto3

    client = boto3.client(
        "cognito-idp",
        endpoint_url=state.endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    if username not in state.passwords:
        raise KeyError(f"no local user {username!r} (the access file names {', '.join(sorted(state.passwords))})")
    answer = client.initiate_auth(
        ClientId=state.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": state.passwords[username]},
    )
    return str(answer["AuthenticationResult"]["AccessToken"])


@dataclass
class LocalResearchApi:
    """Use as a context manager: the moto server, the resources and the HTTP server live inside it."""

    research_dir: Path
    access_file: Path
    project: Path | None = None
    port: int = 0
    names: LocalNames = field(default_factory=LocalNames)
    seal_every: float = 60.0  # the audit sealer's schedule here (the cloud's is 5 minutes)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status): the access log
    viewer_url: str | None = None  # a DICOMweb viewer's study URL with {study} in it (OHIF's, with --ohif)
    settings: dict[str, str] = field(default_factory=dict)  # environment set on top of the template's (tests)

    def __enter__(self) -> LocalResearchApi:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
        self.project = find_project(self.project)
        self.access = AccessFile.load(self.access_file)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.jobs = LocalJobRunner(self.project, self.client("stepfunctions"))
        environment = self._environment()
        # moto's interpreter reaches S3 (the Map's ItemReader) and Lambda through this server.
        environment["MOTO_PORT"] = str(port)
        self._saved_env = {k: os.environ.get(k) for k in environment}
        os.environ.update(environment)
        try:
            self._start_jobs()
            self._create_resources()
            self._load_research_folder()
            self._create_users()
            self._start_http()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "_http", None) is not None:
            self._stop.set()
            self._http.shutdown()
            self._http.server_close()
        if getattr(self, "_jobs_session", None) is not None:
            from moto.core.config import default_user_config

            self.jobs.uninstall(self._jobs_session)
            default_user_config["stepfunctions"]["execute_state_machine"] = self._executed_before
        self._moto.stop()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        from ..cloud.research_api import reset_api
        from ..cloud.research_jobs import reset_steps

        reset_api()
        reset_steps()

    def _start_jobs(self) -> None:
        """moto runs state machines only when told to (in this process, for this server); the
        interpreter's lambda:Invoke goes through boto3's default session, which the runner answers."""
        import boto3
        from moto.core.config import default_user_config

        self._executed_before = default_user_config["stepfunctions"]["execute_state_machine"]
        default_user_config["stepfunctions"]["execute_state_machine"] = True
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        self._jobs_session = boto3.DEFAULT_SESSION
        self.jobs.install(self._jobs_session)

    # -- what the handler sees ------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        """The research API function's environment as the template writes it (Globals and its
        own), with this stack's local names; plus where AWS is (the moto server)."""
        assert self.project is not None
        n = self.names
        unused = "-"  # the PHI side's names reach every function through Globals; here they name nothing
        template = load_template(self.project / "template.yaml")
        resources = {
            "ResearchBucket": n.research_bucket,
            "IndexTable": n.index_table,
            "CatalogTable": n.catalog_table,
            "AuditTable": n.audit_table,
            "AccessConfigBucket": n.profiles_bucket,
            "JobsTable": n.jobs_table,
            "ExportsBucket": n.exports_bucket,
            "MappingTable": unused,
            "StatusTable": unused,
            "PseudonymKeySecret": unused,
            "ObjectRefKeySecret": unused,
            **{logical_id: self.jobs.state_machine_arn(logical_id) for logical_id in STATE_MACHINES},
        }
        # The API and the jobs' steps run in this one process, so they share one environment: the
        # union of both functions', which must agree on every name they share.
        environment: dict[str, str] = {}
        for function in ("ResearchApiFunction", JOBS_FUNCTION):
            own = function_environment(template, resources, stack_name="local", function=function)
            own.pop("POWERTOOLS_SERVICE_NAME", None)
            clash = {k for k in own if k in environment and environment[k] != own[k]}
            if clash:
                raise ValueError(f"the template gives the research functions different {', '.join(sorted(clash))}")
            environment.update(own)
        environment["EXPORT_BUCKETS"] = ",".join(self.access.buckets)
        return {
            **environment,
            **self.settings,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }

    def client(self, name: str) -> Any:
        import boto3

        return boto3.client(
            name,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def resource(self, name: str) -> Any:
        import boto3

        return boto3.resource(name, endpoint_url=self.endpoint, region_name=REGION)

    def _create_resources(self) -> None:
        assert self.project is not None
        n = self.names
        template = load_template(self.project / "template.yaml")
        s3 = self.client("s3")
        for bucket in (n.research_bucket, n.profiles_bucket, n.exports_bucket, *self.access.buckets):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        lock = template["Resources"]["AuditBucket"]["Properties"]["ObjectLockConfiguration"]
        s3.create_bucket(Bucket=n.audit_bucket, ObjectLockEnabledForBucket=True)
        retention = lock["Rule"]["DefaultRetention"]
        s3.put_object_lock_configuration(
            Bucket=n.audit_bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                # The template's retention is a parameter; a day is enough on a laptop.
                "Rule": {"DefaultRetention": {"Mode": retention["Mode"], "Days": 1}},
            },
        )
        dynamodb = self.client("dynamodb")
        for logical_id, name in (
            ("IndexTable", n.index_table),
            ("CatalogTable", n.catalog_table),
            ("AuditTable", n.audit_table),
            ("JobsTable", n.jobs_table),
        ):
            dynamodb.create_table(**table_definition(template, logical_id, name))
        self.jobs.create_state_machines()
        self.client("ssm").put_parameter(Name=n.audit_head_parameter, Value="{}", Type="String")
        s3.put_object(Bucket=n.profiles_bucket, Key=os.environ["PROFILES_KEY"], Body=self.access.profiles.read_bytes())

    def _load_research_folder(self) -> None:
        """The research objects into S3; their index and catalog items from the dumps a local run
        leaves beside them, or, for a folder that `deidflow deid` wrote, indexed here (without
        labels: those are decided on original headers, which this folder no longer has)."""
        s3 = self.client("s3")
        n = self.names
        index = self.resource("dynamodb").Table(n.index_table)
        catalog = self.resource("dynamodb").Table(n.catalog_table)
        root = self.research_dir
        files = sorted(p for p in (root / "studies").rglob("*.dcm")) if (root / "studies").is_dir() else []
        for path in files:
            s3.put_object(
                Bucket=n.research_bucket,
                Key=path.relative_to(root).as_posix(),
                Body=path.read_bytes(),
                ContentType="application/dicom",
            )
        dumped = root / INDEX_DUMP
        self.indexed_here = not dumped.exists()
        if not self.indexed_here:
            with index.batch_writer() as writer:
                for item in _json_lines(dumped):
                    writer.put_item(Item=item)
            with catalog.batch_writer() as writer:
                for item in _json_lines(root / CATALOG_DUMP):
                    writer.put_item(Item=item)
        else:
            for path in files:
                entry = index_file(path, path.relative_to(root).as_posix())
                if entry.sidecar is not None:
                    s3.put_object(Bucket=n.research_bucket, Key=entry.sidecar_key, Body=entry.sidecar)
                index.put_item(Item=entry.item)
                for item in catalog_items(entry):
                    catalog.put_item(Item=item)
        self.instances = len(files)

    def _create_users(self) -> None:
        cognito = self.client("cognito-idp")
        self.user_pool_id = cognito.create_user_pool(PoolName="deidflow-local-research")["UserPool"]["Id"]
        self.client_id = cognito.create_user_pool_client(
            UserPoolId=self.user_pool_id,
            ClientName=LOCAL_CLIENT_NAME,
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        groups = sorted({g for u in self.access.users for g in u.groups})
        for group in groups:
            cognito.create_group(GroupName=group, UserPoolId=self.user_pool_id)
        self.passwords: dict[str, str] = {}
        for user in self.access.users:
            password = secrets.token_urlsafe(18) + "aA1!"
            cognito.admin_create_user(UserPoolId=self.user_pool_id, Username=user.username, MessageAction="SUPPRESS")
            cognito.admin_set_user_password(
                UserPoolId=self.user_pool_id, Username=user.username, Password=password, Permanent=True
            )
            for group in user.groups:
                cognito.admin_add_user_to_group(UserPoolId=self.user_pool_id, Username=user.username, GroupName=group)
            self.passwords[user.username] = password
        self.issuer = f"https://cognito-idp.{REGION}.amazonaws.com/{self.user_pool_id}"
        import jwt

        self._jwks = jwt.PyJWKClient(f"{self.endpoint}/{self.user_pool_id}/.well-known/jwks.json")

    def _start_http(self) -> None:
        assert self.project is not None
        self._handler = load_module(self.project / "functions" / "research_api" / "app.py").handler
        self._stop = threading.Event()
        self._invoking = threading.Lock()
        api = self

        class Handler(_ApiRequestHandler):
            owner = api

        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="deidflow-local-api", daemon=True).start()
        threading.Thread(target=self._seal_periodically, name="deidflow-audit-sealer", daemon=True).start()

    # -- what a client uses ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return self.base_url + "/dicomweb"

    def token(self, username: str) -> str:
        return local_token(self.state(), username)

    def portal_config(self) -> dict[str, Any]:
        """What the portal reads first (portal/config.json in the cloud, written at deploy)."""
        return {
            "api": self.base_url,
            "dicomweb": self.dicomweb_url,
            "viewer": self.viewer_url,
            "auth": {"mode": "local", "users": [u.username for u in self.access.users]},
        }

    def state(self) -> LocalState:
        return LocalState(self.endpoint, self.user_pool_id, self.client_id, dict(self.passwords), self.dicomweb_url)

    def seal_audit(self, *, margin_seconds: float = 0.0) -> Any:
        """Seal the audit records written so far into the next hash-chained segment (the cloud's
        scheduled sealer; here also on demand)."""
        from datetime import timedelta

        from ..cloud.audit import seal_pending

        n = self.names
        return seal_pending(
            self.resource("dynamodb").Table(n.audit_table),
            self.client("s3"),
            n.audit_bucket,
            self.client("ssm"),
            n.audit_head_parameter,
            now=datetime.now(UTC),
            margin=timedelta(seconds=margin_seconds),
        )

    def _seal_periodically(self) -> None:
        while not self._stop.wait(self.seal_every):
            try:
                self.seal_audit(margin_seconds=30)
            except Exception:  # noqa: BLE001 - the next round tries again, as the scheduled sealer would
                logging.getLogger(__name__).warning("the local audit sealer failed; it retries next round")

    # -- the HTTP API's part --------------------------------------------------------------------

    def verified_claims(self, authorization: str) -> dict[str, str] | None:
        """The JWT authorizer: a valid token of this pool and client, its claims flattened as the
        HTTP API hands them to Lambda; None when the request is unauthorized."""
        import jwt

        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        # The authorizer accepts an access token by client_id, an ID token by aud.
        audience = claims.get("client_id") if claims.get("token_use") == "access" else claims.get("aud")
        if audience != self.client_id:
            return None
        return {name: _flattened(value) for name, value in claims.items()}

    def lambda_event(
        self, method: str, target: str, headers: Mapping[str, str], claims: dict[str, str], source_ip: str
    ) -> dict[str, Any]:
        """An API Gateway HTTP API (payload 2.0) event, as the proxy integration builds it."""
        parts = urlsplit(target)
        lowered = {k.lower(): v for k, v in headers.items()}
        lowered.setdefault("x-forwarded-proto", "http")
        now = datetime.now(UTC)
        query: dict[str, str] = {}
        from urllib.parse import parse_qsl

        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query[name] = f"{query[name]},{value}" if name in query else value
        return {
            "version": "2.0",
            "routeKey": f"{method} /{{proxy+}}",
            "rawPath": parts.path,
            "rawQueryString": parts.query,
            "headers": lowered,
            **({"queryStringParameters": query} if query else {}),
            "requestContext": {
                "accountId": "000000000000",
                "apiId": "local",
                "domainName": f"127.0.0.1:{self.port}",  # API Gateway's own name for where it was reached
                "http": {
                    "method": method,
                    "path": parts.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": source_ip,
                    "userAgent": lowered.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": f"{method} /{{proxy+}}",
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
                "authorizer": {"jwt": {"claims": claims, "scopes": None}},
            },
            "isBase64Encoded": False,
        }

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        # One request at a time, as one Lambda container serves them: the handler keeps the
        # current event on its resolver, which two threads at once would mix up (one caller's
        # claims on another's request).
        with self._invoking:
            return dict(self._handler(event, _Context()))


class _ApiRequestHandler(BaseHTTPRequestHandler):
    owner: LocalResearchApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log is `owner.requests`; paths hold pseudonymous UIDs only, queries not kept

    def do_OPTIONS(self) -> None:
        # CORS preflight, answered by the HTTP API itself (no authorizer runs on it).
        self._reply(
            204,
            {
                "Access-Control-Allow-Origin": self.headers.get("Origin") or "*",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "authorization, accept, content-type",
                "Access-Control-Max-Age": "600",
            },
            b"",
        )

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/portal" or path == "/":
            self._reply(302, {"Location": "/portal/"}, b"")
        elif path.startswith("/portal/"):
            self._portal(path.removeprefix("/portal/") or "index.html")
        else:
            self._serve("GET")

    def do_POST(self) -> None:
        if urlsplit(self.path).path == "/local/token":
            self._local_token()
        else:
            self._serve("POST")

    def _portal(self, name: str) -> None:
        """The portal's static files (no token needed, as CloudFront serves them), and its
        config.json, which tells it where the API is and how to log in here."""
        api = self.owner
        if name == "config.json":
            body = json.dumps(api.portal_config()).encode()
            self._reply(200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, body)
            return
        assert api.project is not None
        root = (api.project / "portal").resolve()
        target = (root / name).resolve()
        if root not in target.parents or not target.is_file():
            self._reply(404, {"Content-Type": "text/plain"}, b"not found")
            return
        self._reply(
            200,
            {"Content-Type": _CONTENT_TYPES.get(target.suffix, "application/octet-stream"), **PORTAL_HEADERS},
            target.read_bytes(),
        )

    def _local_token(self) -> None:
        """The laptop's login: a local user's access token (what `deidflow local token` prints).
        The server listens on loopback only; in the cloud the portal logs in through Cognito."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            username = str(json.loads(self.rfile.read(length) or b"{}").get("username", ""))
            token = self.owner.token(username)
        except (ValueError, KeyError):
            self._reply(403, {"Content-Type": "application/json"}, b'{"error":"no such local user"}')
            return
        body = json.dumps({"access_token": token, "token_type": "Bearer"}).encode()
        self._reply(200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, body)

    def _serve(self, method: str) -> None:
        api = self.owner
        claims = api.verified_claims(self.headers.get("Authorization", ""))
        if claims is None:
            self._reply(401, {"Content-Type": "application/json"}, b'{"message":"Unauthorized"}')
            return
        event = api.lambda_event(method, self.path, dict(self.headers.items()), claims, self.client_address[0])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            sent = self.rfile.read(length)
            try:
                event["body"] = sent.decode("utf-8")
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(sent).decode(), True
        answer = api.invoke(event)
        body = answer.get("body") or ""
        data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode("utf-8")
        headers = dict(answer.get("headers") or {})
        for name, values in (answer.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(values)
        headers.setdefault("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
        status = int(answer.get("statusCode", 500))
        self._reply(status, headers, data)

    def _reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.owner.requests.append((self.command, urlsplit(self.path).path, status))
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@dataclass
class _Context:
    """The parts of a Lambda context the handler reads."""

    function_name: str = "deidflow-research-api"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:deidflow-research-api"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# As CloudFront's response headers policy sends them (template.yaml). Not its CSP, which names the
# cloud's API and sign-in origins: tests/integration/test_portal.py enforces that one in the browser.
PORTAL_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _flattened(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
