"""Encoded images into the S x S RGB uint8 squares the network trains on (paper §2).

Each image is put in the form the paper trains on (§2): rescaled so that its shorter side is S
(256 for ImageNet) and centre-cropped to S x S (`resize_square`), or warped whole to S x S as
Caffe's data was (`resize_mode='warp'`). Images smaller than S are upscaled by the same rule,
so an image smaller than the network's crop never reaches the device.

Bad input (§2 assumes clean RGB JPEGs; real folders are not). Grayscale, palette, CMYK,
16-bit and RGBA/LA images are converted to RGB (alpha composited over white: the colour under
a transparent pixel is undefined, often black). An image that cannot be decoded, or is
truncated, makes `decode_square` raise `BadExample` with the path and a reason from
`SKIP_REASONS` (a source raises it for a file it cannot read); the Grain pipeline in
`input_pipeline.py` skips and counts those unless the config asks for strict mode.

This module imports neither JAX nor TensorFlow: Grain worker processes decode with it, and
should start fast.
"""

from __future__ import annotations

import io

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

# Why an example was skipped; the order is the order of the counts in a batch.
SKIP_REASONS = ("unreadable", "undecodable", "truncated")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The formats of those extensions, the only ones an image's bytes are decoded as. Pillow
# otherwise guesses the format from the content, and its EPS decoder runs Ghostscript (an
# interpreter of the file's PostScript) on a .jpg that holds PostScript.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Bilinear with Pillow's antialiasing (its filter support widens when shrinking), the resize
# torchvision's ImageNet recipes use. The paper does not name its filter.
RESAMPLE = Image.Resampling.BILINEAR


class BadExample(ValueError):
    """An example that cannot be turned into an image; carries why and where.

    Attributes:
      reason: one of SKIP_REASONS.
      where: the file path or `dataset[split][index]` of the example.
    """

    def __init__(self, reason: str, where: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        self.reason, self.where = reason, where
        super().__init__(f"{reason} image {where}" + (f": {detail}" if detail else ""))


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB where that is sound.

    Args:
      image: a loaded Pillow image.

    Returns:
      An RGB image of the same size.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16-bit (and 32-bit int) grayscale: Pillow's own conversion clips at 255 instead of
        # scaling, which would turn most of the image white.
        x = np.asarray(image, dtype=np.float64)
        x = x / 257.0 if mode.startswith("I") else x
        gray = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    # L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV.
    return image.convert("RGB")


RESIZE_MODES = ("shorter_side", "warp")


def check_resize_mode(mode: str) -> None:
    """Raises a ValueError naming the modes for a `config.resize_mode` that is not one."""
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"resize_mode={mode!r} is not one of {RESIZE_MODES}: 'shorter_side' (§2: shorter "
            "side to resize_size, centre square) or 'warp' (the whole image to resize_size x "
            "resize_size, as Caffe's data)."
        )


def resize_square(image: Image.Image, size: int, mode: str = "shorter_side") -> np.ndarray:
    """Makes the S x S image of §2 (or Caffe's warp).

    'shorter_side' (§2) rescales the shorter side to `size` and takes the central square: the
    central square of the original is resampled straight to size x size, which is the same
    mapping as resizing the whole image and cropping, without resampling the discarded sides.
    'warp' resamples the whole image to size x size whatever its aspect ratio, as Caffe's
    `convert_imageset --resize_height --resize_width` made the ILSVRC-2012 data that its
    bvlc_alexnet model card was measured on. Small images are upscaled by the same rule.

    Args:
      image: an RGB or L Pillow image.
      size: S, the output side.
      mode: 'shorter_side' or 'warp' (`config.resize_mode`).

    Returns:
      uint8 array (size, size, channels of `image`).
    """
    check_resize_mode(mode)
    width, height = image.size
    if (width, height) != (size, size):
        if mode == "warp":
            image = image.resize((size, size), RESAMPLE)
        else:
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            box = (left, top, left + side, top + side)
            image = image.resize((size, size), RESAMPLE, box=box)
    return np.asarray(image, dtype=np.uint8)


def decode_square(data: bytes, size: int, where: str, mode: str = "shorter_side") -> np.ndarray:
    """Decodes an encoded image (JPEG, PNG, ...) into the §2 S x S RGB uint8 array.

    JPEGs are decoded at reduced scale by libjpeg's DCT scaling (`draft`) when the image is at
    least twice S on both sides, which makes large photos several times cheaper to decode;
    the result is still at least S on the shorter side before the resize.

    Args:
      data: the encoded file.
      size: S.
      where: path or key, for error messages.
      mode: `resize_square`'s mode.

    Returns:
      uint8 array (size, size, 3).

    Raises:
      BadExample: 'truncated' or 'undecodable'.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.draft(None, (size, size))
            image.load()
            return resize_square(to_rgb(image), size, mode)
    except OSError as e:  # Pillow reports truncated data as OSError.
        message = str(e)
        if "truncated" in message.lower() or "broken data stream" in message:
            raise BadExample("truncated", where, message) from e
        raise BadExample("undecodable", where, message) from e
    except (UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadExample("undecodable", where, str(e)) from e


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG-encodes an RGB uint8 image without chroma subsampling (4:4:4)."""
    out = io.BytesIO()
    Image.fromarray(image, "RGB").save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


_LOGGED: set[str] = set()


def log_bad_example(error: BadExample) -> None:
    """Logs a skipped example once per process, not once per epoch."""
    if error.where not in _LOGGED:
        _LOGGED.add(error.where)
        logging.warning("Skipping %s", error)
