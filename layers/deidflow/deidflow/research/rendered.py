"""WADO-RS rendered resources (PS3.18 8.3.5, 10.4.1.1.3) and thumbnails: a frame as a viewer shows it.

The pixels come from the same renderer that text detection uses (modality LUT, VOI window,
MONOCHROME1 inverted, palette applied), so what a researcher previews is what was scanned.
PNG is always available (no dependency); JPEG when Pillow is installed (the Lambda layer has it).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom

from ..pixels.png import encode_png
from ..pixels.render import PixelDecodeError, decode_frame, render_for_detection

THUMBNAIL_SIZE = 128  # the longest side of /thumbnail, in pixels
MAX_VIEWPORT = 2048
_MEDIA = ("image/jpeg", "image/png")  # in the order served when the client takes both


class RenderError(ValueError):
    """What a rendered request cannot have (a 400 or 406 with this reason)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def chosen_media(accept: str) -> str:
    """image/jpeg (PS3.18's default), or image/png when asked for it or when JPEG cannot be made."""
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()] or ["*/*"]
    for media in wanted:
        if media in ("*/*", "image/*", "image/jpeg") and _jpeg_available():
            return "image/jpeg"
        if media in ("*/*", "image/*", "image/png"):
            return "image/png"
    raise RenderError(406, "rendered frames are served as image/jpeg or image/png")


def viewport_of(params: Mapping[str, Sequence[str]], thumbnail: bool) -> tuple[int, int] | None:
    """The `viewport=w,h` the client asked for (the thumbnail's own size otherwise)."""
    if thumbnail and "viewport" not in params:
        return (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    values = params.get("viewport")
    if not values:
        return None
    parts = values[0].split(",")
    if len(parts) < 2 or not all(p.strip().isdigit() and 0 < int(p) <= MAX_VIEWPORT for p in parts[:2]):
        raise RenderError(400, f"viewport is 'width,height', each 1..{MAX_VIEWPORT}")
    return int(parts[0]), int(parts[1])


def quality_of(params: Mapping[str, Sequence[str]]) -> int:
    values = params.get("quality")
    if not values:
        return 90
    if not values[0].isdigit() or not 1 <= int(values[0]) <= 100:
        raise RenderError(400, "quality is an integer from 1 to 100")
    return int(values[0])


def render(data: bytes, frame: int, media: str, viewport: tuple[int, int] | None, quality: int = 90) -> bytes:
    """Frame `frame` (1-based) of the instance in `data`, rendered and encoded as `media`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            pixels, photometric = decode_frame(ds, frame - 1)
            rgb = render_for_detection(pixels, ds, photometric, frame - 1)
        except (PixelDecodeError, ValueError, IndexError, AttributeError, KeyError, NotImplementedError) as exc:
            raise RenderError(406, f"this instance cannot be rendered ({type(exc).__name__})") from None
    if viewport is not None:
        rgb = _fit(rgb, *viewport)
    if media == "image/png":
        grey = (
            rgb[:, :, 0]
            if bool(np.all(rgb[:, :, 0] == rgb[:, :, 1])) and bool(np.all(rgb[:, :, 1] == rgb[:, :, 2]))
            else rgb
        )
        return encode_png(np.ascontiguousarray(grey))
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scaled down (never up) to fit width x height, keeping the aspect ratio (area averaging)."""
    rows, columns = rgb.shape[:2]
    step = max(1, int(np.ceil(max(columns / width, rows / height))))
    if step == 1:
        return rgb
    rows_kept, columns_kept = rows // step * step, columns // step * step
    blocks = rgb[:rows_kept, :columns_kept].reshape(rows_kept // step, step, columns_kept // step, step, -1)
    return np.ascontiguousarray(blocks.mean(axis=(1, 3)).round().astype(np.uint8))


def _jpeg_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True
