"""AgeGroupPredictor: age-group probabilities for paths, PIL images or arrays, one face or every face in a photo.

    predictor = AgeGroupPredictor.pretrained()            # the bundled model; or .from_checkpoint("last.ckpt")
    for result in predictor.predict(["a.jpg", pil_image, numpy_array]):
        print(result.source, result.group, result.age, result.error)

Every face of a photo is found and predicted on its own where the faces extra is installed (else each whole image
is one face); an image that already is a face chip, one face filling the frame, is predicted as it is. Images go
through exactly the training preprocessing (:mod:`project.core.transforms`). Only the model is needed: no dataset, no
feature cache, no network, no Lightning.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image

from project.common.errors import UserError
from project.config.devices import resolve_device
from project.core.age_groups import GROUP_LABELS
from project.core.calibration import AgeEstimate
from project.core.transforms import ImageInput, build_transform, load_rgb_image
from project.inference.detectors import AUTO, auto_face_detector
from project.inference.faces import DetectedFace, FaceDetector
from project.models.bundle import PRETRAINED_DIR, is_bundle, load_bundle
from project.models.checkpoint import TrainedNet, load_trained_net

#: the note of a photo in which the detector found no face (a row of its own, never a crash)
NO_FACE = "no face detected (smaller than --min_face, turned away, or none there)"
#: A square image one of whose faces has a UTKFace-like crop overlapping the whole image at least this much
#: (intersection over union) is a face chip already, as UTKFace's are: it is predicted as it is, since cutting it
#: out again would only resample it (and a second, small "face" in it is a false detection). Chosen on UTKFace's
#: validation chips, nearly all of which overlap far more; a face in a photo, even a close portrait, far less
#: (docs/decisions.md, "A photo is read as a photo").
CHIP_OVERLAP = 0.5
#: how far from square (difference of the sides over the longer side) a face chip may be
CHIP_SQUARENESS = 0.05


@dataclass
class Prediction:
    """The prediction for one image (or one face of it with a face detector).

    ``error`` is set, and the prediction fields are empty, when the image could not be read (or had no face).
    ``face_box`` is ``(x, y, w, h)`` of the detected face's UTKFace-like crop in the upright image, ``face_score``
    the detector's confidence and ``landmarks`` its left eye, right eye and nose ``(x, y)`` (RetinaFace and dlib's
    detectors; none from Haar).
    ``age`` (years) and ``age_interval`` (``(low, high)``, holding the true age as often as the model's calibration
    level says, 80 % by default) are set for models that learned ages (the default recipe); the notebook recipe's
    models give none.
    """

    source: str
    group: Optional[str] = None
    group_index: Optional[int] = None
    confidence: Optional[float] = None
    probabilities: Dict[str, float] = field(default_factory=dict)
    face_box: Optional[Tuple[int, int, int, int]] = None
    error: Optional[str] = None
    age: Optional[float] = None
    age_interval: Optional[Tuple[float, float]] = None
    face_score: Optional[float] = None
    landmarks: Optional[List[Tuple[float, float]]] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict:
        record = asdict(self)
        record["face_box"] = list(self.face_box) if self.face_box else None
        record["age_interval"] = list(self.age_interval) if self.age_interval else None
        record["landmarks"] = [list(point) for point in self.landmarks] if self.landmarks else None
        return record


@dataclass
class ImageResult:
    """One input: its upright RGB image (``None`` if unreadable) and its predictions (one per face)."""

    source: str
    image: Optional[Image.Image]
    predictions: List[Prediction]


def describe_error(err: BaseException) -> str:
    """A one-line reason why an image could not be used."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not an image"
    text = " ".join(str(err).split()) or type(err).__name__
    if type(err).__name__ == "UnidentifiedImageError":
        return "not a readable image (unknown or corrupt format)"
    return f"cannot read image ({type(err).__name__}: {text[:200]})"


def source_name(item: ImageInput, index: int) -> str:
    """How an input is named in the results: its path, or ``<PIL image #i>`` / ``<array #i>``."""
    if isinstance(item, Image.Image):
        return f"<PIL image #{index}>"
    if isinstance(item, np.ndarray):
        return f"<array #{index}>"
    return str(item)


