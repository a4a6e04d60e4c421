"""Text in some frames of a cine only: which frames the detector is shown (sampling.py), and that
what it is not shown is still clean.

The selection tests need no OCR: they run the selector over synthetic cines and check which frames
it would detect on. The redaction tests run the real local detector and the OCR judge.
"""

from __future__ import annotations

import numpy as np
import pytest
from deidflow.pixels import PixelPolicy, frames_to_detect, redact_burned_in_text
from deidflow.pixels.boxes import RedactionBox
from deidflow.pixels.sampling import DetectionFrames
from deidflow.pixels.text_filter import TextReading
from deidflow.rules.schema import SCHEMA
from pixel_testdata import TextSpec, build_dataset, draw_text, roundtrip, text_frames
from pydicom.pixels import pixel_array

# A caption in every frame, where devices put it (the detector finds it on frame 0).
CAPTION = (
    TextSpec("DOE JANE", 8, 6, "aileron", 20),
    TextSpec("MRN 00471139", 8, 40, "pil-bitmap", 11, (0, 255, 0)),
)
# Text in a few frames only, away from the caption: on the black border, and over the moving fan.
LATE_BORDER = TextSpec("KOWALSKI ANNA", 430, 400, "aileron", 16, (255, 255, 0))
LATE_OVER_IMAGE = TextSpec("JONES 880412", 250, 300, "hershey-complex", 7)


