"""Settings and AWS clients of a workflow Lambda, made once per container: every AWS client the
code uses is built here (the engine's Rekognition client included).

Everything the steps need from the outside comes through `Services`, so tests and the local
workflow hand in moto-backed clients and the steps stay plain functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from ..engine import Engine
from ..index import DEFAULT_MAX_ITEM_BYTES
from ..keys import parse_key
from ..pixels import TextDetector, make_detector
from ..pseudonym import object_ref
from ..rules import RuleSet, load_rules
from .objects import KeySeal, ObjectRef


def make_rekognition_client(
    region_name: str | None = None,
    *,
    max_attempts: int = 10,
    session: Any = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> Any:
    """A boto3 Rekognition client with adaptive retries (client-side rate limiting on throttling)."""
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    if session is None:
        import boto3

        session = boto3.session.Session()
    return session.client("rekognition", region_name=region_name, config=config)


def edge_detector(name: str, session: Any = None) -> TextDetector:
    """The engine's detector factory at the edge: Rekognition gets a client made here, from
    `session` (a boto3.Session; the default one when None)."""
    if name.strip().lower() == "rekognition":
        return make_detector(name, client=make_rekognition_client(session=session))
    return make_detector(name)


def environment_reader(env: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """`need(NAME)`: a variable of the function's environment (os.environ by default), or a
    RuntimeError naming it. template.yaml sets every variable a function reads, so a missing one
    is a deploy bug, reported as such rather than as a KeyError deep inside a step."""
    values = os.environ if env is None else env

    def need(name: str) -> str:
        value = values.get(name, "")
        if not value:
            raise RuntimeError(f"environment variable {name} is not set")
        return value

    return need


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    return int(value) if value != "" else default


# What a deleted original does to its published instance (the OnSourceDelete parameter).
ON_SOURCE_DELETE = ("remove", "keep")


def _on_source_delete(env: Mapping[str, str]) -> str:
    value = env.get("ON_SOURCE_DELETE", "") or "remove"
    if value not in ON_SOURCE_DELETE:
        raise RuntimeError(f"environment variable ON_SOURCE_DELETE is {value!r}: {' or '.join(ON_SOURCE_DELETE)}")
    return value


@dataclass(frozen=True)
class Settings:
    research_bucket: str
    index_table: str
    catalog_table: str
    mapping_table: str
    status_table: str
    key_secret_id: str
    object_ref_secret_id: str
    staging_prefix: str
    max_object_bytes: int
    text_detector: str
    skip_suffixes: tuple[str, ...]
    rules_file: str | None = None
    max_index_item_bytes: int = DEFAULT_MAX_ITEM_BYTES
    # Park's own (its function's environment only): where a parked object comes back, and how often.
    ingest_queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    redrive_rounds: int = 3
    redrive_delay_seconds: int = 300
    backpressure_waits: int = 24
    # The lanes (budget.py): EXPRESS has an express lane and a long one (a Standard state machine,
    # ExpandBatch's and Park's), STANDARD only the long lane, the workflow itself.
    workflow_type: str = "EXPRESS"
    long_lane_arn: str | None = None
    long_lane_object_bytes: int | None = None
    # WithdrawSource's own: "remove" takes a deleted original's instance out of research, "keep"
    # leaves it there and marks its index item (`source_deleted`).
    on_source_delete: str = "remove"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the function's environment: template.yaml sets every one (its Globals are the one
        place they are written; the local workflow reads them from there), so a missing one is a
        deploy bug."""
        env = os.environ if env is None else env
        need = environment_reader(env)
        return cls(
            research_bucket=need("RESEARCH_BUCKET"),
            index_table=need("INDEX_TABLE"),
            catalog_table=need("CATALOG_TABLE"),
            mapping_table=need("MAPPING_TABLE"),
            status_table=need("STATUS_TABLE"),
            key_secret_id=need("KEY_SECRET_ID"),
            object_ref_secret_id=need("OBJECT_REF_KEY_SECRET_ID"),
            staging_prefix=need("STAGING_PREFIX"),
            rules_file=env.get("RULES_FILE") or None,
            max_object_bytes=int(need("MAX_OBJECT_MB")) * 1024**2,
            text_detector=need("TEXT_DETECTOR"),
            skip_suffixes=tuple(s.strip() for s in need("SKIP_SUFFIXES").split(",") if s.strip()),
            ingest_queue_url=env.get("INGEST_QUEUE_URL") or None,
            dead_letter_queue_url=env.get("DEAD_LETTER_QUEUE_URL") or None,
            redrive_rounds=_int(env, "REDRIVE_ROUNDS", 3),
            redrive_delay_seconds=_int(env, "REDRIVE_DELAY_SECONDS", 300),
            backpressure_waits=_int(env, "BACKPRESSURE_WAITS", 24),
            workflow_type=env.get("WORKFLOW_TYPE") or "EXPRESS",
            long_lane_arn=env.get("LONG_LANE_STATE_MACHINE_ARN") or None,
            long_lane_object_bytes=_int(env, "LONG_LANE_OBJECT_MB", 256) * 1024**2,
            on_source_delete=_on_source_delete(env),
        )