def _as_list(images) -> List[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@runtime_checkable
class PredictorNet(Protocol):
    """The network a predictor runs: a :class:`~project.models.checkpoint.TrainedNet` (a checkpoint or bundle, in
    torch) or an :class:`~project.inference.onnx_backend.OnnxNet` (an exported graph, in onnxruntime)."""

    #: which model answers: a bundled model's name, or a checkpoint's or exported file's name
    name: str
    #: the side of the square images it takes, in pixels
    image_size: int
    #: where and in what dtype :meth:`predict` wants its images
    device: torch.device
    dtype: torch.dtype

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[AgeEstimate]]:
        """Preprocessed images (``N x 3 x S x S``) -> calibrated group probabilities (``N x 5``) and, for models
        that learned ages, their ages and intervals."""
        ...


#: How a predictor runs its model: ``torch`` (the trained network) or ``onnx`` (an exported graph, onnxruntime).
BACKENDS = ("torch", "onnx")


def add_backend_argument(parser) -> None:
    """``--backend``, the same for the predict command and the server."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="torch, or onnx: onnxruntime on the CPU, with a file from age-classifier-export (a "
                             "checkpoint is exported in memory first); needs pip install -e .[onnx]")


class AgeGroupPredictor:
    """Age-group predictions for arbitrary images with a trained network.

    Args:
        model: a :class:`PredictorNet`: a :class:`~project.models.checkpoint.TrainedNet` (the network and its
            calibrations) or an :class:`~project.inference.onnx_backend.OnnxNet` (an exported one).
        device: where to run a ``TrainedNet``; ``None`` keeps it where it is (used for plots right after training).
    """

    def __init__(self, model: PredictorNet, device: Union[str, torch.device, None] = None) -> None:
        self.model = model
        if isinstance(model, TrainedNet):
            model.net.eval()
            if device is not None:
                model.net.to(resolve_device(device))
        self.transform = build_transform(model.image_size)
        self._auto_detector = None  # the default face detector, built on first use

    @property
    def model_name(self) -> str:
        """Which model answers: the bundled model's name, or a checkpoint's or exported file's name."""
        return self.model.name

    @classmethod
    def pretrained(cls, device: Union[str, torch.device] = "cpu", backend: str = "torch") -> "AgeGroupPredictor":
        """The model bundled with the package (``MODEL_CARD.md``): no training, no download, no network."""
        return cls.from_checkpoint(PRETRAINED_DIR, device=device, backend=backend)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike, None] = None, device: Union[str, torch.device] = "cpu",
                        backend: str = "torch") -> "AgeGroupPredictor":
        """Load a checkpoint written by training (safely: ``weights_only``, nothing downloaded), a bundled model's
        folder (``age-classifier-bundle``), or, for ``None``, the bundled model of the package.

        ``backend="onnx"`` runs the model with onnxruntime on the CPU: ``path`` is then a file written by
        ``age-classifier-export``, or a checkpoint or bundle, which is exported (in memory) first.
        """
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        path = PRETRAINED_DIR if path is None else path
        if backend == "torch":
            if str(path).lower().endswith(".onnx"):
                raise UserError(f"{path} is an exported ONNX model: use --backend onnx")
            return cls(load_model(path, device=resolve_device(device)))
        from project.inference.onnx_backend import OnnxNet

        if str(path).lower().endswith(".onnx"):
            return cls(OnnxNet(path))
        trained = load_model(path)
        return cls(OnnxNet(export_to_bytes(trained), name=trained.name))

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(self, images: Union[ImageInput, Iterable[ImageInput]], batch_size: int = 32,
                face_detector: Union[str, FaceDetector, None] = AUTO) -> List[Prediction]:
        """Predict paths, PIL images or uint8 arrays (one or a list); unreadable files get ``error`` set.

        ``face_detector``: ``"auto"`` (the default) finds every face with RetinaFace where the faces extra is
        installed, else takes each whole image as one face (and says so once); a detector
        (:func:`project.inference.detectors.make_face_detector`) finds them its way; ``None`` takes each whole
        image as one face. Every face found is predicted on its own, from its UTKFace-like chip; a face chip
        already (a square image that one face fills, see :data:`CHIP_OVERLAP`) is predicted as it is.
        """
        return [p for result in self.iter_results(images, batch_size, face_detector) for p in result.predictions]

    def iter_results(self, images: Union[ImageInput, Iterable[ImageInput]], batch_size: int = 32,
                     face_detector: Union[str, FaceDetector, None] = AUTO) -> Iterator[ImageResult]:
        """Like :meth:`predict`, but one :class:`ImageResult` per input, keeping the loaded image (for drawing).

        Inputs are read ``batch_size`` at a time, so a folder of thousands of photos never sits in memory.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1 (got {batch_size})")
        if isinstance(face_detector, str):
            face_detector = self._resolve_detector(face_detector)
        indexed = list(enumerate(_as_list(images)))
        for chunk in _chunks(indexed, batch_size):
            loaded = [self._load(item, index, face_detector) for index, item in chunk]
            crops = [(pred, crop) for result, crop_list in loaded for pred, crop in zip(result.predictions, crop_list)
                     if crop is not None]
            for batch in _chunks(crops, batch_size):
                self._fill(batch)
            yield from (result for result, _ in loaded)

    def _resolve_detector(self, name: str) -> Optional[FaceDetector]:
        if name != AUTO:
            raise UserError(f"face_detector must be {AUTO!r}, None or a detector (got {name!r})")
        if self._auto_detector is None:
            self._auto_detector = auto_face_detector() or False  # False: looked, none installed
        return self._auto_detector or None

    def probabilities(self, rgb_images: Sequence[Image.Image]) -> np.ndarray:
        """Calibrated probabilities (``N x 5``) for upright RGB images, through the training preprocessing."""
        return self._predict(rgb_images)[0]

    def _predict(self, rgb_images: Sequence[Image.Image]) -> Tuple[np.ndarray, Optional[AgeEstimate]]:
        batch = torch.stack([self.transform(image) for image in rgb_images])
        with torch.inference_mode():
            probabilities, ages = self.model.predict(batch.to(self.model.device, self.model.dtype))
        return probabilities.cpu().numpy(), ages

    def _load(self, item: ImageInput, index: int,
              face_detector: Optional[FaceDetector]) -> Tuple[ImageResult, List[Optional[Image.Image]]]:
        """Read one input; return its result skeleton and the crop (or face crops) to predict."""
        name = source_name(item, index)
        try:
            image = load_rgb_image(item)
        except Exception as err:  # any unreadable input is reported, the others go on
            return ImageResult(name, None, [Prediction(name, error=describe_error(err))]), [None]
        if face_detector is None:
            return ImageResult(name, image, [Prediction(name)]), [image]
        faces = face_detector.detect(image)
        if not faces:
            return ImageResult(name, image, [Prediction(name, error=NO_FACE)]), [None]
        chip_face = face_filling(faces, image.size)
        if chip_face is not None:  # a face chip already: predicted as it is
            faces = [chip_face]
        predictions = [Prediction(name, face_box=face.box, face_score=face.score, landmarks=face.landmarks)
                       for face in faces]
        return ImageResult(name, image, predictions), [image] if chip_face else [face.chip for face in faces]

    def _fill(self, batch: Sequence[Tuple[Prediction, Image.Image]]) -> None:
        probabilities, ages = self._predict([crop for _, crop in batch])
        for index, ((prediction, _), row) in enumerate(zip(batch, probabilities)):
            best = int(row.argmax())
            prediction.group_index = best
            prediction.group = GROUP_LABELS[best]
            prediction.confidence = float(row[best])
            prediction.probabilities = {label: float(p) for label, p in zip(GROUP_LABELS, row)}
            if ages is not None:
                prediction.age = float(ages.age[index])
                if ages.low is not None:
                    prediction.age_interval = (float(ages.low[index]), float(ages.high[index]))


def image_overlap(box: Tuple[int, int, int, int], size: Tuple[int, int]) -> float:
    """Intersection over union of a face's crop ``(x, y, w, h)`` and the whole ``(width, height)`` image."""
    x, y, w, h = box
    width, height = size
    inter = max(0, min(x + w, width) - max(x, 0)) * max(0, min(y + h, height) - max(y, 0))
    return inter / (w * h + width * height - inter)


def face_filling(faces: Sequence[DetectedFace], size: Tuple[int, int]) -> Optional[DetectedFace]:
    """The face that makes a ``(width, height)`` image a face chip (see :data:`CHIP_OVERLAP`), or ``None``."""
    width, height = size
    if not faces or abs(width - height) > CHIP_SQUARENESS * max(width, height):
        return None
    largest = max(faces, key=lambda face: image_overlap(face.box, size))
    return largest if image_overlap(largest.box, size) >= CHIP_OVERLAP else None


def load_model(path: Union[str, os.PathLike], device: Optional[torch.device] = None) -> TrainedNet:
    """A bundled model's folder or a training checkpoint, as a :class:`TrainedNet`."""
    return load_bundle(path, device=device) if is_bundle(path) else load_trained_net(path, device=device)


def export_to_bytes(trained: TrainedNet) -> bytes:
    """``trained`` exported to ONNX (``project.models.export``), in memory: for ``--backend onnx`` on a checkpoint."""
    import tempfile

    from project.models.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="age-classifier-export-") as folder:
        return export_onnx(trained, Path(folder) / "model.onnx").read_bytes()
