"""Rekognition back-end without AWS: botocore's Stubber, and a fake HTTP layer for retries."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("botocore")
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber
from deidflow.cloud.services import make_rekognition_client
from deidflow.pixels import DetectionError, RedactionBox, detect_text, make_detector
from deidflow.pixels.detectors.rekognition import MAX_IMAGE_BYTES, RekognitionDetector


def client(max_attempts: int = 3):
    session = botocore.session.get_session()
    session.set_credentials("testing", "testing")

    class Wrapper:  # make_rekognition_client wants something with .client()
        def client(self, name, region_name=None, config=None):
            return session.create_client(name, region_name=region_name or "eu-west-1", config=config)

    return make_rekognition_client("eu-west-1", max_attempts=max_attempts, session=Wrapper())


def detection(kind: str, left: float, top: float, width: float, height: float, confidence=99.0):
    return {
        "DetectedText": "x",
        "Type": kind,
        "Id": 0,
        "Confidence": confidence,
        "Geometry": {
            "BoundingBox": {"Left": left, "Top": top, "Width": width, "Height": height},
            "Polygon": [{"X": left, "Y": top}],
        },
    }


def png_size(payload: bytes) -> tuple[int, int]:
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", payload[16:24])
    return width, height


def test_client_has_adaptive_retries():
    rekognition = client(max_attempts=7)
    assert rekognition.meta.config.retries["mode"] == "adaptive"
    assert rekognition.meta.config.retries["total_max_attempts"] == 8


def test_normalised_boxes_become_pixels():
    rekognition = client()
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    with Stubber(rekognition) as stub:
        stub.add_response(
            "detect_text",
            {
                "TextDetections": [
                    detection("LINE", 0.1, 0.25, 0.5, 0.05),
                    detection("WORD", 0.1, 0.25, 0.2, 0.05, 80.0),
                ]
            },
            {"Image": {"Bytes": ANY}},
        )
        boxes = detect_text(RekognitionDetector(rekognition), frame)
        stub.assert_no_pending_responses()
    # the word box lies inside the line box and is merged away
    assert boxes == [RedactionBox(64, 120, 384, 144, 0.99, "rekognition")]


def test_sent_image_is_png_of_the_frame():
    rekognition = client()
    frame = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    sent: list[bytes] = []
    rekognition.meta.events.register(
        "before-parameter-build.rekognition.DetectText",
        lambda params, **_: sent.append(params["Image"]["Bytes"]),
    )
    with Stubber(rekognition) as stub:
        stub.add_response("detect_text", {"TextDetections": []}, {"Image": {"Bytes": ANY}})
        detect_text(RekognitionDetector(rekognition), frame)
    assert png_size(sent[0]) == (300, 200)
    # decode our own PNG (filter 0 rows) and compare with the frame
    idat = sent[0][sent[0].index(b"IDAT") + 4 :]
    raw = zlib.decompressobj().decompress(idat)
    rows = np.frombuffer(raw[: 200 * (1 + 900)], dtype=np.uint8).reshape(200, 901)
    assert np.array_equal(rows[:, 1:].reshape(200, 300, 3), frame)


def test_small_frames_are_padded_to_80_pixels_and_boxes_clipped():
    rekognition = client()
    frame = np.zeros((40, 200, 3), dtype=np.uint8)
    with Stubber(rekognition) as stub:
        # 0.5 of the 80-row padded image = row 40: the box is cut to the real 40 rows
        stub.add_response(
            "detect_text",
            {"TextDetections": [detection("WORD", 0.0, 0.25, 0.5, 0.5)]},
            {"Image": {"Bytes": ANY}},
        )
        boxes = detect_text(RekognitionDetector(rekognition), frame)
    assert boxes == [RedactionBox(0, 20, 100, 40, 0.99, "rekognition")]


def test_large_frames_are_tiled_with_overlap():
    rekognition = client()
    frame = np.zeros((2000, 2000, 3), dtype=np.uint8)
    detector = RekognitionDetector(rekognition, max_tile_side=1024, tile_overlap=48)
    with Stubber(rekognition) as stub:
        for _ in range(4):
            stub.add_response(
                "detect_text",
                {"TextDetections": [detection("WORD", 0.0, 0.0, 0.1, 0.05)]},
                {"Image": {"Bytes": ANY}},
            )
        boxes = detect_text(detector, frame)
        stub.assert_no_pending_responses()
    assert detector.requests_sent == 4
    # one box per tile, offset by the tile origin (0 or 2000 - 1024 = 976)
    origins = sorted((box.x0, box.y0) for box in boxes)
    assert origins == [(0, 0), (0, 976), (976, 0), (976, 976)]


def test_dense_frames_are_split_when_the_word_limit_is_hit():
    rekognition = client()
    frame = np.zeros((600, 800, 3), dtype=np.uint8)
    detector = RekognitionDetector(rekognition, max_split_depth=1)
    hundred_words = {"TextDetections": [detection("WORD", 0.01 * i, 0.0, 0.01, 0.02) for i in range(100)]}
    with Stubber(rekognition) as stub:
        stub.add_response("detect_text", hundred_words, {"Image": {"Bytes": ANY}})
        for _ in range(4):
            stub.add_response(
                "detect_text",
                {"TextDetections": [detection("WORD", 0.5, 0.5, 0.1, 0.1)]},
                {"Image": {"Bytes": ANY}},
            )
        boxes = detect_text(detector, frame)
        stub.assert_no_pending_responses()
    assert detector.requests_sent == 5
    assert len(boxes) >= 100


def test_frames_too_big_for_5_mb_are_split():
    rekognition = client()
    # noise does not compress: 1400 x 1400 x 3 is ~5.9 MB as PNG
    frame = np.random.default_rng(1).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    detector = RekognitionDetector(rekognition, max_tile_side=1400)
    sizes: list[int] = []
    rekognition.meta.events.register(
        "before-parameter-build.rekognition.DetectText",
        lambda params, **_: sizes.append(len(params["Image"]["Bytes"])),
    )
    with Stubber(rekognition) as stub:
        for _ in range(4):
            stub.add_response("detect_text", {"TextDetections": []}, {"Image": {"Bytes": ANY}})
        detect_text(detector, frame)
    assert len(sizes) == 4 and max(sizes) <= MAX_IMAGE_BYTES


def test_service_errors_fail_the_frame_instead_of_passing_it_clean():
    rekognition = client()
    with Stubber(rekognition) as stub:
        stub.add_client_error("detect_text", "InvalidImageFormatException", http_status_code=400)
        with pytest.raises(DetectionError, match="InvalidImageFormatException"):
            detect_text(RekognitionDetector(rekognition), np.zeros((100, 100, 3), dtype=np.uint8))


class FakeRaw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args, **kwargs):
        yield self.body


def test_throttling_is_retried_by_the_client(monkeypatch):
    # Stubber short-circuits retries, so answer at the HTTP layer instead.
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    rekognition = client(max_attempts=3)
    answers = [
        (400, {"__type": "ThrottlingException", "message": "Rate exceeded"}),
        (400, {"__type": "ProvisionedThroughputExceededException", "message": "slow down"}),
        (200, {"TextDetections": [detection("WORD", 0.0, 0.0, 0.5, 0.5)]}),
    ]
    calls = []

    def send(request, **kwargs):
        status, body = answers[len(calls)]
        calls.append(status)
        return AWSResponse(
            request.url, status, {"Content-Type": "application/x-amz-json-1.1"}, FakeRaw(json.dumps(body).encode())
        )

    rekognition.meta.events.register("before-send.rekognition.DetectText", send)
    boxes = detect_text(RekognitionDetector(rekognition), np.zeros((100, 100, 3), dtype=np.uint8))
    assert calls == [400, 400, 200]
    assert boxes == [RedactionBox(0, 0, 50, 50, 0.99, "rekognition")]


def test_factory_builds_rekognition_with_a_given_client():
    rekognition = client()
    detector = make_detector("rekognition", client=rekognition)
    assert isinstance(detector, RekognitionDetector) and detector.client is rekognition
