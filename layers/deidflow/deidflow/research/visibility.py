"""The one rule that decides what a caller sees, on every endpoint.

Search results and their counts, metadata, frames, bulk data, rendered images and downloads all
ask `visible_in_study` for the instances of the study a request touches: nothing answers from
an index alone. A profile's `level` widens a match explicitly and the same way everywhere:
`instance` shows the matching instances, `series` their whole series, `study` their whole study.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from .header import InstanceRecord
from .profiles import Caller, Profile, ProfilesFile


@dataclass(frozen=True)
class Access:
    """A caller's profiles for one request, as decided when the request arrived."""

    caller: Caller
    profiles: tuple[Profile, ...]  # active today
    version: str  # the profiles file's hash

    @classmethod
    def of(cls, caller: Caller, profiles: ProfilesFile, today: date) -> Access:
        return cls(caller, profiles.granted(caller, today), profiles.version)

    def allowing(self, action: str) -> tuple[Profile, ...]:
        return tuple(p for p in self.profiles if action in p.actions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)


def visible_in_study(profiles: Sequence[Profile], instances: Sequence[InstanceRecord]) -> list[InstanceRecord]:
    """The instances of one study that `profiles` make visible, in the given order.

    `instances` must be every instance of the study: a series or study level widens over them.
    """
    studies = {i.study_instance_uid for i in instances}
    if len(studies) > 1:
        raise ValueError("visible_in_study decides one study at a time")
    visible: set[str] = set()
    for profile in profiles:
        # Every instance is tried, visible or not: one already shown by an instance-level profile
        # can still be the match that opens its series under another.
        matched = [i for i in instances if profile.in_scope(i)]
        if not matched:
            continue
        if profile.level == "study":
            return list(instances)
        if profile.level == "series":
            series = {i.series_instance_uid for i in matched}
            visible |= {i.sop_instance_uid for i in instances if i.series_instance_uid in series}
        else:
            visible |= {i.sop_instance_uid for i in matched}
    return [i for i in instances if i.sop_instance_uid in visible]


def widest_level(profiles: Sequence[Profile]) -> str:
    """The widest unit any of `profiles` opens on one match: what a decision must read."""
    levels = {p.level for p in profiles}
    return "study" if "study" in levels else "series" if "series" in levels else "instance"


@dataclass(frozen=True)
class GrantCounts:
    studies: int = 0
    series: int = 0
    instances: int = 0


def granted_counts(profiles: Sequence[Profile], studies: Iterable[Sequence[InstanceRecord]]) -> GrantCounts:
    """`studies`: each study's instances (every one of them: a level widens over them)."""
    counts = [0, 0, 0]
    for instances in studies:
        visible = visible_in_study(profiles, instances)
        if visible:
            counts[0] += 1
            counts[1] += len({i.series_instance_uid for i in visible})
            counts[2] += len(visible)
    return GrantCounts(*counts)
