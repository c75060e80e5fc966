"""Photo views: a UTKFace chip made to look like a face cut out of an ordinary photo (``--photo_views``).

UTKFace's chips are sharp, evenly lit 200 px faces. A face found in a photo by ``--detect_faces`` is often smaller
(upscaled to the chip size), darker or brighter, JPEG-compressed and resampled by the turn that levels its eyes,
and it is cut out where a face detector's landmarks say, a little off UTKFace's own placement; each of these alone
changes the default model's group for some test chips (measured: docs/results.md, "Small changes to a chip").
Training on such copies as well teaches the heads that they are the same face. The copy of an image is fixed (seeded
by its path), so it is extracted into a feature cache once, like the mirror image.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

#: Bumped when the degradation changes: part of the photo-view feature cache's key.
PHOTO_VIEW_VERSION = 2
#: The copy's face is scaled to a side drawn log-uniformly in this range (pixels) and back to the chip's size,
#: turned by up to ``MAX_TURN`` degrees and back, its brightness scaled within ``BRIGHTNESS`` and saved as a JPEG of a
#: quality within ``JPEG_QUALITY``. The ranges reach a little further down than the faces benchmark's scenes (40-400
#: px, 30 degrees, 0.6-1.4, quality 40-95; a face larger than the chip is only scaled down there, which changes
#: little), whose own random scenes are never used here.
FACE_SIDE = (32.0, 256.0)
MAX_TURN = 30.0
BRIGHTNESS = (0.5, 1.5)
JPEG_QUALITY = (30, 95)
#: How far the cut is off the chip's own placement (standard deviations of a normal, clipped at 3 of them): the
#: centre by a share of the face's side, its size by a log factor, its turn in degrees. RetinaFace's aligned chips
#: were this far from the pasted faces on 120 scenes of the faces benchmark's seed 1 (its seed 0 is the benchmark)
#: before its eye refinement, which since cuts closer: photo views are cut a little rougher than faces now are, on
#: purpose: photo views cut with the narrower errors made a model that agreed with its chips less often (measured:
#: docs/decisions.md, "Photo views cut as closely as RetinaFace now cuts (not adopted)").
CUT_SHIFT = 0.025
CUT_LOG_SCALE = 0.08
CUT_TURN = 5.0


def photo_rng(relpath: str) -> np.random.Generator:
    """The random numbers of one image's photo view: seeded by its path, the same in every run and process."""
    digest = hashlib.sha256(f"photo-view-v{PHOTO_VIEW_VERSION}:{relpath}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def photo_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` (an RGB chip) as a face found in a photo: mirrored or not, rescaled, relit, turned, compressed,
    turned back and cut out by an aligner a little off, at the chip's own size."""
    side = image.width
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    face = round(math.exp(rng.uniform(math.log(FACE_SIDE[0]), math.log(FACE_SIDE[1]))))
    image = ImageEnhance.Brightness(image.resize((face, face), Image.LANCZOS)).enhance(rng.uniform(*BRIGHTNESS))
    # the face on a larger canvas of its border colour, so a cut a little off or larger stays inside it
    border = _edge_colour(image)
    canvas = Image.new("RGB", (2 * face, 2 * face), border)
    canvas.paste(image, (face // 2, face // 2))
    angle = rng.uniform(-MAX_TURN, MAX_TURN)
    turned = canvas.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=border)
    buffer = io.BytesIO()
    turned.save(buffer, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    upright = Image.open(buffer).convert("RGB").rotate(-angle + _jitter(rng, CUT_TURN), resample=Image.BICUBIC,
                                                       fillcolor=border)
    offset = face // 2 - face / 2  # where the face's centre is from the canvas centre (half a pixel or none)
    centre_x = upright.width / 2 + offset + face * _jitter(rng, CUT_SHIFT)
    centre_y = upright.height / 2 + offset + face * _jitter(rng, CUT_SHIFT)
    half = face * math.exp(_jitter(rng, CUT_LOG_SCALE)) / 2
    return upright.crop((round(centre_x - half), round(centre_y - half), round(centre_x + half),
                         round(centre_y + half))).resize((side, side), Image.BICUBIC)


def _jitter(rng: np.random.Generator, scale: float) -> float:
    return float(np.clip(rng.normal(0.0, scale), -3 * scale, 3 * scale))


def _edge_colour(image: Image.Image) -> tuple:
    """The mean colour of the image's border: what the turned corners are filled with (they are cut off again)."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in border.mean(axis=0))
