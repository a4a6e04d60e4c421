"""Burned-in text redaction: what a frame costs, and what frame sampling saves on a cine.

    python benchmarks/bench_pixels.py            # full run (about 1-2 minutes on 2 cores)
    python benchmarks/bench_pixels.py --quick    # 20-frame cine instead of 100

Prints, for 640x480 and 1024x1024 RGB ultrasound-like frames with burned-in captions:
  * the local (offline ONNX) detector, per frame;
  * render for detection, per frame;
  * redact + re-encode (decode, fill boxes, encode) per frame, for several transfer syntaxes;
and the wall time of a whole 100-frame cine with frame sampling vs detection on every frame.
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

from deidflow.pixels import (  # noqa: E402
    PixelPolicy,
    decode_frame,
    detect_text,
    make_detector,
    redact_burned_in_text,
    render_for_detection,
)
from pixel_testdata import TextSpec, build_dataset, roundtrip, text_frames, to_syntax  # noqa: E402
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
    cine = roundtrip(build_dataset(frames, burned_in="YES"))
    print(f"{cine_frames}-frame 640x480 RGB cine, native, local detector:")
    for label, policy in (
        ("sampled (first, middle, last, every 10th)", PixelPolicy()),
        ("every frame", PixelPolicy(frame_sampling="all")),
    ):
        ds = roundtrip(cine)
        start = time.perf_counter()
        result = redact_burned_in_text(ds, policy, detector)
        elapsed = time.perf_counter() - start
        print(
            f"  {label:<42} {len(result.frames_scanned):>4} frames detected  "
            f"{elapsed:7.2f} s total  {elapsed / cine_frames * 1000:7.1f} ms/frame  "
            f"{len(result.boxes)} boxes"
        )


if __name__ == "__main__":
    main()
