"""Boxes, the scan decision, frame sampling and policy parsing: header-only, fast."""

from __future__ import annotations

import pytest
from deidflow.pixels import (
    DeviceSignature,
    PixelPolicy,
    RedactionBox,
    frames_to_detect,
    make_detector,
    merge_boxes,
    needs_pixel_scan,
    policy_from_mapping,
)
from deidflow.pixels.boxes import box_from_points
from deidflow.pixels.policy import fixed_boxes
from pydicom import Dataset


def header(modality=None, burned_in=None, sop_class="1.2.840.10008.5.1.4.1.1.2", **extra) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = b"\x00\x00"
    return ds


def test_box_validation_padding_and_clipping():
    box = RedactionBox(10, 20, 30, 25)
    assert (box.width, box.height, box.area) == (20, 5, 100)
    assert box.padded(5) == RedactionBox(5, 15, 35, 30)
    assert RedactionBox(-5, -5, 700, 10).clipped(640, 480) == RedactionBox(0, 0, 640, 10)
    assert RedactionBox(650, 0, 700, 10).clipped(640, 480) is None
    with pytest.raises(ValueError):
        RedactionBox(5, 0, 4, 1)
    with pytest.raises(TypeError):
        RedactionBox(0.5, 0, 4, 1)  # type: ignore[arg-type]
    assert RedactionBox.from_xywh(1, 2, 3, 4) == RedactionBox(1, 2, 4, 6)


def test_box_from_polygon_rounds_outwards_and_merge_drops_contained():
    box = box_from_points([[10.2, 13.0], [197.0, 13.0], [197.0, 31.5], [10.2, 31.5]], 0.9, "ocr")
    assert (box.x0, box.y0, box.x1, box.y1) == (10, 13, 198, 33)
    merged = merge_boxes(
        [RedactionBox(0, 0, 10, 10), RedactionBox(2, 2, 5, 5), RedactionBox(0, 0, 10, 10), RedactionBox(20, 0, 30, 10)]
    )
    assert merged == [RedactionBox(0, 0, 10, 10), RedactionBox(20, 0, 30, 10)]


@pytest.mark.parametrize(
    ("ds", "expected"),
    [
        (header("US", "YES"), True),
        (header("CT", "YES"), True),
        (header("US", None, "1.2.840.10008.5.1.4.1.1.6.1"), True),
        (header("XA"), True),
        (header("RF"), True),
        (header("ES"), True),
        (header("XC"), True),
        (header("OT"), True),
        (header(None, None, "1.2.840.10008.5.1.4.1.1.7"), True),  # secondary capture
        (header("CT", None, "1.2.840.10008.5.1.4.1.1.7"), True),  # CT screen grab
        (header("US", "NO"), True),  # NO not trusted for text-prone modalities by default
        (header("CT", "NO"), False),
        (header("MR", "NO", "1.2.840.10008.5.1.4.1.1.4"), False),
        (header("PT", "NO"), False),
        (header("NM", "NO"), False),
        (header("CT"), False),
        (header("MR"), False),
        (header("DX"), False),
    ],
)
def test_auto_scan_decision(ds, expected):
    scan, reason = needs_pixel_scan(ds, PixelPolicy())
    assert scan is expected
    assert reason and "DOE" not in reason


def test_scan_decision_modes_and_trust():
    us_no = header("US", "NO")
    assert needs_pixel_scan(us_no, PixelPolicy(trust_no_for_text_prone=True))[0] is False
    assert needs_pixel_scan(header("CT", "NO"), PixelPolicy(mode="always"))[0] is True
    assert needs_pixel_scan(header("US", "YES"), PixelPolicy(mode="never"))[0] is False
    no_pixels = header("US", "YES")
    del no_pixels.PixelData
    assert needs_pixel_scan(no_pixels, PixelPolicy()) == (False, "no pixel data")


