"""Burned-in text redaction: what a frame costs, and what frame sampling saves on a cine.

    python benchmarks/bench_pixels.py            # full run (about 1-2 minutes on 2 cores)
    python benchmarks/bench_pixels.py --quick    # 20-frame cine instead of 100

Prints, for 640x480 and 1024x1024 RGB ultrasound-like frames with burned-in captions:
  * the local (offline ONNX) detector, per frame;
  * render for detection, per frame;
  * redact + re-encode (decode, fill boxes, encode) per frame, for several transfer syntaxes;
and, for frame_sampling "changes", "sample" and "all": frames detected, the pixel area shown to the
detector (the sum of the frames' or crops' areas, in frames: "changes" detects a frame sent for a
change in its changed regions only) and wall time on a 100-frame cine with text in frames 43-47
only (and whether that text was removed), and on real cines (deid-data's echo, whose ECG sweep
changes every frame; pydicom's JPEG YBR cine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "pixels"))
try:
    import deidflow.pixels  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "layers" / "deidflow"))

import numpy as np  # noqa: E402
from deidflow.pixels import (  # noqa: E402
    PixelPolicy,
    PixelResult,
    decode_frame,
    detect_text,
    make_detector,
    redact_burned_in_text,
    render_for_detection,
)
from pixel_testdata import TextSpec, build_dataset, draw_text, roundtrip, text_frames, to_syntax  # noqa: E402
from pydicom import Dataset, dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

SIZES = {"640x480": (480, 640), "1024x1024": (1024, 1024)}
SYNTAXES = {
    "native": ExplicitVRLittleEndian,
    "RLE": RLELossless,
    "J2K lossless": JPEG2000Lossless,
    "JPEG baseline": JPEGBaseline8Bit,
}


def captions(rows: int, columns: int) -> tuple[TextSpec, ...]:
    return (
        TextSpec("DOE JANE", 8, 6, "aileron", 20),
        TextSpec("DOB 1961-03-02", columns // 2, 6, "hershey-simplex", 6, (255, 255, 0)),
        TextSpec("MRN 00471139", 8, 40, "pil-bitmap", 11, (0, 255, 0)),
        TextSpec("ELSEWHERE HOSPITAL", columns - 300, rows - 40, "hershey-duplex", 5, (0, 255, 255)),
    )


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20-frame cine, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    cine_frames = 20 if args.quick else 100

    detector = make_detector("local")
    print(f"{'frame':>10} | {'step':<38} | {'ms/frame':>9}")
    print("-" * 64)
    for size_name, (rows, columns) in SIZES.items():
        frames, _, _ = text_frames(1, rows=rows, columns=columns, texts=captions(rows, columns))
        native = build_dataset(frames)
        print(
            f"{size_name:>10} | {'local detector (rapidocr DB, ONNX)':<38} | "
            f"{timed(lambda f=frames[0]: detect_text(detector, f), repeats) * 1000:9.1f}"
        )
        frame, photometric = decode_frame(native, 0)
        render_cost = timed(lambda f=frame, d=native, p=photometric: render_for_detection(f, d, p), repeats)
        print(f"{size_name:>10} | {'render for detection, RGB 8-bit':<38} | {render_cost * 1000:9.1f}")
        grey16 = build_dataset(
            (frames.max(axis=-1).astype("uint16") * 16)[:1], photometric="MONOCHROME2", modality="XA", bits_stored=12
        )
        grey16.WindowCenter, grey16.WindowWidth = 2048, 4096
        grey16.RescaleSlope, grey16.RescaleIntercept = 1, 0
        frame16, photometric16 = decode_frame(grey16, 0)
        render_cost = timed(lambda f=frame16, d=grey16, p=photometric16: render_for_detection(f, d, p), repeats)
        print(f"{size_name:>10} | {'render for detection, 12-bit windowed':<38} | {render_cost * 1000:9.1f}")
        boxes = tuple((b.x0, b.y0, b.x1, b.y1) for b in detect_text(detector, frames[0]))
        policy = PixelPolicy(mode="always", manual_boxes=boxes)
        for syntax_name, syntax in SYNTAXES.items():
            source = roundtrip(to_syntax(native, syntax))
            # redaction mutates: one fresh copy per run, made outside the timed region
            copies = [copy.deepcopy(source) for _ in range(repeats + 1)]

            def redact_only(copies=copies, policy=policy) -> None:
                redact_burned_in_text(copies.pop(), policy, None)

            cost = timed(redact_only, repeats)
            print(f"{size_name:>10} | {'decode+redact+re-encode, ' + syntax_name:<38} | {cost * 1000:9.1f}")

    print()
    rows, columns = SIZES["640x480"]
    frames, _, _ = text_frames(cine_frames, rows=rows, columns=columns, texts=captions(rows, columns), seed=3)
    # text in a few frames only, away from the captions: frames 43-47 of 100 (no fixed sample)
    late = range(cine_frames * 43 // 100, cine_frames * 48 // 100)
    late_mask = np.zeros((rows, columns), dtype=bool)
    for index in late:
        draw_text(frames[index], late_mask, TextSpec("KOWALSKI ANNA", columns - 210, rows - 80, "aileron", 16))
    cine = roundtrip(build_dataset(frames, burned_in="YES"))
    print(f"{cine_frames}-frame 640x480 RGB cine, native, local detector, extra text in frames {late[0]}-{late[-1]}:")
    for label, policy in POLICIES:
        result, elapsed, area = timed_redaction(cine, policy, detector)
        covered = np.zeros(late_mask.shape, dtype=bool)
        for box in result.boxes:
            covered[box.y0 : box.y1, box.x0 : box.x1] = True
        removed = "removed" if (covered | ~late_mask).all() else "LEFT IN PLACE"
        print(
            f"  {label:<44} {len(result.frames_scanned):>4} frames detected  {area:6.1f} frames' area  "
            f"{elapsed:7.2f} s  {elapsed / cine_frames * 1000:7.1f} ms/frame  late text {removed}"
        )

    for name, path in real_cines():
        source = dcmread(path, force=True)
        count = int(source.get("NumberOfFrames") or 1)
        print(f"{name}: {count} frames of {source.Columns}x{source.Rows} {source.PhotometricInterpretation}:")
        for label, policy in POLICIES:
            result, elapsed, area = timed_redaction(source, policy, detector)
            print(
                f"  {label:<44} {len(result.frames_scanned):>4} frames detected  {area:6.1f} frames' area  "
                f"{elapsed:7.2f} s  {len(result.boxes)} boxes"
            )


POLICIES = (
    ("changes (fixed samples + frames text changed)", PixelPolicy()),
    ("sample (first, middle, last, every 10th)", PixelPolicy(frame_sampling="sample")),
    ("all (every frame)", PixelPolicy(frame_sampling="all")),
)


class AreaCounter:
    """Passes every call to a detector and adds up the pixels it was shown (frames or crops)."""

    def __init__(self, detector) -> None:
        self.detector, self.name, self.pixels = detector, detector.name, 0

    def read(self, frame_rgb8):
        self.pixels += frame_rgb8.shape[0] * frame_rgb8.shape[1]
        return self.detector.read(frame_rgb8)

    def read_crop(self, crop_rgb8, frame_shape):
        self.pixels += crop_rgb8.shape[0] * crop_rgb8.shape[1]
        return self.detector.read_crop(crop_rgb8, frame_shape)


def timed_redaction(source: Dataset, policy: PixelPolicy, detector) -> tuple[PixelResult, float, float]:
    """The result, the wall time, and the area shown to the detector in frames (sum of areas / frame area)."""
    ds = copy.deepcopy(source)  # redaction mutates; the copy is made outside the timed region
    counter = AreaCounter(detector)
    start = time.perf_counter()
    result = redact_burned_in_text(ds, policy, counter)
    elapsed = time.perf_counter() - start
    return result, elapsed, counter.pixels / (int(source.Rows) * int(source.Columns))


def real_cines() -> list[tuple[str, Path]]:
    """deid-data's echo cine and pydicom's JPEG YBR cine, those of them installed."""
    found = []
    try:
        from deid_data.data import get_dataset

        echo = Path(get_dataset("ultrasounds")) / "ultrasound-multiframe.dcm"
        if echo.exists():
            found.append(("deid-data ultrasound-multiframe.dcm", echo))
    except ImportError:
        print("deid-data not installed: its echo cine is skipped")
    ybr = get_testdata_file("examples_ybr_color.dcm", download=False)
    if ybr:
        found.append(("pydicom examples_ybr_color.dcm (JPEG)", Path(ybr)))
    return found


if __name__ == "__main__":
    main()