def ultrasound_cine(
    frame_count: int, extra: dict[int, tuple[TextSpec, ...]] | None = None, seed: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Speckle that moves in every frame, CAPTION in all; ``extra`` texts by frame. Returns the
    frames and the mask of the extra text's pixels (over all frames)."""
    frames, _, _ = text_frames(frame_count, texts=CAPTION, seed=seed)
    mask = np.zeros(frames.shape[1:3], dtype=bool)
    for index, specs in (extra or {}).items():
        for spec in specs:
            draw_text(frames[index], mask, spec)
    return frames, mask


def selected(ds, policy: PixelPolicy | None = None) -> list[int]:
    """The frames the policy would detect on, with no detector feedback (no boxes found)."""
    frames = DetectionFrames(ds, policy or PixelPolicy(), int(ds.get("NumberOfFrames") or 1))
    for _ in frames:
        pass
    return frames.detected


def fixed(frame_count: int) -> set[int]:
    return set(frames_to_detect(frame_count, PixelPolicy(frame_sampling="sample")))


# --- selection, no OCR -------------------------------------------------------------------------


def test_changes_is_the_default_and_the_rules_schema_takes_it():
    assert PixelPolicy().frame_sampling == "changes"
    enum = SCHEMA["properties"]["pixels"]["properties"]["frame_sampling"]["enum"]
    assert set(enum) == {"changes", "sample", "all"}
    with pytest.raises(ValueError, match="changes, sample, all"):
        PixelPolicy(frame_sampling="some")  # type: ignore[arg-type]


def test_single_frame_and_short_cines_detect_what_they_did():
    # defect caught: "changes" decoding and judging frames the fixed samples already include
    one, _ = ultrasound_cine(1)
    assert selected(build_dataset(one)) == [0]
    three, _ = ultrasound_cine(3)
    frames = DetectionFrames(build_dataset(three), PixelPolicy(), 3)
    assert frames.selector is None and frames.fixed == [0, 1, 2]


def test_static_caption_over_moving_speckle_sends_only_the_fixed_samples():
    # defect caught: speckle, or a caption over it, counted as new text: every frame detected
    frames, _ = ultrasound_cine(40)
    chosen = selected(build_dataset(frames))
    assert set(chosen) >= fixed(40)
    assert len(chosen) <= len(fixed(40)) + 2, chosen


@pytest.mark.parametrize(("spec", "shown"), [(LATE_BORDER, range(43, 48)), (LATE_OVER_IMAGE, range(33, 38))])
def test_text_in_a_few_frames_is_sent_when_it_appears(spec, shown):
    # defect caught: text in frames no fixed sample shows, or over the moving image, never detected
    frames, _ = ultrasound_cine(60, {index: (spec,) for index in shown})
    chosen = selected(build_dataset(frames))
    assert shown[0] in chosen
    assert len(chosen) <= len(fixed(60)) + 3, chosen  # its appearance and its end, not every frame


def test_a_counter_sends_every_frame_it_changes_in_until_a_box_covers_it():
    # defect caught: a changing counter or clock (a few pixels per digit) judged unchanged
    count = 24
    clock = {i: (TextSpec(f"TIME 12:{i:02d}", 470, 60, "aileron", 14),) for i in range(count)}
    frames, _ = ultrasound_cine(count, clock)
    chosen = selected(build_dataset(frames))
    assert chosen == list(range(count))  # nothing detected, nothing covered: every new value sent


def test_moving_colour_blob_and_speckle_without_text_do_not_send_every_frame():
    # defect caught: colour Doppler (a saturated, textured, moving region) taken for new text
    count = 40
    frames, _ = ultrasound_cine(count)
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    for index in range(count):
        cx, cy = 300 + 2 * index, 220 + index
        blob = ((xx - cx) / 45.0) ** 2 + ((yy - cy) / 30.0) ** 2 < 1
        red = rng.integers(120, 256, size=blob.shape)
        colour = np.stack([red, red // 6, np.zeros_like(red)], axis=-1).astype(np.uint8)
        frames[index][blob] = colour[blob]
    chosen = selected(build_dataset(frames))
    assert len(chosen) <= len(fixed(count)) + 4, chosen


def test_16_bit_xa_cine_with_late_text():
    # defect caught: a 16-bit grey cine, windowed or rescaled per frame, sending every frame (the
    # rendering's range moves) or missing the late text
    count = 40
    frames, _ = ultrasound_cine(count, {i: (LATE_BORDER,) for i in range(33, 37)})
    grey = frames.max(axis=-1).astype(np.uint16) * 16
    for index in range(count):  # a dose that drifts: every frame's range differs
        grey[index] = (grey[index] * (0.8 + 0.005 * index)).astype(np.uint16)
    ds = build_dataset(grey, photometric="MONOCHROME2", modality="XA", bits_stored=12)
    chosen = selected(ds)
    assert 33 in chosen
    assert len(chosen) <= len(fixed(count)) + 3, chosen


# --- redaction, with the local detector and the OCR judge --------------------------------------


def late_text_is_unreadable(spec: TextSpec, shown: range, local_detector, reader, count: int = 60):
    frames, mask = ultrasound_cine(count, {index: (spec,) for index in shown})
    source = roundtrip(build_dataset(frames, burned_in="YES"))
    words = {w for w in spec.text.split() if len(w) >= 3}
    before = reader.joined(frames[shown[0]])
    assert all(w in before for w in words), "the judge should read the late text before redaction"

    ds = roundtrip(source)
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.redacted
    assert shown[0] in result.frames_scanned
    assert len(result.frames_scanned) <= len(fixed(count)) + 3, result.frames_scanned
    after = pixel_array(roundtrip(ds))
    for index in shown:
        tokens, joined = reader.tokens(after[index]), reader.joined(after[index])
        assert not (tokens & words), f"frame {index}: still reads {sorted(tokens & words)}"
        assert not [w for w in words if w in joined]
    return source, mask


def test_text_in_frames_30_to_35_is_removed(local_detector, reader):
    late_text_is_unreadable(LATE_OVER_IMAGE, range(30, 36), local_detector, reader)


def test_text_in_frames_43_to_47_is_removed_where_fixed_sampling_missed_it(local_detector, reader):
    # defect caught: the old fixed sampling, which never looks at frames 43-47
    shown = range(43, 48)
    source, mask = late_text_is_unreadable(LATE_BORDER, shown, local_detector, reader)
    old = redact_burned_in_text(roundtrip(source), PixelPolicy(frame_sampling="sample"), local_detector)
    assert not set(old.frames_scanned) & set(shown)
    in_old_boxes = np.zeros(mask.shape, dtype=bool)
    for box in old.boxes:
        in_old_boxes[box.y0 : box.y1, box.x0 : box.x1] = True
    assert not (mask & in_old_boxes).any(), "fixed sampling should have left the late text in place"


def test_counter_is_unreadable_in_every_frame(local_detector, reader):
    # defect caught: the frames of a counter detected on once, its later values published
    count = 16
    texts = {i: (TextSpec(f"ELAPSED 4{i * 7:03d}", 440, 60, "aileron", 16),) for i in range(count)}
    frames, _ = ultrasound_cine(count, texts)
    ds = roundtrip(build_dataset(frames, burned_in="YES"))
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.redacted
    after = pixel_array(roundtrip(ds))
    for index in range(count):
        joined = reader.joined(after[index])
        assert "ELAPSED" not in joined and f"4{index * 7:03d}" not in joined, f"frame {index}"


# --- where a frame sent for a change is detected: the changed regions ---------------------------

ECG_TOP, ECG_HEIGHT, SWEEP = 420, 40, 12  # an ECG sweeping left to right, 12 px a frame


def with_ecg(frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Draw an ECG-like trace on each frame, as echo machines do: a green line redrawn behind a
    sweep head (each cycle a little different), a black gap ahead of it. Changes every frame, only
    near the head."""
    columns = frames.shape[2]
    xs = np.arange(columns)

    def trace(cycle: int) -> np.ndarray:
        beat = np.exp(-((((xs % 160) - 80) / 4.0) ** 2)) * (ECG_HEIGHT - 8) * (0.8 + 0.05 * (cycle % 4))
        return (ECG_TOP + ECG_HEIGHT - 4 - beat + 2 * np.sin(xs / 9.0 + cycle)).astype(np.int32)

    for index, frame in enumerate(frames):
        head = (index * SWEEP) % columns
        cycle = (index * SWEEP) // columns
        y = np.where(xs < head, trace(cycle), trace(cycle - 1))
        frame[ECG_TOP : ECG_TOP + ECG_HEIGHT] = 0
        for x in range(columns - 1):
            if head <= x < head + 24:
                continue  # the erase gap ahead of the head
            top, bottom = sorted((int(y[x]), int(y[x + 1])))
            frame[top - 1 : bottom + 1, x : x + 2] = (0, 230, 0)
    return frames


def regions_by_frame(ds) -> dict[int, tuple | None]:
    """The frames the selector sends and where each would be detected, with no detector."""
    frames = DetectionFrames(ds, PixelPolicy(), int(ds.get("NumberOfFrames") or 1))
    return {index: regions for index, *_, regions in frames}


def area_share(regions, shape: tuple[int, int]) -> float:
    return 1.0 if regions is None else sum(box.area for box in regions) / (shape[0] * shape[1])


def test_an_ecg_only_change_is_detected_in_a_small_crop():
    # defect caught: a frame sent for its ECG sweep detected whole (an echo costs a detection a
    # frame), or a crop that does not contain the sweep head
    count = 30
    frames, _ = ultrasound_cine(count)
    with_ecg(frames)
    chosen = regions_by_frame(build_dataset(frames))
    changed_only = {i: r for i, r in chosen.items() if i not in fixed(count)}
    assert len(changed_only) >= count - len(fixed(count)) - 2, sorted(chosen)  # the sweep sends them
    for index, regions in changed_only.items():
        assert regions is not None, index
        # about 400 x 128 of 640 x 480: the head +- 160 px, the trace +- 48 px, rounded out to cells
        assert area_share(regions, frames.shape[1:3]) <= 0.2, (index, regions)
        head = (index * SWEEP) % frames.shape[2]
        assert any(b.x0 <= head < b.x1 and b.y0 <= ECG_TOP and b.y1 >= ECG_TOP + ECG_HEIGHT for b in regions)
        assert all(b.width >= 96 and b.height >= 96 for b in regions)


def test_fixed_samples_and_the_first_frame_are_detected_whole():
    # defect caught: a fixed sample (the safety net for everything the change test misses)
    # cropped to the regions that changed in it
    count = 30
    frames, _ = ultrasound_cine(count)
    chosen = regions_by_frame(build_dataset(with_ecg(frames)))
    assert all(chosen[index] is None for index in fixed(count))


class CropEdgeDetector:
    """A fake back-end: 'reads' a confident line across the image it is given, edge to edge."""

    name = "fake"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def read(self, frame_rgb8: np.ndarray) -> list:
        self.shapes.append(frame_rgb8.shape[:2])
        rows, columns = frame_rgb8.shape[:2]
        return [TextReading(RedactionBox(0, rows // 2 - 8, columns, rows // 2 + 8), "SKAANNA", 0.99)]


def test_a_box_on_a_crop_edge_sends_the_whole_frame_and_boxes_come_back_in_frame_coordinates():
    # defect caught: a line of text cut by the crop edge redacted only up to the edge; boxes
    # found in a crop left in crop coordinates
    count = 30
    frames, _ = ultrasound_cine(count)
    ds = build_dataset(with_ecg(frames))
    detector = CropEdgeDetector()
    detection = DetectionFrames(ds, PixelPolicy(), count)
    for index, _frame, _photometric, rendered, regions in detection:
        before = len(detector.shapes)
        boxes = detection.detect(detector, rendered, regions)
        if index == 5:  # sent for its sweep only: a crop first, then the whole frame
            assert regions is not None and len(regions) == 1
            (region,) = regions
            assert detector.shapes[before:] == [(region.height, region.width), frames.shape[1:3]]
            assert boxes == [RedactionBox(0, frames.shape[1] // 2 - 8, frames.shape[2], frames.shape[1] // 2 + 8)]
            assert detection.selector is not None and detection.selector.regions is None
            break
    else:
        pytest.fail("frame 5 was not sent")


def test_a_box_inside_a_crop_is_shifted_back_and_needs_no_second_look():
    # defect caught: boxes from a crop in crop coordinates (the wrong place blanked), or every
    # crop detected twice
    count = 30
    frames, _ = ultrasound_cine(count)
    ds = build_dataset(with_ecg(frames))

    class Inside(CropEdgeDetector):
        def read(self, frame_rgb8):
            self.shapes.append(frame_rgb8.shape[:2])
            return [TextReading(RedactionBox(20, 30, 60, 46), "SKAANNA", 0.99)]

    detector = Inside()
    detection = DetectionFrames(ds, PixelPolicy(), count)
    for index, _frame, _photometric, rendered, regions in detection:
        before = len(detector.shapes)
        boxes = detection.detect(detector, rendered, regions)
        if index == 5:
            assert regions is not None
            assert len(detector.shapes) - before == len(regions)
            assert {(b.x0, b.y0) for b in boxes} == {(r.x0 + 20, r.y0 + 30) for r in regions}
            break


def test_late_text_next_to_an_ecg_is_removed(local_detector, reader):
    # defect caught: a crop fitted to the ECG that cuts off text appearing beside it, or a frame
    # sent for the ECG and the text that is not shown the text
    count, shown = 40, range(25, 31)
    frames, _ = ultrasound_cine(count)
    with_ecg(frames)
    head = (shown[0] * SWEEP) % frames.shape[2]
    spec = TextSpec("NOWAK 19610302", head - 60, ECG_TOP - 22, "aileron", 16, (255, 255, 255))
    mask = np.zeros(frames.shape[1:3], dtype=bool)
    for index in shown:
        draw_text(frames[index], mask, spec)
    source = roundtrip(build_dataset(frames, burned_in="YES"))
    assert "NOWAK" in reader.joined(frames[shown[0]]), "the judge should read the text before"
    regions = regions_by_frame(roundtrip(source))[shown[0]]
    assert regions is not None, "frame 25 should be detected in a crop (the path under test)"

    ds = roundtrip(source)
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.redacted and shown[0] in result.frames_scanned
    after = pixel_array(roundtrip(ds))
    for index in shown:
        joined = reader.joined(after[index])
        assert "NOWAK" not in joined and "19610302" not in joined, f"frame {index}"
    covered = np.zeros(mask.shape, dtype=bool)
    for box in result.boxes:
        covered[box.y0 : box.y1, box.x0 : box.x1] = True
    assert (covered | ~mask).all(), "some of the text's pixels are outside every box"


def test_a_caption_growing_letter_by_letter_beside_an_ecg_is_removed_whole(local_detector, reader):
    # defect caught: each frame's crop around the newest letter cutting the word, the letters
    # before it (in the crop's margin, or beyond its edge) left in place; boxes not shifted back
    count, start = 60, 21
    caption = "KOWALSKA-WISNIEWSKA ANNA"
    frames, _ = ultrasound_cine(count)
    with_ecg(frames)
    mask = np.zeros(frames.shape[1:3], dtype=bool)
    for index in range(start, count):
        letters = min(index - start + 1, len(caption))
        draw_text(frames[index], mask, TextSpec(caption[:letters], 150, 452, "aileron", 16, (255, 255, 0)))
    source = roundtrip(build_dataset(frames, burned_in="YES"))
    last = frames[-1]
    assert "KOWALSKA" in reader.joined(last), "the judge should read the caption before"

    ds = roundtrip(source)
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.redacted
    after = pixel_array(roundtrip(ds))
    for index in range(start + 4, count, 3):
        joined = reader.joined(after[index])
        assert not [w for w in ("KOWALSKA", "WISNIEWSKA", "ANNA", "KOWAL", "WISN") if w in joined], f"frame {index}"
    covered = np.zeros(mask.shape, dtype=bool)
    for box in result.boxes:
        covered[box.y0 : box.y1, box.x0 : box.x1] = True
    assert (covered | ~mask).all(), "some of the caption's pixels are outside every box"


def test_a_caption_fading_in_beside_an_ecg_is_sent_where_it_is():
    # defect caught: the baseline refreshed over the whole frame when only a crop was detected:
    # the ECG sends every frame, each step of the fade is below the threshold against the frame
    # before, and the caption is never shown to the detector
    count, start = 40, 12
    frames, _ = ultrasound_cine(count)
    with_ecg(frames)
    mask = np.zeros(frames.shape[1:3], dtype=bool)
    for index in range(start, count):
        level = min(255, 12 * (index - start + 1))  # 12 levels a frame: under FAINT (32) a step
        draw_text(frames[index], mask, TextSpec("KOWALSKI", 470, 456, "aileron", 16, (level, level, level)))
    chosen = regions_by_frame(build_dataset(frames))
    ys, xs = np.nonzero(mask)
    shown = [
        index
        for index, regions in chosen.items()
        if start < index < start + 12
        and (
            regions is None
            or any(b.x0 <= xs.min() and xs.max() < b.x1 and b.y0 <= ys.min() and ys.max() < b.y1 for b in regions)
        )
        and index not in fixed(count)
    ]
    assert shown, "the fading caption was never in a crop shown to the detector before a fixed sample"


def test_a_service_detector_gets_one_call_for_all_changed_regions():
    # defect caught: Rekognition billed once per changed region of a frame (it bills per image,
    # whatever its size), or regions merged for the local detector, which reads crops cheaply
    count = 30
    frames, _ = ultrasound_cine(count)
    with_ecg(frames)
    for index in range(5, 9):  # text appears far from the sweep while it runs
        draw_text(frames[index], np.zeros(frames.shape[1:3], dtype=bool), TextSpec("ROE", 560, 20, "aileron", 16))
    ds = build_dataset(frames)

    class Service:
        name = "service"

        def __init__(self) -> None:
            self.shapes: list[tuple[int, int]] = []

        def read(self, frame_rgb8):
            self.shapes.append(frame_rgb8.shape[:2])
            return []

    detector = Service()
    detection = DetectionFrames(ds, PixelPolicy(), count)
    for _index, _frame, _photometric, rendered, regions in detection:
        before = len(detector.shapes)
        detection.detect(detector, rendered, regions)
        if regions is not None and len(regions) > 1:
            assert len(detector.shapes) - before == 1
            top, bottom = min(r.y0 for r in regions), max(r.y1 for r in regions)
            left, right = min(r.x0 for r in regions), max(r.x1 for r in regions)
            assert detector.shapes[-1] == (bottom - top, right - left)
            return
    pytest.fail("no frame had two changed regions")