def test_device_signatures_match_case_insensitively_and_force_a_scan():
    ds = header(
        "CT", "NO", Manufacturer="Philips Medical Systems", ManufacturerModelName="EPIQ 5G", Rows=768, Columns=1024
    )
    epiq = DeviceSignature(
        boxes=(RedactionBox(0, 0, 1024, 24),), manufacturer="philips", model="epiq", rows=768, columns=1024, name="epiq"
    )
    other_size = DeviceSignature(boxes=(RedactionBox(0, 0, 5, 5),), manufacturer="philips", rows=600)
    policy = PixelPolicy(device_signatures=(epiq, other_size), manual_boxes=((1, 2, 3, 4),))
    assert epiq.matches(ds) and not other_size.matches(ds)
    assert fixed_boxes(ds, policy) == [RedactionBox(1, 2, 3, 4), RedactionBox(0, 0, 1024, 24)]
    assert needs_pixel_scan(ds, PixelPolicy(device_signatures=(epiq,))) == (True, "device signature matches")


def test_frame_sampling():
    assert frames_to_detect(1, PixelPolicy()) == [0]
    assert frames_to_detect(100, PixelPolicy(sample_every=0)) == [0, 49, 99]
    assert frames_to_detect(100, PixelPolicy(sample_every=25)) == [0, 25, 49, 50, 75, 99]
    assert frames_to_detect(30, PixelPolicy()) == [0, 10, 14, 20, 29]
    assert frames_to_detect(5, PixelPolicy(frame_sampling="all")) == [0, 1, 2, 3, 4]
    assert frames_to_detect(0, PixelPolicy()) == []


def test_policy_from_rules_data():
    policy = policy_from_mapping(
        {
            "mode": "auto",
            "detector": "none",
            "margin": 2,
            "manual_boxes": [[0, 0, 100, 20], {"x": 5, "y": 6, "width": 7, "height": 8}],
            "device_signatures": [
                {
                    "name": "s2000",
                    "manufacturer": "SIEMENS",
                    "model": "S2000",
                    "rows": 768,
                    "columns": 1024,
                    "boxes": [[0, 0, 1024, 60]],
                }
            ],
            "frame_sampling": "all",
        }
    )
    assert policy.manual_boxes[1] == RedactionBox(5, 6, 12, 14)
    assert policy.device_signatures[0].boxes[0].source == "device-signature:s2000"
    with pytest.raises(ValueError, match="unknown pixel policy keys"):
        policy_from_mapping({"mood": "auto"})
    with pytest.raises(ValueError):
        PixelPolicy(mode="sometimes")  # type: ignore[arg-type]
    assert policy_from_mapping(None) == PixelPolicy()


def test_detector_factory_names():
    assert make_detector("none").name == "none"
    assert make_detector(" NONE ").read.__self__.name == "none"
    with pytest.raises(ValueError, match="unknown text detector"):
        make_detector("crystal-ball")


def test_policy_from_rules_entries():
    from types import SimpleNamespace

    from deidflow.pixels import policy_from_rules

    assert policy_from_rules([]) == PixelPolicy()
    manual_only = policy_from_rules([SimpleNamespace(type="manual", boxes=((0, 0, 10, 10),), detector=None)])
    assert manual_only.mode == "always" and manual_only.detector == "none"
    assert manual_only.manual_boxes == (RedactionBox(0, 0, 10, 10),)
    both = policy_from_rules(
        [
            SimpleNamespace(type="OCR", boxes=(), detector="rekognition"),
            SimpleNamespace(type="manual", boxes=((1, 1, 2, 2),), detector=None),
        ]
    )
    assert (both.mode, both.detector, len(both.manual_boxes)) == ("always", "rekognition", 1)
    assert policy_from_rules([SimpleNamespace(type="ocr", boxes=(), detector=None)]).detector == "local"
    with pytest.raises(ValueError):
        policy_from_rules([SimpleNamespace(type="blur", boxes=(), detector=None)])
