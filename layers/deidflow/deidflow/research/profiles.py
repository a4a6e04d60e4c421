"""Permission profiles: which de-identified instances a caller may search, view, download or export.

    version: 1
    profiles:
      lung-ct-2026:
        description: Chest CT for the lung-nodule study
        approval: IRB-2026-014            # copied into every audit record
        expires: 2027-06-30               # grants nothing after this day (UTC)
        scope:
          labels: [ChestCT]               # the rules' labels, decided on the original header
          filter: Modality StrEquals CT   # the rules' query language, on the de-identified header
          except: ImageType StrEquals "*LOCALIZER*"
        level: series                     # instance | series | study: what one match makes visible
        actions: [search, view, download]
    assignments:
      - groups: [lung-team]               # Cognito groups
        profiles: [lung-ct-2026]
      - users: [alice]                    # Cognito usernames
        profiles: [lung-ct-2026]
      - clients: [pipeline-client-id]     # client-credentials app clients (machine tokens only)
        profiles: [lung-ct-2026]

Profiles are cumulative; no profile, no data. An instance is in a profile's scope when it has one
of the scope's labels (every instance has ALL), matches `filter` and does not match `except`.
Errors name the file's line, as the rules' do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from ..rules import ALL_LABEL, RulesError, line_for, parse_yaml, schema_problems
from ..rules.query import Query, QueryError, parse_query

ACTIONS = ("search", "view", "download", "export")
LEVELS = ("instance", "series", "study")
# Names travel in audit records and, for groups, in the HTTP API's flattened array claim
# ("[a b]"), so no spaces and nothing that needs quoting.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$"
_names = {"type": "array", "items": {"type": "string", "pattern": _NAME}, "minItems": 1}

# Where a profile's exports may go and how large one may be (research/jobs.py reads it).
EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_instances": {"type": "integer", "minimum": 1},
        "destinations": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]{0,62}$"},
                    # An S3 bucket name (3-63 characters, lower case, digits, dots and hyphens).
                    "bucket": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
                },
            },
        },
    },
}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "profiles"],
    "properties": {
        "version": {"const": 1},
        "description": {"type": "string"},
        "profiles": {
            "type": "object",
            "propertyNames": {"pattern": _NAME},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["description", "scope", "level", "actions"],
                "properties": {
                    "description": {"type": "string", "minLength": 1},
                    "approval": {"type": "string"},
                    # YAML reads 2027-06-30 as a date; a quoted one is checked when compiled.
                    "expires": {},
                    "scope": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "labels": _names,
                            "filter": {"type": "string", "minLength": 1},
                            "except": {"type": "string", "minLength": 1},
                        },
                    },
                    "level": {"enum": list(LEVELS)},
                    "actions": {"type": "array", "items": {"enum": list(ACTIONS)}, "minItems": 1},
                    "export": EXPORT_SCHEMA,
                },
            },
        },
        "assignments": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["profiles"],
                "minProperties": 2,
                "properties": {
                    "groups": _names,
                    "users": _names,
                    "clients": _names,
                    "profiles": _names,
                },
            },
        },
    },
}


class ScopedInstance(Protocol):
    """What a scope is decided on: the rules' labels (internal, never returned) and the header."""

    @property
    def labels(self) -> frozenset[str]: ...

    @property
    def header(self) -> Any: ...  # answers the query language like a pydicom Dataset


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    approval: str
    expires: date | None
    labels: frozenset[str]  # empty: any label
    filter: Query | None
    exclude: Query | None  # the file's `except`
    level: str
    actions: frozenset[str]
    export: dict[str, Any]

    def active(self, today: date) -> bool:
        return self.expires is None or today <= self.expires

    def in_scope(self, instance: ScopedInstance) -> bool:
        if self.labels and not (self.labels & (instance.labels | {ALL_LABEL})):
            return False
        if self.filter is not None and not self.filter.evaluate(instance.header):
            return False
        return self.exclude is None or not self.exclude.evaluate(instance.header)


@dataclass(frozen=True)
class Caller:
    """Who is asking, from the verified token: a user (username set) or a machine client."""

    sub: str
    username: str = ""
    groups: frozenset[str] = frozenset()
    client_id: str = ""

    @property
    def is_machine(self) -> bool:
        return not self.username


