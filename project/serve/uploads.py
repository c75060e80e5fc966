"""Uploaded images: checked before anything else touches them, each problem a 4xx status and one line.

Nothing from a request reaches the file system: the upload is read into memory (its size capped by the server) and
decoded by Pillow with a cap on its pixels, so a "decompression bomb" (a few KB of PNG that unpacks to gigapixels)
is refused before it is unpacked.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Mapping, Union

from PIL import Image

from project.transforms import to_rgb

#: The form field the image is sent in.
UPLOAD_FIELD = "image"
#: Pictures larger than this are refused (a 50-megapixel phone photo fits; a decompression bomb does not).
MAX_IMAGE_PIXELS = 60_000_000


@dataclass(frozen=True)
class Rejected:
    """Why a request cannot be answered: its HTTP status and a one-line message."""

    status: int
    message: str


def read_upload(form: Mapping, max_pixels: int = MAX_IMAGE_PIXELS) -> Union[Image.Image, Rejected]:
    """The upright RGB image of a multipart form's :data:`UPLOAD_FIELD`, or why there is none."""
    upload = form.get(UPLOAD_FIELD) if hasattr(form, "get") else None
    if upload is None or not hasattr(upload, "file"):
        return Rejected(400, f"no image: send it as multipart/form-data in a field named '{UPLOAD_FIELD}'")
    content_type = (getattr(upload, "content_type", None) or "").split(";")[0].strip().lower()
    if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
        return Rejected(415, f"'{content_type}' is not an image type: upload a JPEG, PNG, WebP, BMP, GIF or TIFF")
    data = upload.file.read()
    if not data:
        return Rejected(400, "the uploaded file is empty")
    return decode_image(data, max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Union[Image.Image, Rejected]:
    """Decode image bytes to an upright RGB image, refusing what is not an image, is cut short, or is too large."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return Rejected(413, f"the image is {width}x{height} pixels; at most {max_pixels // 1_000_000} "
                                     f"megapixels are accepted")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejected(413, "the image is too large to decode")
    except Image.UnidentifiedImageError:
        return Rejected(415, "not a readable image (unknown or corrupt format)")
    except (OSError, SyntaxError, ValueError) as err:  # truncated or damaged pixel data
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        return Rejected(422, f"the image cannot be decoded ({reason})")