@dataclass
class Services:
    """Clients are created on first use; the key is read from Secrets Manager once per container."""

    settings: Settings
    session: Any = None  # a boto3.Session; the default session when None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, name: str) -> Any:
        if name not in self._clients:
            import boto3

            self._clients[name] = (self.session or boto3).client(name)
        return self._clients[name]

    def table(self, name: str) -> Any:
        """A DynamoDB Table resource (it converts Python values to attribute values for us)."""
        key = "table:" + name
        if key not in self._clients:
            import boto3

            self._clients[key] = (self.session or boto3).resource("dynamodb").Table(name)
        return self._clients[key]

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @cached_property
    def rules(self) -> RuleSet:
        return load_rules(self.settings.rules_file)

    @cached_property
    def key(self) -> bytes:
        return self._secret_key(self.settings.key_secret_id)

    @cached_property
    def object_ref_key(self) -> bytes:
        """The object-reference key (ObjectRefKeySecret): names objects in logs and the status table."""
        return self._secret_key(self.settings.object_ref_secret_id)

    def _secret_key(self, secret_id: str) -> bytes:
        secret = self.client("secretsmanager").get_secret_value(SecretId=secret_id)
        # The same format as the local key file (base64 or hex); the template generates 64
        # alphanumerics, which decode as base64.
        return parse_key(secret["SecretString"])

    def with_ref(self, obj: ObjectRef) -> ObjectRef:
        """`obj` with its keyed reference: ExpandBatch computes it; a later step finds it in the
        payload and only computes it for a payload made before references existed."""
        if obj.ref:
            return obj
        return replace(obj, ref=object_ref(self.object_ref_key, obj.bucket, obj.key))

    @cached_property
    def key_seal(self) -> KeySeal:
        return KeySeal(self.object_ref_key)

    def source_of(self, event: Mapping[str, Any]) -> ObjectRef:
        """The object a state payload points at: its key opened, its reference given."""
        return self.with_ref(ObjectRef.from_payload(event, self.key_seal))

    def payload(self, obj: ObjectRef) -> dict[str, Any]:
        """`obj` as a state payload's `source`: with its reference, the key sealed."""
        return self.with_ref(obj).as_payload(self.key_seal)

    @cached_property
    def engine(self) -> Engine:
        """For the header step: scanning is routed elsewhere, so no detector is ever made here."""
        return Engine(self.rules, self.key, detector=self.settings.text_detector, detectors=self.detector)

    def detector(self, name: str) -> TextDetector:
        """The engine's detectors; Rekognition's client comes from this container's session."""
        return edge_detector(name, self.session)
