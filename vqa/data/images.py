"""Image decoding to upright 8-bit RGB, with a named error for files that fail to decode."""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageDecodeError", "load_image", "to_rgb", "BAD_IMAGE_POLICIES", "DEFAULT_BACKGROUND"]

logger = logging.getLogger(__name__)

# What to do when an image cannot be read: "raise" stops with ImageDecodeError,
# "skip" logs the path and drops the question.
BAD_IMAGE_POLICIES = ("raise", "skip")

# Transparent pixels are composited on white, the page colour that the images
# with alpha in these data sets (PNG drawings and icons) are meant to be seen on.
DEFAULT_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(OSError):
    """An image file that is missing, truncated or not decodable; the message names the file."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path = os.fspath(path)
        super().__init__(f"cannot load image {self.path}: {reason}")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 (checked with Pillow
    # 13.0), so scale 0..65535 to 0..255 instead (65535 / 257 = 255).
    # NOTE: mode "I" is assumed to hold 16-bit data, as Pillow uses it for
    # 16-bit PNG and TIFF files. Wider 32-bit values saturate at 255.
    pixels = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16-bit grayscale is scaled by 1/257; modes with transparency (RGBA, LA,
    PA, P or L or RGB with a ``transparency`` entry) are composited onto
    ``background``; CMYK, YCbCr, 1 and other modes use Pillow's conversion.
    Mode "F" is clipped to [0, 255] as Pillow's conversion does.

    Args:
        image: A decoded image.
        background: RGB colour behind transparent pixels.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def load_image(
    path: Union[str, os.PathLike],
    policy: str = "raise",
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> Optional[Image.Image]:
    """Decode an image file to an upright 8-bit RGB image.

    The EXIF orientation tag is applied, so a phone photo stored 4032x3024
    with a 90-degree tag comes back 3024x4032. The whole file is decoded here,
    so a truncated file fails now rather than inside a transform.

    Args:
        path: Image file.
        policy: ``"raise"`` raises ``ImageDecodeError``; ``"skip"`` logs a
            warning naming the file and returns None.
        background: RGB colour behind transparent pixels.

    Returns:
        The RGB image, or None under ``"skip"`` when the file cannot be read.

    Raises:
        ImageDecodeError: Under ``"raise"``, if the file is missing or fails to decode.
        ValueError: If ``policy`` is unknown.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"unknown bad-image policy {policy!r}; valid policies: {', '.join(BAD_IMAGE_POLICIES)}")
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = to_rgb(upright, background)
            # Copy so the result does not depend on the closed file.
            return rgb.copy() if rgb is image else rgb
    except FileNotFoundError:
        error = ImageDecodeError(path, "file not found")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as caught:
        error = ImageDecodeError(path, f"{type(caught).__name__}: {caught}")
    if policy == "raise":
        raise error
    logger.warning("skipping image: %s", error)
    return None
