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
then, for a 120-frame 640x480 JPEG Baseline YBR_FULL_422 cine with burned-in captions (and
pydicom-data's real color3d_jpeg_baseline.dcm when installed), Pixel Data in and out and seconds
for the three ways lossy JPEG can be written back: blocks blanked in the DCT domain (default),
decoded and written uncompressed (the old default), decoded and re-encoded losslessly.
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
    TextFilter,
    decode_frame,
    detect_text,
    make_detector,
    redact_burned_in_text,
    render_for_detection,
)
from deidflow.pixels.boxes import RedactionBox  # noqa: E402
from deidflow.pixels.encode import encapsulated_size  # noqa: E402
from deidflow.pixels.jpeg_blocks import redact_jpeg_frame  # noqa: E402
from pixel_testdata import TextSpec, build_dataset, draw_text, roundtrip, text_frames, to_syntax  # noqa: E402
from pydicom import Dataset, dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.encaps import generate_frames  # noqa: E402
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
    parser.add_argument("--labelled", action="store_true", help="only the precision/recall figures on the labelled set")
    parser.add_argument("--jpeg-only", action="store_true", help="only the JPEG write-back section")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    cine_frames = 20 if args.quick else 100

    detector = make_detector("local")
    if args.jpeg_only:
        jpeg_section(detector, 30 if args.quick else 120)
        return
    labelled_figures()
    if args.labelled:
        return
    print(f"{'frame':>10} | {'step':<38} | {'ms/frame':>9}")
    print("-" * 64)
    for size_name, (rows, columns) in SIZES.items():
        frames, _, _ = text_frames(1, rows=rows, columns=columns, texts=captions(rows, columns))
        native = build_dataset(frames)
        print(
            f"{size_name:>10} | {'local detector: DB boxes, read, filtered':<38} | "
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
    jpeg_section(detector, 30 if args.quick else 120)


# The ways a redacted JPEG Baseline cine can be written back.
JPEG_WRITE_BACKS: dict[str, dict[str, object]] = {
    "DCT domain (blocks blanked, default)": {},
    "decoded, uncompressed (old default)": {"jpeg_in_dct_domain": False, "lossy_output": "explicit-vr-little-endian"},
    "decoded, JPEG-LS lossless": {"jpeg_in_dct_domain": False, "max_growth": 1e9},
    "decoded, compressed (lossy J2K if >1.5x)": {"jpeg_in_dct_domain": False},
}


def pixel_bytes(ds) -> int:
    return encapsulated_size(ds) or len(ds.PixelData)


def jpeg_cine(label: str, source, boxes: tuple[tuple[int, int, int, int], ...]) -> None:
    frames = int(source.NumberOfFrames)
    first = next(generate_frames(source.PixelData, number_of_frames=frames))
    blanks = [RedactionBox(*box) for box in boxes]
    per_frame = timed(lambda: redact_jpeg_frame(first, blanks, str(source.PhotometricInterpretation)), 5)
    print(f"{label}: {frames} frames, {source.Columns}x{source.Rows} {source.PhotometricInterpretation}")
    print(f"  DCT-domain transcoder, one frame, {len(blanks)} boxes: {per_frame * 1000:.0f} ms (median of 5)")
    print(f"  {'write-back':<40} {'in MB':>7} {'out MB':>7} {'out/in':>7} {'seconds':>8}")
    size_in = pixel_bytes(source)
    for name, options in JPEG_WRITE_BACKS.items():
        ds = copy.deepcopy(source)
        policy = PixelPolicy(mode="always", detector="none", manual_boxes=boxes, margin=4, **options)
        start = time.perf_counter()
        redact_burned_in_text(ds, policy, None)
        elapsed = time.perf_counter() - start
        size_out = pixel_bytes(ds)
        print(f"  {name:<40} {size_in / 1e6:7.2f} {size_out / 1e6:7.2f} {size_out / size_in:7.2f} {elapsed:8.2f}")


def jpeg_section(detector, frames: int) -> None:
    rows, columns = SIZES["640x480"]
    texts = captions(rows, columns)
    pictures, _, _ = text_frames(frames, rows=rows, columns=columns, texts=texts, seed=5)
    boxes = tuple((b.x0, b.y0, b.x1, b.y1) for b in detect_text(detector, pictures[0]))
    synthetic = roundtrip(to_syntax(build_dataset(pictures, burned_in="YES"), JPEGBaseline8Bit))
    del pictures
    print()
    jpeg_cine("synthetic US cine, JPEG Baseline (Pillow q92)", synthetic, boxes)
    try:
        from pydicom.data import get_testdata_file

        real = get_testdata_file("color3d_jpeg_baseline.dcm")
    except (ImportError, ValueError, OSError):
        real = None
    if real:
        print()
        jpeg_cine("pydicom-data color3d_jpeg_baseline.dcm", dcmread(real), boxes)

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


def labelled_figures() -> None:
    """Precision and recall of the local detector on the labelled set, with and without the text filter."""
    from labelled_set import real_labelled, score, synthetic_no_text, synthetic_text

    detector = make_detector("local")
    groups = {
        "synthetic text": synthetic_text(),
        "synthetic no text": synthetic_no_text(),
        "real text": real_labelled("text"),
        "real no text": real_labelled("no-text"),
    }
    print("Labelled set: text pixels removed, and pixels redacted away from any text (false positives)")
    print(
        f"{'group':<18} {'filter':<6} {'images':>6} {'text removed':>13} {'FP pixels':>10} {'FP %':>7} "
        f"{'images w/ FP':>12} {'s/image':>8}"
    )
    for name, items in groups.items():
        readings = []
        start = time.perf_counter()
        for item in items:
            readings.append(detector.read(item.frame))
        read_seconds = (time.perf_counter() - start) / max(len(items), 1)
        for label, text_filter in (("off", TextFilter(enabled=False)), ("on", TextFilter())):
            scores = [
                score(item, text_filter.boxes(found, item.frame)) for item, found in zip(items, readings, strict=True)
            ]
            text_pixels = sum(s.text_pixels for s in scores)
            removed = sum(s.text_removed for s in scores)
            false_positive = sum(s.false_positive for s in scores)
            pixels = sum(item.frame.shape[0] * item.frame.shape[1] for item in items)
            with_fp = [item.name for item, s in zip(items, scores, strict=True) if s.false_positive]
            recall = f"{100 * removed / text_pixels:.2f}%" if text_pixels else "-"
            print(
                f"{name:<18} {label:<6} {len(items):>6} {recall:>13} {false_positive:>10} "
                f"{100 * false_positive / max(pixels, 1):>6.2f}% {len(with_fp):>12} {read_seconds:>8.2f}"
            )
            if label == "on" and with_fp:
                print(f"{'':<25} false positives on: {', '.join(with_fp)}")
    print()


if __name__ == "__main__":
    main()