@dataclass(frozen=True)
class Assignment:
    groups: frozenset[str]
    users: frozenset[str]
    clients: frozenset[str]
    profiles: tuple[str, ...]

    def applies_to(self, caller: Caller) -> bool:
        # A client assignment is for machine tokens only: every portal user's token also names the
        # portal's client, which must not grant them anything by itself.
        if caller.is_machine:
            return caller.client_id in self.clients
        return caller.username in self.users or bool(caller.groups & self.groups)


@dataclass(frozen=True)
class ProfilesFile:
    profiles: dict[str, Profile]
    assignments: tuple[Assignment, ...]
    version: str  # sha256 of the file's bytes: audit records name the exact file that decided
    source: str

    def assigned(self, caller: Caller) -> tuple[Profile, ...]:
        """Every profile assigned to the caller, expired ones included (for "my permissions")."""
        names = sorted({name for a in self.assignments if a.applies_to(caller) for name in a.profiles})
        return tuple(self.profiles[name] for name in names)

    def granted(self, caller: Caller, today: date) -> tuple[Profile, ...]:
        """The profiles that grant the caller something today."""
        return tuple(p for p in self.assigned(caller) if p.active(today))


def load_profiles_text(
    text: str, where: str = "<profiles>", *, known_labels: Iterable[str] | None = None
) -> ProfilesFile:
    """Parse and check a profiles file; RulesError lists every problem with its line.

    `known_labels` (the rules' label names) turns a label no rule defines into an error: a typo
    there would silently grant nothing.
    """
    data, index = parse_yaml(text, where)
    if not isinstance(data, dict):
        raise RulesError([f"{where}:1: a profiles file is a mapping with 'version: 1' at the top"])
    problems = schema_problems(data, index, where, SCHEMA)
    if problems:
        raise RulesError(problems)
    labels_known = None if known_labels is None else set(known_labels) | {ALL_LABEL}

    def problem(path: tuple[Any, ...], message: str) -> None:
        problems.append(f"{where}:{line_for(index, path)}: {message}")

    profiles: dict[str, Profile] = {}
    for name, raw in data["profiles"].items():
        base = ("profiles", name)
        scope = raw["scope"]
        queries: dict[str, Query | None] = {}
        for key in ("filter", "except"):
            queries[key] = None
            if key in scope:
                try:
                    queries[key] = parse_query(scope[key])
                except QueryError as exc:
                    problem((*base, "scope", key), f"profile {name}: bad query in {key}: {exc}")
        labels = frozenset(scope.get("labels", ()))
        if labels_known is not None:
            for label in sorted(labels - labels_known):
                problem((*base, "scope", "labels"), f"profile {name}: no rule defines the label {label!r}")
        if raw.get("export") and "export" not in raw["actions"]:
            problem((*base, "export"), f"profile {name}: export settings, but 'export' is not among its actions")
        expires = _expiry(raw.get("expires"))
        if raw.get("expires") is not None and expires is None:
            problem((*base, "expires"), f"profile {name}: expires must be a date (YYYY-MM-DD)")
        profiles[name] = Profile(
            name=name,
            description=raw["description"],
            approval=str(raw.get("approval", "")),
            expires=expires,
            labels=labels,
            filter=queries["filter"],
            exclude=queries["except"],
            level=raw["level"],
            actions=frozenset(raw["actions"]),
            export=dict(raw.get("export") or {}),
        )
    assignments = []
    for i, raw in enumerate(data.get("assignments") or []):
        for name in raw["profiles"]:
            if name not in profiles:
                problem(("assignments", i, "profiles"), f"assignment {i + 1}: no profile named {name!r}")
        assignments.append(
            Assignment(
                groups=frozenset(raw.get("groups", ())),
                users=frozenset(raw.get("users", ())),
                clients=frozenset(raw.get("clients", ())),
                profiles=tuple(raw["profiles"]),
            )
        )
    if problems:
        raise RulesError(problems)
    return ProfilesFile(
        profiles=profiles,
        assignments=tuple(assignments),
        version=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        source=where,
    )


def load_profiles(path: str | Path, *, known_labels: Iterable[str] | None = None) -> ProfilesFile:
    path = Path(path)
    return load_profiles_text(path.read_text("utf-8"), str(path), known_labels=known_labels)


def _expiry(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None
