"""The research API's operations, over an index and an object store, for one caller's access.

Every operation decides visibility per study with `visible_in_study` before it reads anything, and
answers 404 alike for a UID that does not exist and one the caller may not see. Each returns an
`Answer` that carries, besides the body, what the audit record must say about it.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from .header import InstanceRecord
from .jobs import Selection, cohort_rows
from .profiles import ProfilesFile
from .qido import BadQuery, QidoQuery, ResultBuilder, parse_query
from .rendered import RenderError, chosen_media, quality_of, render, viewport_of
from .visibility import Access, visible_in_study, widest_level
from .wado import (
    OCTET_STREAM,
    accepted_frame_type,
    bulk_path,
    frame_media_type,
    frame_part_type,
    instance_metadata,
    instance_url,
    multipart_related,
    parse_frame_list,
)

DICOM_JSON = "application/dicom+json"
# Lambda answers at most 6 MB, binary bodies travel base64-encoded (4/3): what fits inline.
MAX_INLINE_BYTES = 4_000_000


class ApiError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    # For the audit record: what was returned or read (UIDs only).
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instance: str | None = None
    frames: tuple[int, ...] = ()
    count: int = 0
    query: str = ""


class ResearchIndex(Protocol):
    def studies(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """(Study UID, the study's study-level DICOM JSON as last indexed), newest study first.
        Only a pre-filter: results are rebuilt from the visible instances."""
        ...

    def study_instances(self, study_uid: str) -> list[InstanceRecord]:
        """Every instance of the study, in series then instance order ([] when unknown)."""
        ...

    def series_instances(self, study_uid: str, series_uid: str) -> list[InstanceRecord]:
        """Every instance of the series (of that study), in instance order ([] when unknown)."""
        ...

    def instance(self, sop_uid: str) -> InstanceRecord | None:
        """One instance, or None when the index has no such SOP Instance UID."""
        ...


class ObjectStore(Protocol):
    def read(self, key: str) -> bytes: ...

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]: ...

    def presigned_url(self, key: str, seconds: int) -> str: ...


@dataclass
class ResearchService:
    index: ResearchIndex
    store: ObjectStore
    base_url: str  # the DICOMweb root as the caller reached it, for RetrieveURL and BulkDataURI
    presign_seconds: int = 60

    # -- QIDO-RS --------------------------------------------------------------------------------

    def search(
        self,
        access: Access,
        level: str,
        params: Mapping[str, Sequence[str]],
        *,
        study: str | None = None,
        series: str | None = None,
    ) -> Answer:
        fixed = {0x0020000D} if study else set()
        if series:
            fixed.add(0x0020000E)
        try:
            query = parse_query(params, level, fixed=fixed)
        except BadQuery as exc:
            raise ApiError(400, str(exc)) from None
        wanted = query.offset + (query.limit if query.limit is not None else 1000) + 1
        results: list[dict[str, Any]] = []
        for visible in self._searched(access, query, study, series):
            for group_url, group in self._groups(level, visible):
                record = ResultBuilder(query, group_url, group).record()
                if query.accepts(record):
                    results.append(record)
            if len(results) >= wanted:
                break
        page, more = query.page(results)
        headers = {}
        notes = list(query.warnings)
        if more:
            notes.append("There are additional results that can be requested")
        if notes:
            headers["Warning"] = ", ".join(f'299 deidflow "{n}"' for n in notes)
        returned_studies = _uids(page, "0020000D") or ((study,) if study else ())
        return Answer(
            200,
            json.dumps(page, separators=(",", ":")).encode("utf-8"),
            DICOM_JSON,
            headers=headers,
            studies=returned_studies,
            series=_uids(page, "0020000E"),
            count=len(page),
            query=query.normalized,
        )

    def _searched(
        self, access: Access, query: QidoQuery, study: str | None, series: str | None
    ) -> Iterator[list[InstanceRecord]]:
        """The visible instances of each study a search looks at, newest study first; under a
        study (or series) path, that one (404 when the caller sees none of it)."""
        if study:
            yield self.visible(access, "search", study, series)
            return
        profiles = access.allowing("search")
        for uid, summary in self.index.studies():
            if query.level == "study" and not query.may_match(summary):
                continue
            visible = visible_in_study(profiles, self.index.study_instances(uid))
            if visible:
                yield visible

    def _groups(self, level: str, visible: list[InstanceRecord]) -> list[tuple[str, list[InstanceRecord]]]:
        first = visible[0]
        if level == "study":
            return [(f"{self.base_url}/studies/{first.study_instance_uid}", visible)]
        if level == "series":
            by_series: dict[str, list[InstanceRecord]] = {}
            for record in visible:
                by_series.setdefault(record.series_instance_uid, []).append(record)
            return [
                (f"{self.base_url}/studies/{first.study_instance_uid}/series/{uid}", group)
                for uid, group in by_series.items()
            ]
        return [(instance_url(self.base_url, record), [record]) for record in visible]

    def quick_search(self, access: Access, selection: Selection, limit: int, budget_studies: int) -> Answer:
        """A cohort's query answered at once, by study, for the portal: the first `limit` studies
        with a match, looking at no more than `budget_studies` studies (`complete` says whether
        every study was looked at; a cohort job looks at all of them)."""
        profiles = access.allowing("search")
        studies: list[dict[str, Any]] = []
        examined = 0
        complete = True
        if profiles:
            for uid, summary in self.index.studies():
                if len(studies) >= limit or examined >= budget_studies:
                    complete = False
                    break
                examined += 1
                if not all(q.may_match(summary) for q in selection.qido if q.level == "study"):
                    continue
                instances = self.index.study_instances(uid)
                selected = {row["sop"] for row in cohort_rows(profiles, instances, selection)}
                if selected:
                    studies.append(_study_summary([i for i in instances if i.sop_instance_uid in selected]))
        body = {"studies": studies, "examined": examined, "complete": complete}
        return Answer(
            200,
            json.dumps(body, separators=(",", ":")).encode("utf-8"),
            "application/json",
            studies=tuple(s["study"] for s in studies),
            count=sum(s["instances"] for s in studies),
            query=json.dumps(selection.to_json(), sort_keys=True),
        )

    # -- WADO-RS --------------------------------------------------------------------------------

    def visible(
        self, access: Access, action: str, study: str, series: str | None = None, sop: str | None = None
    ) -> list[InstanceRecord]:
        """The caller's visible instances under `action` at a study/series/instance path; 404 if none.

        Reads no more than the decision needs: one item when the instance is in a profile's scope
        itself, its series when only a series level can widen to it, the study when a study level
        can (a viewer asks once per frame: hundreds of times for one CT series)."""
        profiles = access.allowing(action)
        visible: list[InstanceRecord] = []
        widest = widest_level(profiles)
        if profiles and sop is not None:
            record = self.index.instance(sop)
            if (
                record is not None
                and record.study_instance_uid == study
                and series in (None, record.series_instance_uid)
            ):
                if any(p.in_scope(record) for p in profiles):
                    visible = [record]
                elif widest != "instance":
                    group = (
                        self.index.series_instances(study, record.series_instance_uid)
                        if widest == "series"
                        else self.index.study_instances(study)
                    )
                    visible = [r for r in visible_in_study(profiles, group) if r.sop_instance_uid == sop]
        elif profiles and series is not None and widest != "study":
            visible = visible_in_study(profiles, self.index.series_instances(study, series))
        elif profiles:
            visible = visible_in_study(profiles, self.index.study_instances(study))
            if series is not None:
                visible = [i for i in visible if i.series_instance_uid == series]
        if not visible:
            raise ApiError(404, "no such " + ("instance" if sop else "series" if series else "study"))
        return visible

    def metadata(self, access: Access, study: str, series: str | None = None, sop: str | None = None) -> Answer:
        visible = self.visible(access, "view", study, series, sop)
        body = json.dumps([instance_metadata(r, self.base_url) for r in visible], separators=(",", ":"))
        return Answer(
            200,
            body.encode("utf-8"),
            DICOM_JSON,
            studies=(study,),
            series=tuple(dict.fromkeys(r.series_instance_uid for r in visible)),
            instance=sop,
            count=len(visible),
        )

    def frames(self, access: Access, study: str, series: str, sop: str, frame_list: str, accept: str) -> Answer:
        (record,) = self.visible(access, "view", study, series, sop)
        try:
            numbers = parse_frame_list(frame_list, record.number_of_frames)
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        chunks, syntax = self._frame_bytes(record, numbers)
        media_type = accepted_frame_type(accept, syntax)
        if media_type is None:
            raise ApiError(
                406, f"the frames are stored as {syntax} ({frame_media_type(syntax)}); this server does not transcode"
            )
        if sum(len(c) for c in chunks) > MAX_INLINE_BYTES:
            raise ApiError(413, "the frames are too large for one answer: ask for fewer frames at a time")
        body, content_type = multipart_related(chunks, frame_part_type(syntax, media_type), type_param=media_type)
        return Answer(
            200,
            body,
            content_type,
            studies=(study,),
            series=(series,),
            instance=sop,
            frames=tuple(numbers),
            count=len(numbers),
        )

    def _frame_bytes(self, record: InstanceRecord, numbers: list[int]) -> tuple[list[bytes], str]:
        """The stored bytes of each frame, and the transfer syntax they are in."""
        if record.frames is not None:
            chunks = []
            for number in numbers:
                try:
                    ranges = record.frames.ranges(number, record.number_of_frames)
                except IndexError:
                    raise ApiError(404, f"frame {number} is outside the instance") from None
                chunks.append(b"".join(self.store.read_ranges(record.research_key, ranges)))
            return chunks, record.transfer_syntax_uid
        return _decoded_frames(self.store.read(record.research_key), numbers)

    def bulkdata(self, access: Access, study: str, series: str, sop: str, path: str, accept: str) -> Answer:
        (record,) = self.visible(access, "view", study, series, sop)
        try:
            element_path = bulk_path(record, path)
        except (KeyError, ValueError):
            raise ApiError(404, "no such bulk data in this instance") from None
        value = _element_bytes(self.store.read(record.research_key), element_path)
        if len(value) > MAX_INLINE_BYTES:
            raise ApiError(413, "this bulk data is too large for one answer: download the instance instead")
        facts: dict[str, Any] = {"studies": (study,), "series": (series,), "instance": sop, "count": 1}
        if "multipart" not in accept and OCTET_STREAM in accept:
            return Answer(200, value, OCTET_STREAM, **facts)
        body, content_type = multipart_related([value], OCTET_STREAM, type_param=OCTET_STREAM)
        return Answer(200, body, content_type, **facts)

    def rendered(
        self,
        access: Access,
        study: str,
        series: str | None,
        sop: str | None,
        frame: str | None,
        params: Mapping[str, Sequence[str]],
        accept: str,
        *,
        thumbnail: bool = False,
    ) -> Answer:
        """A frame as a viewer shows it (JPEG or PNG); for a series or study thumbnail, the middle
        visible instance of the (first) series."""
        visible = self.visible(access, "view", study, series, sop)
        if sop is None:
            first_series = [r for r in visible if r.series_instance_uid == visible[0].series_instance_uid]
            visible = [first_series[len(first_series) // 2]]
        (record,) = visible
        try:
            media = chosen_media(accept)
            viewport = viewport_of(params, thumbnail)
            quality = quality_of(params)
            number = parse_frame_list(frame or "1", record.number_of_frames)
            if len(number) != 1:
                raise RenderError(400, "one frame at a time is rendered")
            body = render(self.store.read(record.research_key), number[0], media, viewport, quality)
        except RenderError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return Answer(
            200,
            body,
            media,
            studies=(study,),
            series=(record.series_instance_uid,),
            instance=record.sop_instance_uid,
            frames=tuple(number),
            count=1,
        )

    def retrieve(self, access: Access, study: str, series: str | None, sop: str | None, accept: str) -> Answer:
        """Whole instances (the `download` action): one instance single-part through a just-signed
        link; any level as multipart/related while it fits in one answer."""
        visible = self.visible(access, "download", study, series, sop)
        facts: dict[str, Any] = {
            "studies": (study,),
            "series": tuple(dict.fromkeys(r.series_instance_uid for r in visible)),
            "instance": sop,
            "count": len(visible),
        }
        media = (accept.split(",")[0].split(";")[0].strip().lower() or "*/*") if accept else "*/*"
        if sop is not None and media == "application/dicom":
            url = self.store.presigned_url(visible[0].research_key, self.presign_seconds)
            return Answer(303, b"", "text/plain", headers={"Location": url}, **facts)
        if media not in ("multipart/related", "*/*") or (
            media == "multipart/related" and "application/dicom" not in accept
        ):
            raise ApiError(
                406, 'instances are served as multipart/related; type="application/dicom", or one as application/dicom'
            )
        total = sum(r.object_bytes or 0 for r in visible)
        if total > MAX_INLINE_BYTES:
            raise ApiError(
                413,
                f"{len(visible)} instance(s), {total} bytes: too large for one answer; retrieve instances one "
                "at a time with Accept: application/dicom (a just-signed link), or export them",
            )
        parts = [self.store.read(r.research_key) for r in visible]
        body, content_type = multipart_related(parts, "application/dicom", type_param="application/dicom")
        return Answer(200, body, content_type, **facts)


def me(access: Access, profiles: ProfilesFile, today: date) -> dict[str, Any]:
    """'My permissions': the caller and every profile assigned to them, expired ones marked."""
    return {
        "sub": access.caller.sub,
        "username": access.caller.username,
        "groups": sorted(access.caller.groups),
        "profiles_version": profiles.version,
        "profiles": [
            {
                "name": p.name,
                "description": p.description,
                "approval": p.approval,
                "expires": p.expires.isoformat() if p.expires else None,
                "active": p.active(today),
                "level": p.level,
                "actions": sorted(p.actions),
            }
            for p in profiles.assigned(access.caller)
        ],
    }


def _study_summary(selected: Sequence[InstanceRecord]) -> dict[str, Any]:
    """A study of a quick search: its UID, a few study attributes and its series, from the selected
    (visible) instances only."""
    first = selected[0]
    series: dict[str, list[InstanceRecord]] = {}
    for record in selected:
        series.setdefault(record.series_instance_uid, []).append(record)
    return {
        "study": first.study_instance_uid,
        "date": first.value(0x00080020),
        "description": first.value(0x00081030),
        "modalities": sorted({str(r.value(0x00080060)) for r in selected if r.value(0x00080060)}),
        "instances": len(selected),
        "series": [
            {
                "series": uid,
                "modality": group[0].value(0x00080060),
                "description": group[0].value(0x0008103E),
                "number": group[0].value(0x00200011),
                "instances": len(group),
                "first_instance": group[0].sop_instance_uid,
            }
            for uid, group in series.items()
        ],
    }


def _uids(records: Sequence[Mapping[str, Any]], tag: str) -> tuple[str, ...]:
    found = (str((r.get(tag) or {}).get("Value", [""])[0]) for r in records)
    return tuple(dict.fromkeys(u for u in found if u))


def _decoded_frames(data: bytes, numbers: list[int]) -> tuple[list[bytes], str]:
    """Frames the index could not locate by byte ranges, read with pydicom (deflated, bit-packed,
    fragments without a table): encapsulated frames as stored, native ones as Explicit VR Little
    Endian bytes."""
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.uid import ExplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
        count = int(ds.get("NumberOfFrames") or 1)
        if syntax.is_encapsulated:
            frames = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [frames[n - 1] for n in numbers], str(syntax)
        pixels = bytes(ds.PixelData)
        length = len(pixels) // count
        if ds.BitsAllocated % 8:
            raise ApiError(501, "frames of bit-packed pixel data are not served; retrieve the instance")
        return [pixels[(n - 1) * length : n * length] for n in numbers], str(ExplicitVRLittleEndian)


def _element_bytes(data: bytes, path: tuple[int | str, ...]) -> bytes:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node: Any = pydicom.dcmread(io.BytesIO(data))
        for i, part in enumerate(path):
            node = node[part].value if i % 2 == 0 else node[part]
    return bytes(node)
