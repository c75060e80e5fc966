"""Uploaded images: checked before anything else touches them, each problem a 4xx status and one line.

A photo comes as a multipart form's ``image`` field (the page, ``curl -F image=@photo.jpg``) or as the raw body of
the request (``curl --data-binary @photo.jpg -H "Content-Type: image/jpeg"``, as many image APIs take it):
:class:`RawImageBodies` turns the second into the first before LitServe reads the request, and answers a body that
is neither (JSON, text, a form whose boundary is missing or broken) with a 4xx line, never a 500.

Nothing from a request reaches the file system: the upload is read into memory (its size capped by the server) and
decoded by Pillow with a cap on its pixels, so a "decompression bomb" (a few KB of PNG that unpacks to gigapixels)
is refused before it is unpacked.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Tuple, Union

from PIL import Image

from project.core.transforms import to_rgb

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


#: how to send a photo, for the errors that say it was sent some other way
HOW_TO_SEND = (f"send the image as the request body (Content-Type: image/jpeg, image/png, ...) or as "
               f"multipart/form-data in a field named '{UPLOAD_FIELD}'")
TOO_LARGE = "the upload is larger than the server accepts (--max_upload_mb)"
#: the media types LitServe reads as a form (everything else it would parse as JSON)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _media_type(headers: List[Tuple[bytes, bytes]]) -> Tuple[str, str]:
    """The request's media type (lower case, no parameters) and its full ``Content-Type`` header."""
    value = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
    return value.split(";")[0].strip().lower(), value


def _multipart_boundary(content_type: str) -> Optional[str]:
    """The boundary a multipart ``Content-Type`` declares (``None`` when it declares none)."""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary" and value.strip('"'):
            return value.strip('"')
    return None


class RawImageBodies:
    """ASGI middleware for ``POST path``: a raw image body becomes a one-field multipart form; a body LitServe could
    only fail on becomes a 4xx ``{"error": ...}`` answer.

    ``max_bytes`` caps the body while it is read, before anything is parsed.
    """

    def __init__(self, app: Callable, path: str = "/predict", max_bytes: int = 20 * 1024 * 1024) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        media_type, content_type = _media_type(scope["headers"])
        if media_type == "multipart/form-data":
            boundary = _multipart_boundary(content_type)
            if boundary is None:
                return await _answer(send, 400, f"the multipart body declares no boundary: {HOW_TO_SEND}")
            body = await _read_body(receive, self.max_bytes)
            if body is None:
                return await _answer(send, 413, TOO_LARGE)
            if f"--{boundary}".encode("latin-1") not in body:
                return await _answer(send, 400, f"the multipart body does not contain its boundary: {HOW_TO_SEND}")
            return await self.app(scope, _replay(body, receive), send)
        if media_type in FORM_TYPES:
            return await self.app(scope, receive, send)
        if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
            sent = f"'{media_type}'" if media_type else "a body without a Content-Type"
            return await _answer(send, 415, f"{sent} is not an image: {HOW_TO_SEND}")
        body = await _read_body(receive, self.max_bytes)
        if body is None:
            return await _answer(send, 413, TOO_LARGE)
        form, form_type = _as_form(body, content_type)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", form_type.encode("latin-1")), (b"content-length", str(len(form)).encode())]
        return await self.app({**scope, "headers": headers}, _replay(form, receive), send)


async def _read_body(receive, max_bytes: Optional[int]) -> Optional[bytes]:
    """The whole request body, or ``None`` as soon as it exceeds ``max_bytes``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that hands ``body`` on once, then passes on what the client's ``receive`` says (its
    disconnect, when it goes)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _as_form(body: bytes, content_type: str) -> Tuple[bytes, str]:
    """``body`` as a multipart form with one file field, :data:`UPLOAD_FIELD`; and the form's ``Content-Type``."""
    boundary = "age-classifier-raw-upload-7d3f1c"
    while boundary.encode() in body:
        boundary += "x"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{UPLOAD_FIELD}\"; filename=\"upload\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode("latin-1")
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def _answer(send, status: int, message: str) -> None:
    """A ``{"error": message}`` JSON answer with ``status``, straight from the middleware."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
